"""Node-side network resources: the gateway netns and each sandbox's netns, veth and rules.

`Gateway` owns `<instance>-gw` (forwarding, base nft table, upstream link); a
`SandboxNetwork` owns one sandbox's netns, its veth `s<slot>`↔`eth0` and its nft objects.
Invariants: every create has its idempotent teardown next to it and rolls back on failure;
per-sandbox nft changes are single transactions; re-running `Gateway.ensure` keeps every
sandbox's chains, sets and map elements (rules survive a server restart).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any

from declawd.config import Settings
from declawd.egress import conntrack
from declawd.egress import nft as nftc
from declawd.egress.netns import (
    NftError,
    add_netns,
    delete_netns,
    forget_netns,
    list_netns,
    netns_exists,
    netns_path,
    nft,
    run,
    sysctl,
    sysctls,
)
from declawd.egress.policy import EgressPolicy

LAB_GW = "100.96.0.1"
LAB_PEER = "100.96.0.2"
HOST_GW = "100.96.0.5"
HOST_PEER = "100.96.0.6"
HOST_NFT_TABLE = "ip declawd_host"


def _v4_ranges(ranges: list[str]) -> list[ipaddress.IPv4Network]:
    nets = [ipaddress.ip_network(r, strict=False) for r in ranges]
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network)]


def node_ranges(settings: Settings) -> list[ipaddress.IPv4Network]:
    """Ranges that are non-public because they are this node's (pool + gateway links)."""
    return [ipaddress.IPv4Network(settings.pool), nftc.LAB_LINK, nftc.HOST_LINK]


def slot_addresses(settings: Settings, slot: int) -> tuple[str, str]:
    """(gateway address, sandbox address) of slot `slot`'s /30 in the pool."""
    pool = ipaddress.IPv4Network(settings.pool)
    if slot < 1 or (slot + 1) * 4 > pool.num_addresses:
        raise ValueError(f"slot {slot} does not fit in pool {pool}")
    base = pool.network_address + 4 * slot
    return str(base + 1), str(base + 2)


async def _link_exists(netns: str, name: str) -> bool:
    rc, _, _ = await run("ip", "-n", netns, "link", "show", name, check=False)
    return rc == 0


async def ensure_lab_link(settings: Settings) -> None:
    """veth `lab0` (gw, 100.96.0.1/30) ↔ `up0` (lab, 100.96.0.2/30); idempotent.

    Creates either namespace if missing. The lab side gets a default route via the
    gateway end, so lab hosts answer masqueraded sandbox traffic.
    """
    gw, lab = settings.gateway_netns, settings.lab_netns
    await add_netns(gw)
    await add_netns(lab)
    if not await _link_exists(gw, "lab0"):
        # Created directly in both namespaces: no transient name in the host netns.
        await run("ip", "link", "add", "lab0", "netns", gw, "type", "veth",
                  "peer", "name", "up0", "netns", lab)  # fmt: skip
    await run("ip", "-n", gw, "addr", "replace", f"{LAB_GW}/30", "dev", "lab0")
    await run("ip", "-n", lab, "addr", "replace", f"{LAB_PEER}/30", "dev", "up0")
    for ns, dev in ((gw, "lab0"), (lab, "up0"), (lab, "lo")):
        await run("ip", "-n", ns, "link", "set", dev, "up")
    await run("ip", "-n", lab, "route", "replace", "default", "via", LAB_GW)


async def remove_lab_link(settings: Settings) -> None:
    """Idempotent; deleting one end removes the pair."""
    if netns_exists(settings.gateway_netns):
        await run("ip", "-n", settings.gateway_netns, "link", "del", "lab0", check=False)


@dataclass
class Gateway:
    settings: Settings
    created: list[str] = field(default_factory=list)

    @property
    def netns(self) -> str:
        return self.settings.gateway_netns

    @property
    def upstream_if(self) -> str:
        return "lab0" if self.settings.lab else "host0"

    @property
    def host_if(self) -> str:
        return f"{self.settings.instance}-up"

    async def ensure(self, settings: Settings | None = None) -> None:
        """Bring the gateway up, or complete it; never disturbs existing sandboxes' rules."""
        if settings is not None:
            self.settings = settings
        gw = self.netns
        await add_netns(gw)
        await run("ip", "-n", gw, "link", "set", "lo", "up")
        await sysctl(gw, "net.ipv6.conf.all.disable_ipv6", "1")
        await sysctl(gw, "net.ipv6.conf.default.disable_ipv6", "1")
        await sysctl(gw, "net.ipv4.ip_forward", "1")
        if self.settings.lab:
            await ensure_lab_link(self.settings)
            await run("ip", "-n", gw, "route", "replace", "default", "via", LAB_PEER)
        else:
            await self._ensure_host_link()
        layout = nftc.BaseLayout(
            upstream_if=self.upstream_if,
            floor=nftc.floor_networks(
                node_ranges(self.settings), _v4_ranges(self.settings.exempt_ranges)
            ),
        )
        await nft(gw, nftc.base_script(layout))

    async def _ensure_host_link(self) -> None:
        """Production upstream: veth `host0` into the host netns, NAT on its uplink.

        Forwarded traffic leaves the host through its default-route device; the host's
        own masquerade lives in its own small table so teardown removes exactly it.
        """
        gw, host_if = self.netns, self.host_if
        if not await _link_exists(gw, "host0"):
            await run("ip", "link", "add", "host0", "netns", gw, "type", "veth",
                      "peer", "name", host_if)  # fmt: skip
        await run("ip", "-n", gw, "addr", "replace", f"{HOST_GW}/30", "dev", "host0")
        await run("ip", "-n", gw, "link", "set", "host0", "up")
        await run("ip", "addr", "replace", f"{HOST_PEER}/30", "dev", host_if)
        await run("ip", "link", "set", host_if, "up")
        await run("ip", "-n", gw, "route", "replace", "default", "via", HOST_PEER)
        _, out, _ = await run("ip", "-j", "route", "show", "default")
        routes = json.loads(out or "[]")
        if not routes:
            raise RuntimeError("host mode: the host has no default route")
        dev = routes[0]["dev"]
        await run("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
        script = (
            f"add table {HOST_NFT_TABLE}\n"
            f"add chain {HOST_NFT_TABLE} post {{ type nat hook postrouting priority srcnat; }}\n"
            f"flush chain {HOST_NFT_TABLE} post\n"
            f'add rule {HOST_NFT_TABLE} post ip saddr {nftc.HOST_LINK} oifname "{dev}" masquerade\n'
        )
        await run("nft", "-f", "-", stdin=script)

    async def teardown(self) -> None:
        """Remove the gateway netns (and with it every s<slot> veth), links, host NAT."""
        await remove_lab_link(self.settings)
        if netns_exists(self.netns):
            await run("ip", "-n", self.netns, "link", "del", "host0", check=False)
        await run("ip", "link", "del", self.host_if, check=False)
        await run("nft", "delete", "table", *HOST_NFT_TABLE.split(), check=False)
        forget_netns(self.netns)
        await delete_netns(self.netns)


@dataclass
class SandboxNetwork:
    settings: Settings
    sandbox_id: str
    slot: int
    address: str
    gateway_address: str

    @property
    def netns(self) -> str:
        return self.settings.sandbox_netns(self.sandbox_id)

    @property
    def netns_path(self) -> str:
        return netns_path(self.netns)

    @property
    def ifname(self) -> str:
        return nftc.ifname(self.slot)

    @classmethod
    def attach(cls, settings: Settings, sandbox_id: str, slot: int) -> SandboxNetwork:
        """Handle on an existing sandbox network (after a server restart); no I/O."""
        gw_addr, addr = slot_addresses(settings, slot)
        return cls(settings, sandbox_id, slot, addr, gw_addr)

    @classmethod
    async def create(
        cls, settings: Settings, sandbox_id: str, slot: int, policy: EgressPolicy
    ) -> SandboxNetwork:
        self = cls.attach(settings, sandbox_id, slot)
        try:
            await self._create(policy)
        except BaseException:
            await self.destroy()
            raise
        return self

    async def _create(self, policy: EgressPolicy) -> None:
        gw, sbx, s = self.settings.gateway_netns, self.netns, self.ifname
        if not netns_exists(gw):
            raise RuntimeError(f"gateway netns {gw} is missing (Gateway.ensure first)")
        await add_netns(sbx)
        await run("ip", "-n", gw, "link", "del", s, check=False)  # stale slot leftovers
        await run("ip", "link", "add", s, "netns", gw, "type", "veth",
                  "peer", "name", "eth0", "netns", sbx)  # fmt: skip
        # Four independent steps, each one process (or in-process nft), run concurrently;
        # all of them finish before a failure propagates, so `destroy` never races one.
        # The alias ties the slot to its sandbox, so `sweep` can tell what to keep.
        gw_batch = (
            f"link set {s} alias {self.sandbox_id}\n"
            f"addr replace {self.gateway_address}/30 dev {s}\n"
            f"link set {s} up\n"
        )
        sbx_batch = (
            "link set lo up\n"
            f"addr replace {self.address}/30 dev eth0\n"
            "link set eth0 up\n"
            f"route replace default via {self.gateway_address}\n"
        )
        results = await asyncio.gather(
            sysctls(
                sbx, {f"net.ipv6.conf.{d}.disable_ipv6": "1" for d in ("all", "default", "eth0")}
            ),
            nft(gw, nftc.sandbox_add_script(self.slot, self.address, policy)),
            run("ip", "-n", gw, "-batch", "-", stdin=gw_batch),
            run("ip", "-n", sbx, "-batch", "-", stdin=sbx_batch),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def update_policy(self, policy: EgressPolicy) -> None:
        """Replace rules and CIDR sets in one transaction, then cut disallowed flows."""
        gw = self.settings.gateway_netns
        await nft(gw, nftc.sandbox_update_script(self.slot, self.address, policy))
        await conntrack.cut_disallowed(gw, self.address, policy, node_ranges(self.settings))

    async def destroy(self) -> None:
        """Idempotent; also for a half-created sandbox and from a fresh process."""
        gw = self.settings.gateway_netns
        if netns_exists(gw):
            await remove_slot_rules(gw, self.slot)
            await run("ip", "-n", gw, "link", "del", self.ifname, check=False)
            await run("conntrack", "-D", "-s", self.address, netns=gw, check=False)
        await delete_netns(self.netns)


async def remove_slot_rules(gw: str, slot: int) -> None:
    try:
        await nft(gw, nftc.sandbox_remove_script(slot))
    except NftError:
        if await _table_exists(gw):
            raise  # a real failure; without the table there is nothing to remove


async def _table_exists(gw: str) -> bool:
    try:
        await nft(gw, f"list table {nftc.TABLE}")
        return True
    except NftError:
        return False


async def _table_json(gw: str) -> list[dict[str, Any]]:
    if not netns_exists(gw) or not await _table_exists(gw):
        return []
    out = await nft(gw, f"list table {nftc.TABLE}", json_out=True)
    items: list[dict[str, Any]] = json.loads(out)["nftables"]
    return items


_SLOT_OBJ = re.compile(r"^(?:pre|nat|fwd|in|r4|a4|d4)_(\d+)$")


async def _gw_links(gw: str) -> dict[int, str]:
    """slot → alias (sandbox id) of the s<slot> veths in the gateway netns."""
    if not netns_exists(gw):
        return {}
    _, out, _ = await run("ip", "-j", "-n", gw, "link", "show", check=False)
    links: dict[int, str] = {}
    for link in json.loads(out or "[]"):
        m = re.fullmatch(r"s(\d+)", link.get("ifname", ""))
        if m:
            links[int(m.group(1))] = link.get("ifalias", "")
    return links


async def sweep(settings: Settings, keep: set[str]) -> list[str]:
    """Remove sandbox networks whose id is not in `keep` (startup reconciliation).

    Returns what was removed (netns names and `slot:<n>` entries), for the log.
    """
    gw = settings.gateway_netns
    removed: list[str] = []
    links = await _gw_links(gw)
    kept_slots = {slot for slot, sid in links.items() if sid in keep}
    slots = set(links)
    for item in await _table_json(gw):
        obj = item.get("chain") or item.get("set") or item.get("map") or {}
        m = _SLOT_OBJ.match(str(obj.get("name", "")))
        if m:
            slots.add(int(m.group(1)))
    for slot in sorted(slots - kept_slots):
        await remove_slot_rules(gw, slot)
        await run("ip", "-n", gw, "link", "del", f"s{slot}", check=False)
        removed.append(f"slot:{slot}")
    prefix = f"{settings.instance}-sbx-"
    for name in list_netns(prefix):
        if name[len(settings.instance) + 1 :] not in keep:
            await delete_netns(name)
            removed.append(name)
    return removed


async def count_resources(settings: Settings) -> dict[str, int]:
    """What exists now, for leak tests: netns, veths, per-sandbox chains/sets/elements."""
    gw = settings.gateway_netns
    counts = {"sandbox_netns": len(list_netns(f"{settings.instance}-sbx-"))}
    counts["gw_veths"] = len(await _gw_links(gw))
    chains = sets = set_elements = map_elements = rules = 0
    for item in await _table_json(gw):
        if "chain" in item and _SLOT_OBJ.match(item["chain"]["name"]):
            chains += 1
        elif "set" in item and _SLOT_OBJ.match(item["set"]["name"]):
            sets += 1
            set_elements += len(item["set"].get("elem", []))
        elif "map" in item:
            map_elements += len(item["map"].get("elem", []))
        elif "rule" in item and _SLOT_OBJ.match(item["rule"]["chain"]):
            rules += 1
    counts.update(
        chains=chains,
        sets=sets,
        set_elements=set_elements,
        map_elements=map_elements,
        sandbox_rules=rules,
    )
    return counts
