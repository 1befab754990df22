# prompt-injection@v3: what the classifier found decides, past its own threshold and action.
package declaw.platform.content

import data.declaw.packs.lib.content as lib

deny contains "prompt-injection@v3 PI-2 content.injection_exfiltration: injected instructions to send data out or call tools" if lib.injection_exfiltration

deny contains "prompt-injection@v3 PI-3 content.hidden_instructions: invisible characters carrying suspected instructions" if lib.hidden_instructions
