"""Cut a sandbox's established flows that a new policy no longer allows.

A policy replacement changes only what *new* packets see; flows already in conntrack
would keep going through `ct state established accept`. This module lists the sandbox's
entries in the gateway netns and deletes those whose original destination the new policy
refuses. Redirected flows (DNS, proxy) are left alone: the gateway daemon judges those.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from declawd.egress.policy import EgressPolicy, IPNetwork, is_non_public
from declawd.host import run

_KV = re.compile(r"(\w+)=(\S+)")


@dataclass(frozen=True)
class Flow:
    proto: str
    src: str
    dst: str
    sport: int | None
    dport: int | None
    reply_src: str

    @property
    def redirected(self) -> bool:
        """DNAT'd to the gateway itself (resolver/proxy): the reply comes from elsewhere."""
        return self.reply_src != self.dst


def parse_flows(text: str) -> list[Flow]:
    """Parse `conntrack -L` output lines (orig tuple first, reply tuple second)."""
    flows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0] not in ("tcp", "udp", "icmp", "sctp", "udplite"):
            continue
        srcs: list[str] = []
        dsts: list[str] = []
        sports: list[str] = []
        dports: list[str] = []
        for k, v in _KV.findall(line):
            {"src": srcs, "dst": dsts, "sport": sports, "dport": dports}.get(k, []).append(v)
        if len(srcs) < 2 or not dsts:
            continue
        flows.append(
            Flow(
                proto=parts[0],
                src=srcs[0],
                dst=dsts[0],
                sport=int(sports[0]) if sports else None,
                dport=int(dports[0]) if dports else None,
                reply_src=srcs[1],
            )
        )
    return flows


def flows_to_cut(
    flows: Sequence[Flow], policy: EgressPolicy, node_ranges: Sequence[IPNetwork] = ()
) -> list[Flow]:
    """Flows whose destination the policy no longer accepts at L4."""

    def allowed(ip: str) -> bool:
        return not is_non_public(ip, node_ranges) and policy.allows_address(ip) is True

    return [f for f in flows if not f.redirected and not allowed(f.dst)]


async def cut_disallowed(
    gw_netns: str, address: str, policy: EgressPolicy, node_ranges: Sequence[IPNetwork] = ()
) -> list[Flow]:
    """Delete the conntrack entries from `address` that `policy` refuses; returns them."""
    listed = await run("conntrack", "-L", "-s", address, netns=gw_netns, check=False)
    cut = flows_to_cut(parse_flows(listed.stdout), policy, node_ranges)
    for f in cut:
        argv = ["conntrack", "-D", "-p", f.proto, "-s", f.src, "-d", f.dst]
        if f.sport is not None and f.dport is not None:
            argv += ["--sport", str(f.sport), "--dport", str(f.dport)]
        # Racing with the flow's own end is fine: a missing entry is the goal anyway.
        await run(*argv, netns=gw_netns, check=False)
    return cut
