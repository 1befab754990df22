"""Where the gateway's traffic goes: the host's uplink in production, the lab in tests.

An `Upstream` is chosen once, at start (`choose_upstream`), and handed to the gateway and
the node; nothing on a production path asks whether it runs in lab mode. It owns the
gateway's way out (one interface, its route), the resolver's upstream DNS server, and the
CAs its servers are signed by (what the gateway and every sandbox trust).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from declawd.config import Settings


class Upstream(Protocol):
    """The gateway's way out. `ensure` and `teardown` are idempotent."""

    name: str  # "host" or "lab", for logs and `declawd` output
    uplink: str  # the interface in the gateway netns that traffic leaves by

    async def ensure(self) -> None:
        """Make the uplink (and whatever it needs, e.g. the lab CA) exist; the gateway
        netns already exists when this is called."""
        ...

    async def teardown(self) -> None:
        """Remove what `ensure` made outside the gateway netns."""
        ...

    def dns_server(self) -> str:
        """`ip` or `ip:port` of the DNS server the resolver forwards allowed names to."""
        ...

    def ca_bundle(self) -> Path | None:
        """The CAs that sign this upstream's servers, as one PEM file (the lab's: system
        CAs + lab CA), or None for the system's own trust store. The gateway verifies
        intercepted upstreams against it, and every sandbox's trust bundle starts with it."""
        ...


def choose_upstream(settings: Settings) -> Upstream:
    """The one place that reads `settings.lab`."""
    if settings.lab:
        from declawd.lab.upstream import LabUpstream

        return LabUpstream(settings)
    from declawd.egress.network import HostUpstream

    return HostUpstream(settings)
