# Destination predicates shared by the packs. Input (declaw.platform.network):
# input.action.destination, the host name the sandbox resolved (or the IP) with ":port".
package declaw.packs.lib.network

default destination := ""

destination := lower(input.action.destination) if is_string(input.action.destination)

# Cloud instance-metadata services (AWS/GCP/Azure/Alibaba, IPv4 and AWS's IPv6).
cloud_metadata if regex.match(
	`^(169\.254\.169\.254|169\.254\.170\.2|100\.100\.100\.200|metadata\.google\.internal|metadata\.azure\.com|\[?fd00:ec2::254\]?)(:[0-9]+)?$`,
	destination,
)

# Public drop boxes and request catchers: where exfiltrated data is usually sent.
exfil_endpoint if regex.match(
	`^([a-z0-9-]+\.)*(pastebin\.com|paste\.ee|hastebin\.com|transfer\.sh|0x0\.st|file\.io|webhook\.site|requestbin\.net|pipedream\.net|ngrok\.io|ngrok-free\.app|interact\.sh|oast\.fun|oast\.pro|burpcollaborator\.net)(:[0-9]+)?$`,
	destination,
)
