"""The node's own addresses, interface names and ports: the one place they are written.

    sandbox eth0 ──veth s<slot>── gateway netns ──lab0 100.96.0.1/30── up0 100.96.0.2 lab netns
      (a /30 of the pool per slot)   │                                   lab DNS 198.51.100.53:53
                                     └─host0 100.96.0.5/30── <instance>-up 100.96.0.6 host netns

The gateway netns has exactly one uplink: `lab0` in lab mode, `host0` otherwise (see
`declawd.upstream`). In it the resolver listens on RESOLVER_PORT and the L7 proxy on
PROXY_PORT; the datapath redirects sandbox DNS and name-only TCP there. Names a policy
refuses resolve into SINK_RANGE, which is non-public, so a connect to them fails closed.
Invariant: both links and the pool are node ranges, never reachable from a sandbox.
"""

from __future__ import annotations

import ipaddress

# The default sandbox pool; each slot is one /30 of it (gateway end .1, sandbox .2).
DEFAULT_POOL = "10.77.0.0/16"

# gateway ↔ lab link (lab mode only).
LAB_LINK = ipaddress.IPv4Network("100.96.0.0/30")
LAB_LINK_GATEWAY = str(LAB_LINK.network_address + 1)  # on `lab0`, in the gateway netns
LAB_LINK_PEER = str(LAB_LINK.network_address + 2)  # on `up0`, in the lab netns
LAB_LINK_GATEWAY_IF = "lab0"
LAB_LINK_PEER_IF = "up0"

# gateway ↔ host link (production): the host masquerades it out of its default route.
HOST_LINK = ipaddress.IPv4Network("100.96.0.4/30")
HOST_LINK_GATEWAY = str(HOST_LINK.network_address + 1)  # on `host0`, in the gateway netns
HOST_LINK_PEER = str(HOST_LINK.network_address + 2)  # on `<instance>-up`, in the host netns
HOST_LINK_GATEWAY_IF = "host0"

# The lab's authoritative DNS server (a documentation address: public to the policy).
LAB_DNS_ADDRESS = "198.51.100.53"
DNS_PORT = 53

# Gateway daemon listeners, in the gateway netns.
RESOLVER_PORT = 5353
PROXY_PORT = 15001

# Where refused names point (RFC 2544 benchmarking range; in the platform floor).
SINK_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
SINK_ADDRESS = str(SINK_RANGE.network_address + 1)


def host_link_peer_if(instance: str) -> str:
    """The host end of the host link; one per instance, so instances do not collide."""
    return f"{instance}-up"
