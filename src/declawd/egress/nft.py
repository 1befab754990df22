"""Policy → nftables compiler (pure): the text of every transaction the datapath runs.

One `inet declawd` table in the gateway netns with a fixed ruleset: every rule is created
with the base table, and a sandbox is nothing but elements of shared sets keyed by its veth
(`iifname`, or `iif` for resolved addresses). Adding, replacing or removing a sandbox is
therefore a transaction of set elements alone: no rule, no jump or goto in an element, so the
kernel neither re-validates the table nor searches ~1500 per-sandbox sets by name, and the
cost does not grow with the node. CIDRs live in one plain hash set per prefix length
(`allow4_<L>` / `deny4_<L>`, keyed `ifname . network`), matched by `ip daddr & mask_L`; a
concatenated interval set would be simpler but deletes cost time in proportion to its size.
Flag sets (`has_allow`, `has_deny`) skip those lookups for sandboxes without CIDRs.

Invariants: each script is applied as ONE `nft -f` transaction (all or nothing); every
refusal is logged (rate-limited per interface) to nflog group 7 before it happens, with the
prefix `<verdict>:<reason>` (the audit reader takes the sandbox from the packet's input
interface); the base script never touches sandbox elements, so re-running it keeps them.
What a sandbox's keyed elements are is recorded in the table itself, in the same transaction
(`rec`, `nrec`), so replace and remove (and the startup sweep) delete exactly them without
knowing the policy they came from.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from declawd.addresses import DNS_PORT, HOST_LINK, LAB_LINK, PROXY_PORT, RESOLVER_PORT
from declawd.egress.policy import FLOOR_V4, EgressPolicy

TABLE = "inet declawd"
NFLOG_GROUP = 7
# Each log point has its own meter keyed by the interface: one flooding sandbox exhausts
# only its own budget at that point, as with the per-sandbox rules of the old layout.
LOG_RATE_PER_S = 20
LOG_BURST = 40
LOG_LIMIT = f"limit rate {LOG_RATE_PER_S}/second burst {LOG_BURST} packets"
METER_TIMEOUT_S = 60  # an idle interface's meter state expires (it would be full again anyway)
PREFIX_LENGTHS = range(33)

SLOTS = "slots"  # ifname: registered sandboxes (anything else named s* is dropped)
SRC4 = "src4"  # ifname . ipv4_addr: the sandbox's own address (anti-spoof)
OPEN, DOMAINS, INSPECT, HAS_ALLOW, HAS_DENY = "open", "domains", "inspect", "has_allow", "has_deny"
FLAG_SETS = (SLOTS, OPEN, DOMAINS, INSPECT, HAS_ALLOW, HAS_DENY)
RESOLVED4 = "resolved4"  # iface_index . ipv4_addr, timeout: admitted by the resolver
REC = "rec"  # ifname . mark (index) : ipv4_addr . mark (set code): the keyed elements
NREC = "nrec"  # ifname : mark: how many `rec` entries the sandbox has
# Maps of the previous layout (per-sandbox chains): their presence means "rebuild".
OLD_LAYOUT_MAPS = ("pre_by_if", "nat_by_if", "fwd_by_if", "in_by_if")
L4_DNS = ("udp", "tcp")  # DNS to the resolver, either way
# Log points (reason → verdict), each with its meter set `log_<reason>`.
LOG_POINTS = {
    "ipv6": "deny",
    "spoof": "deny",
    "floor": "deny",
    "udp_quic_inspect": "deny",
    "cidr": "allow",
    "udp_dns_only": "deny",
    "deny_cidr": "deny",
    "open": "allow",
    "default": "deny",
    "gateway": "deny",
}


def ifname(slot: int) -> str:
    return f"s{slot}"


def allow_set(length: int) -> str:
    return f"allow4_{length}"


def deny_set(length: int) -> str:
    return f"deny4_{length}"


# A `rec` entry names its set by a code: 0 = src4, 1 + L = allow4_L, 34 + L = deny4_L.
KEYED_SETS = (SRC4, *(allow_set(n) for n in PREFIX_LENGTHS), *(deny_set(n) for n in PREFIX_LENGTHS))


def mask(length: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Network(f"0.0.0.0/{length}").netmask


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


def _log(reason: str) -> str:
    """Log to nflog, rate-limited per interface at this log point."""
    verdict = LOG_POINTS[reason]
    return (
        f"update @log_{reason} {{ iifname {LOG_LIMIT} }} "
        f'log prefix "{verdict}:{reason}" group {NFLOG_GROUP}'
    )


def _refuse(reason: str, match: str = "") -> list[str]:
    """Log, then refuse so the client sees it at once: TCP RST, else ICMP admin-prohibited."""
    m = f"{match} " if match else ""
    return [
        f"{m}{_log(reason)}",
        f"{m}meta l4proto tcp reject with tcp reset",
        f"{m}reject with icmpx admin-prohibited",
    ]


def _cidr_lookups(set_of: str, then: str) -> list[str]:
    """One masked lookup per prefix length, longest first: `daddr & mask_L == net` is
    `daddr ∈ net/L`, and each set holds only networks of its length."""
    name = allow_set if set_of == "allow" else deny_set
    return [f"iifname . ip daddr & {mask(n)} @{name(n)} {then}" for n in reversed(PREFIX_LENGTHS)]


def base_rules() -> dict[str, list[str]]:
    """The fixed rules of every chain, in evaluation order (without the uplink's NAT)."""
    floor = "ip daddr @floor4"
    resolved = f"iifname @{DOMAINS} iif . ip daddr @{RESOLVED4}"
    return {
        # raw priority: runs before conntrack, so spoofed packets never create state.
        "prerouting_raw": [
            'iifname != "s*" accept',
            # An s* interface that is not (or no longer) registered sends nothing.
            f"iifname != @{SLOTS} drop",
            f"meta nfproto ipv6 {_log('ipv6')}",
            "meta nfproto ipv6 drop",
            f"iifname . ip saddr != @{SRC4} {_log('spoof')}",
            f"iifname . ip saddr != @{SRC4} drop",
        ],
        "prerouting_nat": [
            f"iifname != @{SLOTS} accept",
            *(f"{p} dport {DNS_PORT} redirect to :{RESOLVER_PORT}" for p in L4_DNS),
            # Floor destinations stay on the L4 path (refused in forward).
            f"{floor} accept",
            # Inspection: all other TCP to the proxy, CIDR-allowed destinations too.
            f"iifname @{INSPECT} meta l4proto tcp redirect to :{PROXY_PORT}",
            # CIDR-allowed destinations never reach the proxy (L4 path).
            f"iifname @{DOMAINS} iifname @{HAS_ALLOW} jump nat_allow",
            f"{resolved} meta l4proto tcp redirect to :{PROXY_PORT}",
        ],
        "nat_allow": _cidr_lookups("allow", "accept"),
        "forward": [
            "ct state established,related accept",
            "ct state invalid drop",
            f"iifname != @{SLOTS} drop",
            *_refuse("floor", floor),
            # Before any accept: a CIDR-allowed or open destination must not carry QUIC
            # from an inspected sandbox either (clients fall back to TCP, i.e. the proxy).
            f"iifname @{INSPECT} udp dport 443 {_log('udp_quic_inspect')}",
            f"iifname @{INSPECT} udp dport 443 reject with icmpx admin-prohibited",
            f"iifname @{HAS_ALLOW} jump fwd_allow",
            # What reaches forward for a resolved address is not TCP (that went to the
            # proxy): UDP (QUIC) to name-only destinations is refused.
            *_refuse("udp_dns_only", resolved),
            f"iifname @{HAS_DENY} jump fwd_deny",
            f"iifname @{OPEN} {_log('open')}",
            f"iifname @{OPEN} accept",
            *_refuse("default"),
        ],
        "fwd_allow": _cidr_lookups("allow", "goto allowed_cidr"),
        "allowed_cidr": [_log("cidr"), "accept"],
        "fwd_deny": _cidr_lookups("deny", "goto denied_cidr"),
        "denied_cidr": _refuse("deny_cidr"),
        "input": [
            "ct state established,related accept",
            "ct state invalid drop",
            'iif "lo" accept',
            f"iifname != @{SLOTS} drop",
            *(f"ct status dnat {p} dport {RESOLVER_PORT} accept" for p in L4_DNS),
            f"ct status dnat tcp dport {PROXY_PORT} accept",
            *_refuse("gateway"),
        ],
    }


BASE_CHAINS = {
    "prerouting_raw": "type filter hook prerouting priority raw; policy accept;",
    "prerouting_nat": "type nat hook prerouting priority dstnat; policy accept;",
    "forward": "type filter hook forward priority filter; policy drop;",
    "input": "type filter hook input priority filter; policy drop;",
    "postrouting_nat": "type nat hook postrouting priority srcnat; policy accept;",
}


def base_sets() -> list[tuple[str, str]]:
    """(name, spec) of every set and map, created with the table."""
    sets = [(name, "type ifname;") for name in FLAG_SETS]
    sets.append((SRC4, "type ifname . ipv4_addr;"))
    sets += [(allow_set(n), "type ifname . ipv4_addr;") for n in PREFIX_LENGTHS]
    sets += [(deny_set(n), "type ifname . ipv4_addr;") for n in PREFIX_LENGTHS]
    sets.append((RESOLVED4, "type iface_index . ipv4_addr; flags timeout;"))
    meter = f"type ifname; flags dynamic,timeout; timeout {METER_TIMEOUT_S}s;"
    sets += [(f"log_{reason}", meter) for reason in LOG_POINTS]
    return sets


def base_script(layout: BaseLayout, *, rebuild: bool = False) -> str:
    """Create or refresh the base table. Keeps every set's elements (the sandboxes).

    `rebuild`: delete the table first, in the same transaction (a table of another
    layout): no sandbox is registered afterwards, so their s* traffic is dropped until
    their elements are added again.
    """
    t = TABLE
    lines = [f"add table {t}"]
    if rebuild:
        lines += [f"delete table {t}", f"add table {t}"]
    lines += [
        f"add set {t} floor4 {{ type ipv4_addr; flags interval; }}",
        f"flush set {t} floor4",
        f"add element {t} floor4 {{ {_elements(layout.floor)} }}",
    ]
    lines += [f"add set {t} {name} {{ {spec} }}" for name, spec in base_sets()]
    lines += [
        f"add map {t} {REC} {{ type ifname . mark : ipv4_addr . mark; }}",
        f"add map {t} {NREC} {{ type ifname : mark; }}",
    ]
    rules = base_rules()
    for name, spec in BASE_CHAINS.items():
        lines += [f"add chain {t} {name} {{ {spec} }}", f"flush chain {t} {name}"]
    for name in rules:
        if name not in BASE_CHAINS:
            lines += [f"add chain {t} {name}", f"flush chain {t} {name}"]
    for name, body in rules.items():
        lines += [f"add rule {t} {name} {r}" for r in body]
    lines.append(f'add rule {t} postrouting_nat oifname "{layout.upstream_if}" masquerade')
    return "\n".join(lines) + "\n"


# One sandbox: elements -------------------------------------------------------------------
@dataclass(frozen=True)
class Keyed:
    """One `ifname . ipv4_addr` element of a keyed set (src4, allow4_L, deny4_L)."""

    set_name: str
    address: ipaddress.IPv4Address

    @property
    def code(self) -> int:
        return KEYED_SETS.index(self.set_name)

    @classmethod
    def from_code(cls, code: int, address: ipaddress.IPv4Address) -> Keyed:
        if not 0 <= code < len(KEYED_SETS):
            raise ValueError(f"bad keyed-set code {code}")
        return cls(KEYED_SETS[code], address)


@dataclass(frozen=True)
class Elements:
    """Everything one sandbox puts into the shared sets (besides resolved addresses)."""

    flags: tuple[str, ...]  # ifname-keyed sets it is in, SLOTS among them
    keyed: tuple[Keyed, ...]  # in `rec` order


NOTHING = Elements((), ())  # what an absent slot has (remove of an unknown slot)


def sandbox_elements(address: str, policy: EgressPolicy, inspect: bool = False) -> Elements:
    """The sandbox's elements under `policy`.

    `inspect` (its InspectionPolicy is active): all its non-floor TCP goes to the proxy,
    whatever the policy (the proxy then gives the L4 verdict too), and its UDP to port 443
    is refused so QUIC clients fall back to TCP through the proxy.
    """
    return elements_of(
        address,
        policy.allow_cidrs_v4,
        policy.deny_cidrs_v4,
        open_=policy.default_allows,
        domains=bool(policy.domains_enforced and policy.allow_domains),
        inspect=inspect,
    )


def elements_of(
    address: str,
    allow: Iterable[ipaddress.IPv4Network],
    deny: Iterable[ipaddress.IPv4Network],
    *,
    open_: bool,
    domains: bool,
    inspect: bool,
) -> Elements:
    """A sandbox's elements from what its rules decide (also used to migrate old tables)."""
    allowed = list(ipaddress.collapse_addresses(allow))
    denied = list(ipaddress.collapse_addresses(deny))
    wanted = {OPEN: open_, DOMAINS: domains, INSPECT: inspect, HAS_ALLOW: bool(allowed),
              HAS_DENY: bool(denied)}  # fmt: skip
    flags = (SLOTS, *(f for f in FLAG_SETS[1:] if wanted[f]))
    keyed = [Keyed(SRC4, ipaddress.IPv4Address(address))]
    keyed += [Keyed(allow_set(n.prefixlen), n.network_address) for n in allowed]
    keyed += [Keyed(deny_set(n.prefixlen), n.network_address) for n in denied]
    return Elements(flags, tuple(keyed))


def _key(slot: int, address: ipaddress.IPv4Address) -> str:
    return f'"{ifname(slot)}" . {address}'


def _by_set(keyed: Iterable[Keyed]) -> dict[str, list[Keyed]]:
    out: dict[str, list[Keyed]] = {}
    for k in keyed:
        out.setdefault(k.set_name, []).append(k)
    return out


def _install(slot: int, new: Elements) -> list[str]:
    t, name = TABLE, f'"{ifname(slot)}"'
    lines = [f"add element {t} {s} {{ {', '.join(_key(slot, k.address) for k in ks)} }}"
             for s, ks in _by_set(new.keyed).items()]  # fmt: skip
    if new.keyed:
        recs = ", ".join(f"{name} . {i} : {k.address} . {k.code}" for i, k in enumerate(new.keyed))
        lines.append(f"add element {t} {REC} {{ {recs} }}")
    lines.append(f"add element {t} {NREC} {{ {name} : {len(new.keyed)} }}")
    # Flags last: SLOTS registers the interface once the rest is in place.
    lines += [f"add element {t} {f} {{ {name} }}" for f in new.flags]
    return lines


def _uninstall(slot: int, old: Elements, keep_flags: Iterable[str] = ()) -> list[str]:
    """Delete `old`'s keyed elements and records (they exist: `rec` says so) and every flag
    not in `keep_flags` (added first, so it is valid whether or not the flag was set)."""
    t, name = TABLE, f'"{ifname(slot)}"'
    lines = [f"delete element {t} {s} {{ {', '.join(_key(slot, k.address) for k in ks)} }}"
             for s, ks in _by_set(old.keyed).items()]  # fmt: skip
    if old.keyed:
        recs = ", ".join(f"{name} . {i}" for i in range(len(old.keyed)))
        lines.append(f"delete element {t} {REC} {{ {recs} }}")
    lines += [
        f"add element {t} {NREC} {{ {name} : {len(old.keyed)} }}",
        f"delete element {t} {NREC} {{ {name} }}",
    ]
    drop = [f for f in FLAG_SETS if f not in set(keep_flags)]
    lines += [f"add element {t} {f} {{ {name} }}" for f in drop]
    lines += [f"delete element {t} {f} {{ {name} }}" for f in drop]
    return lines


def sandbox_add_script(
    slot: int,
    address: str,
    policy: EgressPolicy,
    inspect: bool = False,
    previous: Elements = NOTHING,
) -> str:
    """Install one sandbox, replacing what the slot had (`previous`, read from `rec`)."""
    return sandbox_update_script(slot, address, policy, inspect, previous)


def sandbox_update_script(
    slot: int,
    address: str,
    policy: EgressPolicy,
    inspect: bool = False,
    previous: Elements = NOTHING,
) -> str:
    """Make the slot's elements exactly those of `policy`, atomically: `previous` (what
    `rec` holds for it) out, the new ones in. Resolved addresses stay; they count only
    while the sandbox is in `domains`."""
    new = sandbox_elements(address, policy, inspect)
    lines = _uninstall(slot, previous, keep_flags=new.flags) + _install(slot, new)
    return "\n".join(lines) + "\n"


def sandbox_remove_script(slot: int, previous: Elements = NOTHING) -> str:
    """Remove everything of one slot; valid whether or not it is installed (`previous`:
    what `rec` holds for it). Its resolved addresses are keyed by the veth's ifindex,
    which the kernel never hands out again soon: they only expire."""
    return "\n".join(_uninstall(slot, previous)) + "\n"


def migrate_script(layout: BaseLayout, slots: dict[int, Elements]) -> str:
    """Rebuild a table of another layout and install `slots` in the same transaction, so
    live sandboxes never go without their rules."""
    lines = [line for slot, new in sorted(slots.items()) for line in _install(slot, new)]
    return base_script(layout, rebuild=True) + "".join(f"{line}\n" for line in lines)


def add_resolved_script(ifindex: int, addresses: Iterable[str], timeout_s: int) -> str:
    """What the gateway daemon does for an interface (documented here for tests and benches)."""
    elems = ", ".join(
        f"{int(ifindex)} . {ipaddress.IPv4Address(a)} timeout {int(timeout_s)}s" for a in addresses
    )
    return f"add element {TABLE} {RESOLVED4} {{ {elems} }}\n"
