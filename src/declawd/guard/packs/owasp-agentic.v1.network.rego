# owasp-agentic@v1: ASI03 (identity and privilege abuse) through the metadata service.
package declaw.platform.network

import data.declaw.packs.lib.network as lib

deny contains "owasp-agentic@v1 ASI03 net.cloud_metadata: connection to a cloud instance-metadata service" if lib.cloud_metadata
