# owasp-llm-top10@v1: LLM02 (sensitive information disclosure) at the connection.
package declaw.platform.network

import data.declaw.packs.lib.network as lib

deny contains "owasp-llm-top10@v1 LLM02 net.exfil_endpoint: connection to a public drop box or request catcher" if lib.exfil_endpoint
