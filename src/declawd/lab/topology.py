"""The lab network namespace: `<instance>-lab` with every served host address on `lo`.

`ensure_lab_netns` converges the namespace to the config (idempotent: safe to call again
after the gateway created the `up0` link, which is when the default route via the gateway
appears); `remove_lab_netns` is its idempotent teardown. The lab link itself (`lab0`/`up0`)
belongs to `declawd.lab.upstream.ensure_lab_link`. Blocking code: the lab sets itself up
before its event loop runs.
"""

from __future__ import annotations

import ipaddress
import json

from declawd.addresses import LAB_DNS_ADDRESS, LAB_LINK_GATEWAY, LAB_LINK_PEER, LAB_LINK_PEER_IF
from declawd.config import Settings
from declawd.host import (
    add_netns_sync,
    delete_link_sync,
    delete_netns_sync,
    run_sync,
    undo_all_sync,
)
from declawd.lab.config import LabConfig


def _ip(*args: str, netns: str, stdin: str | None = None) -> str:
    return run_sync("ip", "-n", netns, *args, stdin=stdin).stdout


def ensure_lab_netns(settings: Settings, config: LabConfig) -> None:
    """Create/converge the lab netns: lo up, host + DNS addresses as /32 (/128) on lo,
    stale ones removed, and a default route via the gateway once `up0` is usable."""
    name = settings.lab_netns
    add_netns_sync(name)  # the gateway's ensure_lab_link may have made it already
    _ip("link", "set", "lo", "up", netns=name)
    wanted = {ipaddress.ip_address(LAB_DNS_ADDRESS), *config.bound_addresses()}
    present = set(_lo_addresses(name))
    batch = []
    for ip in sorted(wanted - present, key=str):
        plen = 32 if ip.version == 4 else 128
        extra = "" if ip.version == 4 else " nodad"
        batch.append(f"address add {ip}/{plen} dev lo{extra}")
    for ip in sorted(present - wanted, key=str):
        batch.append(f"address del {ip}/{32 if ip.version == 4 else 128} dev lo")
    if batch:
        _ip("-batch", "-", netns=name, stdin="\n".join(batch) + "\n")
    ensure_lab_route(settings)


def _lo_addresses(netns: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Host addresses (/32, /128) on lo, leaving 127.0.0.1/8 and ::1 alone."""
    data = json.loads(_ip("-j", "address", "show", "dev", "lo", netns=netns) or "[]")
    out = []
    for link in data:
        for a in link.get("addr_info", []):
            ip = ipaddress.ip_address(a["local"])
            if not ip.is_loopback and a.get("prefixlen") == ip.max_prefixlen:
                out.append(ip)
    return out


def ensure_lab_route(settings: Settings) -> bool:
    """Default route via the gateway when `up0` exists with the lab address; True if set.

    Not strictly needed while the gateway masquerades (replies go to 100.96.0.1 on the
    connected /30), but it keeps the lab usable by an unmasqueraded client too.
    """
    name = settings.lab_netns
    data = json.loads(_ip("-j", "address", "show", netns=name) or "[]")
    link = next((link for link in data if link.get("ifname") == LAB_LINK_PEER_IF), None)
    if link is None:
        return False
    if not any(a.get("local") == LAB_LINK_PEER for a in link.get("addr_info", [])):
        return False
    if "UP" not in link.get("flags", []):
        return False
    _ip("route", "replace", "default", "via", LAB_LINK_GATEWAY, "dev", LAB_LINK_PEER_IF, netns=name)
    return True


def remove_lab_netns(settings: Settings) -> None:
    """Idempotent teardown of the lab netns and its link to the gateway.

    `up0` is deleted explicitly first: a netns whose last reference is still being
    dropped is destroyed asynchronously by the kernel, which would leave `lab0` in the
    gateway netns for a moment after this returns.
    """
    name = settings.lab_netns
    undo_all_sync(
        f"lab netns {name}",
        lambda: delete_link_sync(LAB_LINK_PEER_IF, name),
        lambda: delete_netns_sync(name),
    )
