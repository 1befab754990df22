# baseline-hardening@v1: the cloud metadata services hand out the host's credentials.
package declaw.platform.network

import data.declaw.packs.lib.network as lib

deny contains "baseline-hardening@v1 BH-5 net.cloud_metadata: connection to a cloud instance-metadata service" if lib.cloud_metadata
