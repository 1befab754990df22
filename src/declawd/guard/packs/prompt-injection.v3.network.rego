# prompt-injection@v3: where injected instructions usually send what they steal.
package declaw.platform.network

import data.declaw.packs.lib.network as lib

deny contains "prompt-injection@v3 PI-5 net.exfil_endpoint: connection to a public drop box or request catcher" if lib.exfil_endpoint
