# owasp-llm-top10@v1: LLM01 (prompt injection) that asks for data or tool calls is refused
# even when injection_defense only logs.
package declaw.platform.content

import data.declaw.packs.lib.content as lib

deny contains "owasp-llm-top10@v1 LLM01 content.injection_exfiltration: injected instructions to send data out or call tools" if lib.injection_exfiltration
