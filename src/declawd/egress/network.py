"""Node-side network resources: the gateway netns, the host upstream, each sandbox's network.

`Gateway` owns `<instance>-gw` (forwarding, the base nft table) and asks its `Upstream` for
the way out; `HostUpstream` is the production one (veth `host0` into the host, NAT there).
A `SandboxNetwork` owns one sandbox's netns, its veth `s<slot>`↔`eth0` and its nft objects,
made in-process (rtnetlink, /proc/sys, one nft transaction), without a process per create.
Invariants: every create has its idempotent teardown next to it and rolls back on failure;
per-sandbox nft changes are single transactions; re-running `Gateway.ensure` keeps every
sandbox's chains, sets and map elements (rules survive a server restart).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from declawd.addresses import (
    HOST_LINK,
    HOST_LINK_GATEWAY,
    HOST_LINK_GATEWAY_IF,
    HOST_LINK_PEER,
    LAB_LINK,
    host_link_peer_if,
)
from declawd.config import Settings
from declawd.egress import conntrack, nftctl
from declawd.egress import nft as nftc
from declawd.egress.nftctl import NftError, forget_netns, nft
from declawd.egress.nftmigrate import old_layout_slots
from declawd.egress.policy import EgressPolicy
from declawd.errors import Unavailable
from declawd.host import (
    NetnsThread,
    add_netns,
    call_in_netns,
    delete_link,
    delete_netns,
    link_exists,
    list_netns,
    netns_exists,
    netns_path,
    run,
    sysctls,
    undo_all,
    write_sysctls,
)
from declawd.host.rtnl import Rtnl
from declawd.upstream import Upstream

log = logging.getLogger(__name__)

HOST_NFT_TABLE = "ip declawd_host"
# A policy that accepts no address at L4: "cut every flow that is not redirected".
_CUT_ALL = EgressPolicy.parse([], ["0.0.0.0/0"])
RESOLV_CONF = Path("/etc/resolv.conf")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def _v4_ranges(ranges: list[str]) -> list[ipaddress.IPv4Network]:
    nets = [ipaddress.ip_network(r, strict=False) for r in ranges]
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network)]


def node_ranges(settings: Settings) -> list[ipaddress.IPv4Network]:
    """Ranges that are non-public because they are this node's (pool + gateway links)."""
    return [ipaddress.IPv4Network(settings.pool), LAB_LINK, HOST_LINK]


def slot_addresses(settings: Settings, slot: int) -> tuple[str, str]:
    """(gateway address, sandbox address) of slot `slot`'s /30 in the pool."""
    pool = ipaddress.IPv4Network(settings.pool)
    if slot < 1 or (slot + 1) * 4 > pool.num_addresses:
        raise ValueError(f"slot {slot} does not fit in pool {pool}")
    base = pool.network_address + 4 * slot
    return str(base + 1), str(base + 2)


@dataclass
class Gateway:
    """The gateway netns; `upstream` makes (and removes) its one uplink."""

    settings: Settings
    upstream: Upstream

    @property
    def netns(self) -> str:
        return self.settings.gateway_netns

    async def ensure(self) -> None:
        """Bring the gateway up, or complete it; never disturbs existing sandboxes' rules."""
        gw = self.netns
        await add_netns(gw)
        await run("ip", "-n", gw, "link", "set", "lo", "up")
        await sysctls(
            gw,
            {
                "net.ipv6.conf.all.disable_ipv6": "1",
                "net.ipv6.conf.default.disable_ipv6": "1",
                "net.ipv4.ip_forward": "1",
            },
        )
        await self.upstream.ensure()
        layout = nftc.BaseLayout(
            upstream_if=self.upstream.uplink,
            floor=nftc.floor_networks(
                node_ranges(self.settings), _v4_ranges(self.settings.exempt_ranges)
            ),
        )
        items = await _table_json(gw)
        if any(item.get("map", {}).get("name") in nftc.OLD_LAYOUT_MAPS for item in items):
            # A table of the previous layout (a node upgraded while sandboxes run): rebuilt
            # with their elements in one transaction, so their rules never lapse.
            slots = old_layout_slots(items)
            log.info("nft: migrating %s to the flat layout (%d sandboxes)", nftc.TABLE, len(slots))
            await nft(gw, nftc.migrate_script(layout, slots))
            return
        await nft(gw, nftc.base_script(layout))

    async def teardown(self) -> None:
        """Remove the upstream's link, then the gateway netns (and with it every s<slot>)."""

        async def drop_netns() -> None:
            forget_netns(self.netns)
            await delete_netns(self.netns)

        await undo_all(f"gateway {self.netns}", self.upstream.teardown, drop_netns)


class HostUpstream:
    """Production: veth `host0` (gateway) ↔ `<instance>-up` (host), masqueraded by the host
    out of its default-route device; DNS goes to the host's own resolver.

    The host's masquerade lives in its own small table, so teardown removes exactly it.
    """

    name = "host"
    uplink = HOST_LINK_GATEWAY_IF

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def host_if(self) -> str:
        return host_link_peer_if(self.settings.instance)

    async def ensure(self) -> None:
        gw, host_if = self.settings.gateway_netns, self.host_if
        if not link_exists(self.uplink, gw):
            await run("ip", "link", "add", self.uplink, "netns", gw, "type", "veth",
                      "peer", "name", host_if)  # fmt: skip
        plen = HOST_LINK.prefixlen
        await run(
            "ip", "-n", gw, "addr", "replace", f"{HOST_LINK_GATEWAY}/{plen}", "dev", self.uplink
        )
        await run("ip", "-n", gw, "link", "set", self.uplink, "up")
        await run("ip", "addr", "replace", f"{HOST_LINK_PEER}/{plen}", "dev", host_if)
        await run("ip", "link", "set", host_if, "up")
        await run("ip", "-n", gw, "route", "replace", "default", "via", HOST_LINK_PEER)
        routes = json.loads((await run("ip", "-j", "route", "show", "default")).stdout or "[]")
        if not routes:
            raise Unavailable("host upstream: the host has no default route")
        dev = routes[0]["dev"]
        IP_FORWARD.write_text("1\n")  # the host's own forwarding, for the host link
        script = (
            f"add table {HOST_NFT_TABLE}\n"
            f"add chain {HOST_NFT_TABLE} post {{ type nat hook postrouting priority srcnat; }}\n"
            f"flush chain {HOST_NFT_TABLE} post\n"
            f'add rule {HOST_NFT_TABLE} post ip saddr {HOST_LINK} oifname "{dev}" masquerade\n'
        )
        await run("nft", "-f", "-", stdin=script)

    async def teardown(self) -> None:
        gw = self.settings.gateway_netns

        async def drop_gateway_end() -> None:
            if netns_exists(gw):
                await delete_link(self.uplink, gw)

        await undo_all(
            "host upstream",
            drop_gateway_end,
            lambda: delete_link(self.host_if),
            _drop_host_nat,
        )

    def dns_server(self) -> str:
        """The host's first non-loopback nameserver (a loopback one is unreachable from the
        gateway netns)."""
        try:
            lines = RESOLV_CONF.read_text().splitlines()
        except OSError as exc:
            raise Unavailable(f"no upstream DNS server: {RESOLV_CONF}: {exc}") from exc
        for line in lines:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver" and not parts[1].startswith("127."):
                return parts[1]
        raise Unavailable("no upstream DNS server: set DECLAWD_UPSTREAM_DNS (or use --lab)")

    def ca_bundle(self) -> Path | None:
        """The host's own trust store verifies the internet's servers."""
        return None


async def _drop_host_nat() -> None:
    family, name = HOST_NFT_TABLE.split()
    if (await run("nft", "list", "table", family, name, check=False)).ok:
        await run("nft", "delete", "table", family, name)


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
        cls,
        settings: Settings,
        sandbox_id: str,
        slot: int,
        policy: EgressPolicy,
        *,
        inspect: bool = False,
        on_netns: Callable[[], None] | None = None,
    ) -> SandboxNetwork:
        """`inspect`: the sandbox's content inspection is active (nft.sandbox_rules).
        `on_netns`: called once the netns exists, before its link and rules are made (a
        container may join it from then on)."""
        self = cls.attach(settings, sandbox_id, slot)
        try:
            await self._create(policy, inspect, on_netns)
        except BaseException:
            await self.destroy()
            raise
        return self

    async def _create(
        self, policy: EgressPolicy, inspect: bool, on_netns: Callable[[], None] | None
    ) -> None:
        gw = self.settings.gateway_netns
        if not netns_exists(gw):
            raise Unavailable(f"gateway netns {gw} is missing (Gateway.ensure first)")
        # The sandbox's thread makes its netns and stays in it; the nft transaction runs
        # alongside the links. All of it finishes before a failure propagates, so `destroy`
        # never races a step.
        sbx = await asyncio.to_thread(NetnsThread, self.netns, create=True)
        if on_netns is not None:
            on_netns()
        try:
            results = await asyncio.gather(
                nftctl.sandbox_add(gw, self.slot, self.address, policy, inspect),
                self._links(sbx),
                return_exceptions=True,
            )
        finally:
            sbx.close()
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _links(self, sbx: NetnsThread) -> None:
        """veth s<slot> (gateway) ↔ eth0 (sandbox), addresses, routes, IPv6 off: rtnetlink
        requests from a thread in each netns, no process."""
        gw = await asyncio.to_thread(NetnsThread, self.settings.gateway_netns)
        try:
            await asyncio.gather(gw.run(self._gateway_end), sbx.run(_sandbox_base))
            await sbx.run(self._sandbox_end)
        finally:
            gw.close()

    def _gateway_end(self) -> None:
        s = self.ifname
        fd = os.open(self.netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with Rtnl() as rtnl:
                rtnl.delete(s)  # leftovers of a slot's previous holder
                rtnl.add_veth(s, "eth0", fd)
                idx = rtnl.require(s)
                # The alias ties the slot to its sandbox, so `sweep` can tell what to keep.
                rtnl.set_link(idx, up=True, alias=self.sandbox_id)
                rtnl.replace_address(idx, self.gateway_address, 30)
        finally:
            os.close(fd)

    def _sandbox_end(self) -> None:
        write_sysctls({"net.ipv6.conf.eth0.disable_ipv6": "1"})
        with Rtnl() as rtnl:
            idx = rtnl.require("eth0")
            rtnl.replace_address(idx, self.address, 30)
            rtnl.set_link(idx, up=True)
            rtnl.replace_default_route(self.gateway_address)

    async def update_policy(
        self, policy: EgressPolicy, *, inspect: bool = False, cut: bool = True
    ) -> None:
        """Replace rules and CIDR sets in one transaction, then cut disallowed flows.

        Under inspection every flow that is not already the proxy's is cut: an established
        L4 flow would otherwise keep bypassing it (TCP) or carry QUIC (UDP 443); what the
        new rules still allow is simply judged again on its next packet. `cut=False` only
        where no flow can exist (a warm pool's sandbox, which had no egress at all, getting
        its first policy, without inspection): it saves listing conntrack (~10 ms).
        """
        gw = self.settings.gateway_netns
        await nftctl.sandbox_update(gw, self.slot, self.address, policy, inspect)
        if not cut and not inspect:
            return
        judge = _CUT_ALL if inspect else policy
        await conntrack.cut_disallowed(gw, self.address, judge, node_ranges(self.settings))

    async def destroy(self) -> None:
        """Idempotent; also for a half-created sandbox and from a fresh process. Every step
        runs; what could not be undone is raised afterwards (the netns goes last)."""
        gw = self.settings.gateway_netns

        async def in_gateway() -> None:
            if not netns_exists(gw):
                return
            await undo_all(
                f"sandbox {self.sandbox_id} in {gw}",
                lambda: remove_slot_rules(gw, self.slot),
                lambda: delete_link(self.ifname, gw),
                # Exits 1 when no flow matched, the usual case: nothing to report either way.
                lambda: run("conntrack", "-D", "-s", self.address, netns=gw, check=False),
            )

        await undo_all(
            f"sandbox network {self.sandbox_id}", in_gateway, lambda: delete_netns(self.netns)
        )


async def remove_slot_rules(gw: str, slot: int) -> None:
    try:
        await nftctl.sandbox_remove(gw, slot)
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


# Sets whose elements are one sandbox's, keyed by its interface name first.
_SANDBOX_SETS = frozenset(
    {*nftc.FLAG_SETS, nftc.SRC4, nftc.REC, nftc.NREC}
    | {nftc.allow_set(n) for n in nftc.PREFIX_LENGTHS}
    | {nftc.deny_set(n) for n in nftc.PREFIX_LENGTHS}
)


def _element_ifname(elem: Any) -> str:
    """The interface name an element of a sandbox set is keyed by (JSON listing)."""
    key = elem[0] if isinstance(elem, list) else elem  # a map element is [key, data]
    if isinstance(key, dict) and "concat" in key:
        key = key["concat"][0]
    return str(key)


def _slot_elements(items: list[dict[str, Any]]) -> dict[int, int]:
    """slot → how many elements of sandbox sets it holds."""
    out: dict[int, int] = {}
    for item in items:
        body = item.get("set") or item.get("map") or {}
        if body.get("name") not in _SANDBOX_SETS:
            continue
        for elem in body.get("elem", []):
            m = re.fullmatch(r"s(\d+)", _element_ifname(elem))
            if m:
                out[int(m.group(1))] = out.get(int(m.group(1)), 0) + 1
    return out


def _sandbox_base() -> None:
    """A fresh sandbox netns, before its eth0 arrives: IPv6 off, loopback up."""
    write_sysctls({f"net.ipv6.conf.{d}.disable_ipv6": "1" for d in ("all", "default")})
    with Rtnl() as rtnl:
        rtnl.set_link(rtnl.require("lo"), up=True)


def _aliases() -> dict[str, str]:
    with Rtnl() as rtnl:
        return rtnl.aliases()


async def _gw_links(gw: str) -> dict[int, str]:
    """slot → alias (sandbox id) of the s<slot> veths in the gateway netns."""
    if not netns_exists(gw):
        return {}
    listed = await asyncio.to_thread(call_in_netns, gw, _aliases)
    links: dict[int, str] = {}
    for name, alias in listed.items():
        m = re.fullmatch(r"s(\d+)", name)
        if m:
            links[int(m.group(1))] = alias
    return links


async def sweep(settings: Settings, keep: set[str]) -> list[str]:
    """Remove sandbox networks whose id is not in `keep` (startup reconciliation).

    Returns what was removed (netns names and `slot:<n>` entries), for the log; tries every
    removal and raises what failed afterwards.
    """
    gw = settings.gateway_netns
    removed: list[str] = []
    links = await _gw_links(gw)
    kept_slots = {slot for slot, sid in links.items() if sid in keep}
    slots = set(links)
    slots |= set(_slot_elements(await _table_json(gw)))

    async def drop_slot(slot: int) -> None:
        await undo_all(
            f"slot {slot}",
            lambda: remove_slot_rules(gw, slot),
            lambda: delete_link(nftc.ifname(slot), gw),
        )
        removed.append(f"slot:{slot}")

    async def drop_netns(name: str) -> None:
        await delete_netns(name)
        removed.append(name)

    stale = [
        name
        for name in list_netns(f"{settings.instance}-sbx-")
        if name[len(settings.instance) + 1 :] not in keep
    ]
    await undo_all(
        "stale sandbox networks",
        *[functools.partial(drop_slot, slot) for slot in sorted(slots - kept_slots)],
        *[functools.partial(drop_netns, name) for name in stale],
    )
    return removed


async def count_resources(settings: Settings) -> dict[str, int]:
    """What exists now, for leak tests: netns, veths, sandboxes' set elements, the ruleset.

    Resolved addresses (keyed by an ifindex never reused soon) and log meters' state expire
    on their own and are not counted.
    """
    gw = settings.gateway_netns
    counts = {"sandbox_netns": len(list_netns(f"{settings.instance}-sbx-"))}
    counts["gw_veths"] = len(await _gw_links(gw))
    items = await _table_json(gw)
    per_slot = _slot_elements(items)
    slots: dict[str, Any] = next(
        (i["set"] for i in items if i.get("set", {}).get("name") == nftc.SLOTS), {}
    )
    counts.update(
        slots=len(slots.get("elem", [])),
        set_elements=sum(per_slot.values()),
        chains=sum(1 for i in items if "chain" in i),
        rules=sum(1 for i in items if "rule" in i),
    )
    return counts
