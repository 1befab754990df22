"""Policy → nftables compiler (pure): the text of every transaction the datapath runs.

One `inet declawd` table in the gateway netns; base chains dispatch through verdict maps
keyed by `iifname` to per-sandbox chains, so per-packet cost does not grow with the number
of sandboxes. Invariants: each script is applied as ONE `nft -f` transaction (all or
nothing); every refusal is logged (rate-limited) to nflog group 7 before it happens; the
base script never touches per-sandbox objects, so re-running it keeps sandboxes' rules.
Per-sandbox rules are built from `Term`s that render this text and that `nftrules` encodes
as the same netlink expressions, so both control-path backends install identical rules.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from declawd.addresses import DNS_PORT, HOST_LINK, LAB_LINK, PROXY_PORT, RESOLVER_PORT
from declawd.egress.policy import FLOOR_V4, EgressPolicy

TABLE = "inet declawd"
NFLOG_GROUP = 7
# Per rule, so one flooding sandbox exhausts only its own rules' log budget.
LOG_RATE_PER_S = 20
LOG_BURST = 40
LOG_LIMIT = f"limit rate {LOG_RATE_PER_S}/second burst {LOG_BURST} packets"
MAPS = ("pre_by_if", "nat_by_if", "fwd_by_if", "in_by_if")
L4_DNS: tuple[Literal["tcp", "udp"], ...] = ("udp", "tcp")  # DNS to the resolver, either way


def ifname(slot: int) -> str:
    return f"s{slot}"


def chain_names(slot: int) -> tuple[str, str, str, str]:
    return (f"pre_{slot}", f"nat_{slot}", f"fwd_{slot}", f"in_{slot}")


def set_names(slot: int) -> tuple[str, str, str]:
    return (f"r4_{slot}", f"a4_{slot}", f"d4_{slot}")


def floor_networks(
    extra: Iterable[ipaddress.IPv4Network] = (),
    exempt: Iterable[ipaddress.IPv4Network] = (),
) -> list[ipaddress.IPv4Network]:
    """The floor set's content: FLOOR_V4 minus operator exemptions, plus node ranges.

    Node ranges (pool, links) are added after the subtraction: an exemption never opens
    the gateway or other sandboxes.
    """
    floor: list[ipaddress.IPv4Network] = list(FLOOR_V4)
    for ex in exempt:
        nxt: list[ipaddress.IPv4Network] = []
        for net in floor:
            if not net.overlaps(ex):
                nxt.append(net)
            elif not ex.supernet_of(net):
                nxt.extend(net.address_exclude(ex))
        floor = nxt
    return list(ipaddress.collapse_addresses([*floor, *extra, LAB_LINK, HOST_LINK]))


def _elements(nets: Iterable[ipaddress.IPv4Network]) -> str:
    return ", ".join(str(n) for n in ipaddress.collapse_addresses(nets))


@dataclass(frozen=True)
class BaseLayout:
    upstream_if: str
    floor: Sequence[ipaddress.IPv4Network]


def base_script(layout: BaseLayout) -> str:
    """Create or refresh the base table. Keeps maps, their elements and sandbox objects."""
    t = TABLE
    lines = [
        f"add table {t}",
        f"add set {t} floor4 {{ type ipv4_addr; flags interval; }}",
        f"flush set {t} floor4",
        f"add element {t} floor4 {{ {_elements(layout.floor)} }}",
    ]
    lines += [f"add map {t} {m} {{ type ifname : verdict; }}" for m in MAPS]
    chains = {
        # raw priority: runs before conntrack, so spoofed packets never create state.
        "prerouting_raw": "type filter hook prerouting priority raw; policy accept;",
        "prerouting_nat": "type nat hook prerouting priority dstnat; policy accept;",
        "forward": "type filter hook forward priority filter; policy drop;",
        "input": "type filter hook input priority filter; policy drop;",
        "postrouting_nat": "type nat hook postrouting priority srcnat; policy accept;",
    }
    for name, spec in chains.items():
        lines += [f"add chain {t} {name} {{ {spec} }}", f"flush chain {t} {name}"]
    up = layout.upstream_if
    lines += [
        f"add rule {t} prerouting_raw iifname vmap @pre_by_if",
        # An s* interface without its map element (mid-create or stale) sends nothing.
        f'add rule {t} prerouting_raw iifname "s*" drop',
        f"add rule {t} prerouting_nat iifname vmap @nat_by_if",
        f"add rule {t} forward ct state established,related accept",
        f"add rule {t} forward ct state invalid drop",
        f"add rule {t} forward iifname vmap @fwd_by_if",
        f"add rule {t} input ct state established,related accept",
        f"add rule {t} input ct state invalid drop",
        f'add rule {t} input iif "lo" accept',
        f"add rule {t} input iifname vmap @in_by_if",
        f'add rule {t} postrouting_nat oifname "{up}" masquerade',
    ]
    return "\n".join(lines) + "\n"


# Rule terms: one source for the text below and for the netlink encoding (`nftrules`).
@dataclass(frozen=True)
class Meta:
    """`meta nfproto ipv6`, `meta l4proto tcp`."""

    key: Literal["nfproto", "l4proto"]
    value: Literal["ipv4", "ipv6", "tcp", "udp"]

    def __str__(self) -> str:
        return f"meta {self.key} {self.value}"


@dataclass(frozen=True)
class Saddr:
    """`ip saddr != 10.0.0.2` (or `==` when not negated)."""

    address: str
    negate: bool = False

    def __str__(self) -> str:
        return f"ip saddr {'!= ' if self.negate else ''}{ipaddress.IPv4Address(self.address)}"


@dataclass(frozen=True)
class DaddrIn:
    """`ip daddr @set`."""

    set_name: str

    def __str__(self) -> str:
        return f"ip daddr @{self.set_name}"


@dataclass(frozen=True)
class Dport:
    """`udp dport 443`, `tcp dport 15001`."""

    proto: Literal["tcp", "udp"]
    port: int

    def __str__(self) -> str:
        return f"{self.proto} dport {self.port}"


@dataclass(frozen=True)
class CtStatusDnat:
    def __str__(self) -> str:
        return "ct status dnat"


@dataclass(frozen=True)
class LimitLog:
    """Rate-limited log to the nflog group: `limit rate ... log prefix "..." group 7`."""

    prefix: str

    def __str__(self) -> str:
        return f'{LOG_LIMIT} log prefix "{self.prefix}" group {NFLOG_GROUP}'


@dataclass(frozen=True)
class Verdict:
    name: Literal["accept", "drop", "return"]

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Redirect:
    port: int

    def __str__(self) -> str:
        return f"redirect to :{self.port}"


@dataclass(frozen=True)
class Reject:
    """TCP reset (after `meta l4proto tcp`), else ICMP(x) administratively prohibited."""

    tcp_reset: bool = False

    def __str__(self) -> str:
        return "reject with tcp reset" if self.tcp_reset else "reject with icmpx admin-prohibited"


Term = Meta | Saddr | DaddrIn | Dport | CtStatusDnat | LimitLog | Verdict | Redirect | Reject
Rule = tuple[Term, ...]


def render(rule: Rule) -> str:
    return " ".join(str(t) for t in rule)


def _log(slot: int, verdict: str, reason: str, match: Rule = ()) -> Rule:
    return (*match, LimitLog(f"{verdict}:{slot}:{reason}"))


def _refuse(slot: int, reason: str, match: Rule = ()) -> list[Rule]:
    """Log, then refuse so the client sees it at once: TCP RST, else ICMP admin-prohibited."""
    return [
        _log(slot, "deny", reason, match),
        (*match, Meta("l4proto", "tcp"), Reject(tcp_reset=True)),
        (*match, Reject()),
    ]


def _accept(slot: int, reason: str, match: Rule = ()) -> list[Rule]:
    return [_log(slot, "allow", reason, match), (*match, Verdict("accept"))]


def sandbox_rule_terms(
    slot: int, address: str, policy: EgressPolicy, inspect: bool = False
) -> dict[str, list[Rule]]:
    """Rules of the four per-sandbox chains, in evaluation order, as terms.

    `inspect` (the sandbox's InspectionPolicy is active): all its non-floor TCP goes to the
    proxy, whatever the policy (the proxy then gives the L4 verdict too), and its UDP to
    port 443 is refused so QUIC clients fall back to TCP through the proxy. Without it the
    rules are exactly those of the egress policy alone.
    """
    r4, a4, d4 = set_names(slot)
    floor = (DaddrIn("floor4"),)
    pre: list[Rule] = [
        _log(slot, "deny", "ipv6", (Meta("nfproto", "ipv6"),)),
        (Meta("nfproto", "ipv6"), Verdict("drop")),
        _log(slot, "deny", "spoof", (Saddr(address, negate=True),)),
        (Saddr(address, negate=True), Verdict("drop")),
    ]
    # `tcp dport 53` and `udp dport 53` as two rules, not `meta l4proto { tcp, udp }`: each
    # anonymous set is a table set the kernel names by scanning all of the table's sets.
    nat: list[Rule] = [(Dport(p, DNS_PORT), Redirect(RESOLVER_PORT)) for p in L4_DNS]
    fwd = _refuse(slot, "floor", floor)
    domains = policy.domains_enforced and policy.allow_domains
    if inspect:
        # Floor destinations stay on the L4 path, refused below; CIDR-allowed ones do not.
        nat += [(*floor, Verdict("return")), (Meta("l4proto", "tcp"), Redirect(PROXY_PORT))]
        # Before any accept: a CIDR-allowed or open destination must not carry QUIC either.
        quic = (Dport("udp", 443),)
        fwd += [_log(slot, "deny", "udp_quic_inspect", quic), (*quic, Reject())]
    if policy.allow_cidrs_v4:
        fwd += _accept(slot, "cidr", (DaddrIn(a4),))
    if domains and not inspect:
        # Floor and CIDR-allowed destinations never reach the proxy (L4 path).
        nat.append((*floor, Verdict("return")))
        if policy.allow_cidrs_v4:
            nat.append((DaddrIn(a4), Verdict("return")))
        nat.append((DaddrIn(r4), Meta("l4proto", "tcp"), Redirect(PROXY_PORT)))
    if domains:
        # UDP (QUIC) to name-only destinations is refused so clients fall back to TCP.
        fwd += _refuse(slot, "udp_dns_only", (DaddrIn(r4),))
    if policy.deny_cidrs_v4:
        fwd += _refuse(slot, "deny_cidr", (DaddrIn(d4),))
    fwd += _accept(slot, "open") if policy.default_allows else _refuse(slot, "default")
    dnat = (CtStatusDnat(),)
    inp: list[Rule] = [
        *((*dnat, Dport(p, RESOLVER_PORT), Verdict("accept")) for p in L4_DNS),
        (*dnat, Dport("tcp", PROXY_PORT), Verdict("accept")),
        *_refuse(slot, "gateway"),
    ]
    pre_c, nat_c, fwd_c, in_c = chain_names(slot)
    return {pre_c: pre, nat_c: nat, fwd_c: fwd, in_c: inp}


def sandbox_rules(
    slot: int, address: str, policy: EgressPolicy, inspect: bool = False
) -> dict[str, list[str]]:
    """Rule bodies of the four per-sandbox chains, in evaluation order (nft text)."""
    terms = sandbox_rule_terms(slot, address, policy, inspect)
    return {chain: [render(r) for r in rules] for chain, rules in terms.items()}


def cidr_content(slot: int, policy: EgressPolicy) -> dict[str, list[ipaddress.IPv4Network]]:
    """The CIDR sets' elements (collapsed), only for sets that get any."""
    _, a4, d4 = set_names(slot)
    out = {}
    if policy.allow_cidrs_v4:
        out[a4] = list(ipaddress.collapse_addresses(policy.allow_cidrs_v4))
    if policy.deny_cidrs_v4:
        out[d4] = list(ipaddress.collapse_addresses(policy.deny_cidrs_v4))
    return out


def _set_content(slot: int, policy: EgressPolicy) -> list[str]:
    return [
        f"add element {TABLE} {name} {{ {_elements(nets)} }}"
        for name, nets in cidr_content(slot, policy).items()
    ]


def _declare(slot: int) -> list[str]:
    """Idempotent declarations of the sandbox's sets and chains (no-ops if present)."""
    r4, a4, d4 = set_names(slot)
    t = TABLE
    lines = [
        f"add set {t} {r4} {{ type ipv4_addr; flags timeout; }}",
        f"add set {t} {a4} {{ type ipv4_addr; flags interval; }}",
        f"add set {t} {d4} {{ type ipv4_addr; flags interval; }}",
    ]
    lines += [f"add chain {t} {c}" for c in chain_names(slot)]
    return lines


def _map_elements(slot: int) -> list[tuple[str, str]]:
    return list(zip(MAPS, chain_names(slot), strict=True))


def sandbox_add_script(slot: int, address: str, policy: EgressPolicy, inspect: bool = False) -> str:
    """Install one sandbox (replacing any stale leftovers of the same slot)."""
    t = TABLE
    r4, a4, d4 = set_names(slot)
    lines = _declare(slot)
    lines += [f"flush chain {t} {c}" for c in chain_names(slot)]
    lines += [f"flush set {t} {s}" for s in (r4, a4, d4)]
    lines += _set_content(slot, policy)
    for chain, rules in sandbox_rules(slot, address, policy, inspect).items():
        lines += [f"add rule {t} {chain} {r}" for r in rules]
    # Map elements last: the interface is dispatched only to complete chains.
    lines += [
        f'add element {t} {m} {{ "{ifname(slot)}" : goto {c} }}' for m, c in _map_elements(slot)
    ]
    return "\n".join(lines) + "\n"


def sandbox_update_script(
    slot: int, address: str, policy: EgressPolicy, inspect: bool = False
) -> str:
    """Replace a sandbox's rules and CIDR sets atomically; resolved addresses survive
    unless names no longer matter under the new policy."""
    t = TABLE
    r4, a4, d4 = set_names(slot)
    lines = _declare(slot)
    lines += [f"flush chain {t} {c}" for c in chain_names(slot)]
    lines += [f"flush set {t} {a4}", f"flush set {t} {d4}"]
    if not (policy.domains_enforced and policy.allow_domains):
        lines.append(f"flush set {t} {r4}")
    lines += _set_content(slot, policy)
    for chain, rules in sandbox_rules(slot, address, policy, inspect).items():
        lines += [f"add rule {t} {chain} {r}" for r in rules]
    return "\n".join(lines) + "\n"


def sandbox_remove_script(slot: int) -> str:
    """Remove everything of one slot; valid whether or not any of it exists.

    nft 1.0.6 has no `destroy`, so objects are first declared (no-op when present)
    and then deleted, in the same transaction.
    """
    t = TABLE
    lines = _declare(slot)
    lines += [
        f'add element {t} {m} {{ "{ifname(slot)}" : goto {c} }}' for m, c in _map_elements(slot)
    ]
    lines += [f'delete element {t} {m} {{ "{ifname(slot)}" }}' for m in MAPS]
    lines += [f"flush chain {t} {c}" for c in chain_names(slot)]
    lines += [f"delete chain {t} {c}" for c in chain_names(slot)]
    lines += [f"delete set {t} {s}" for s in set_names(slot)]
    return "\n".join(lines) + "\n"


def add_resolved_script(slot: int, addresses: Iterable[str], timeout_s: int) -> str:
    """What the gateway daemon runs (documented here for tests and the bench)."""
    elems = ", ".join(f"{a} timeout {int(timeout_s)}s" for a in addresses)
    return f"add element {TABLE} {set_names(slot)[0]} {{ {elems} }}\n"
