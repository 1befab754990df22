"""The lab as the gateway's upstream: the lab link, the lab DNS, and trust in the lab CA.

`LabUpstream` is what `declawd.upstream.choose_upstream` returns in lab mode. It links the
gateway netns to the lab netns (veth `lab0`↔`up0`, see `declawd.addresses`), routes the
gateway out through it, and names the lab CA bundle that the gateway and every sandbox
trust (each sandbox's own bundle adds its CA: node/trust.py).
Invariant: nothing on the lab link leads anywhere but the lab; `teardown` removes the link
(both ends) and nothing else.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from declawd.addresses import (
    LAB_DNS_ADDRESS,
    LAB_LINK,
    LAB_LINK_GATEWAY,
    LAB_LINK_GATEWAY_IF,
    LAB_LINK_PEER,
    LAB_LINK_PEER_IF,
)
from declawd.config import Settings
from declawd.host import add_netns, delete_link, link_exists, netns_exists, run
from declawd.lab.ca import ca_bundle_path, ensure_ca

_PREFIX = LAB_LINK.prefixlen


async def ensure_lab_link(settings: Settings) -> None:
    """veth `lab0` (gateway, 100.96.0.1/30) ↔ `up0` (lab, 100.96.0.2/30); idempotent.

    Creates either namespace if missing. The lab side gets a default route via the gateway
    end, so lab hosts answer masqueraded sandbox traffic.
    """
    gw, lab = settings.gateway_netns, settings.lab_netns
    await add_netns(gw)
    await add_netns(lab)
    if not link_exists(LAB_LINK_GATEWAY_IF, gw):
        # Created directly in both namespaces: no transient name in the host netns.
        await run("ip", "link", "add", LAB_LINK_GATEWAY_IF, "netns", gw, "type", "veth",
                  "peer", "name", LAB_LINK_PEER_IF, "netns", lab)  # fmt: skip
    gw_batch = (
        f"addr replace {LAB_LINK_GATEWAY}/{_PREFIX} dev {LAB_LINK_GATEWAY_IF}\n"
        f"link set {LAB_LINK_GATEWAY_IF} up\n"
    )
    lab_batch = (
        f"addr replace {LAB_LINK_PEER}/{_PREFIX} dev {LAB_LINK_PEER_IF}\n"
        f"link set {LAB_LINK_PEER_IF} up\n"
        "link set lo up\n"
        f"route replace default via {LAB_LINK_GATEWAY}\n"
    )
    await run("ip", "-n", gw, "-batch", "-", stdin=gw_batch)
    await run("ip", "-n", lab, "-batch", "-", stdin=lab_batch)


async def remove_lab_link(settings: Settings) -> None:
    """Idempotent; deleting one end removes the pair."""
    if netns_exists(settings.gateway_netns):
        await delete_link(LAB_LINK_GATEWAY_IF, settings.gateway_netns)


class LabUpstream:
    """Lab mode: the gateway's way out is the lab netns, whose DNS and CA stand in for the
    internet's."""

    name = "lab"
    uplink = LAB_LINK_GATEWAY_IF

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def ensure(self) -> None:
        await asyncio.to_thread(ensure_ca, self.settings)
        await ensure_lab_link(self.settings)
        gw = self.settings.gateway_netns
        await run("ip", "-n", gw, "route", "replace", "default", "via", LAB_LINK_PEER)

    async def teardown(self) -> None:
        await remove_lab_link(self.settings)

    def dns_server(self) -> str:
        return LAB_DNS_ADDRESS

    def ca_bundle(self) -> Path:
        """System CAs + lab CA (written by `ensure`): the lab's hosts are signed by the lab CA."""
        return ca_bundle_path(self.settings)
