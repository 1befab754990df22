"""Egress policy: parse and judge a sandbox's `allow_out`/`deny_out` (pure, no I/O).

The single place where the truth table of declaw-api.md §11.3 and SECURITY.md's
platform floor are encoded; the nftables compiler, the resolver and the proxy all ask
this module rather than re-deriving semantics. Invariant: a policy that parses is one
the datapath enforces exactly as written (anything we cannot enforce is a PolicyError).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from declawd.addresses import SINK_RANGE
from declawd.errors import InvalidInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALL_TRAFFIC = "0.0.0.0/0"
ALL_V4 = ipaddress.IPv4Network("0.0.0.0/0")
ALL_V6 = ipaddress.IPv6Network("::/0")

# SECURITY.md's non-public list, exactly. Documentation ranges (192.0.2/24,
# 198.51.100/24, 203.0.113/24) are deliberately public: the lab lives there.
FLOOR_V4: tuple[ipaddress.IPv4Network, ...] = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
        str(SINK_RANGE),
    )
)
FLOOR_V6: tuple[ipaddress.IPv6Network, ...] = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/128",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
        "::ffff:0:0/96",
        "64:ff9b::/96",
        "2002::/16",
        "2001::/32",
    )
)

MAX_ENTRIES = 1000
_DOMAIN_RE = re.compile(r"(\*\.)?([a-z0-9]([a-z0-9\-]*[a-z0-9])?\.)+[a-z]{2,}")
_IPV6_BLOCKED = "IPv6 is blocked on this node (only '::/0' in deny_out is accepted)"


class PolicyError(InvalidInput):
    """An invalid policy entry; `field` names it (e.g. `network.allow_out[2]`), and the
    message reads `field: reason` (the field once: callers rename, never prefix)."""


def _parse_network(entry: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        return None


def normalize_name(name: str) -> str:
    """Lower-case and drop one trailing dot: the form every comparison uses."""
    name = name.strip().lower()
    return name[:-1] if name.endswith(".") else name


def _is_domain(entry: str) -> bool:
    return len(entry) <= 253 and _DOMAIN_RE.fullmatch(entry) is not None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address carried inside v4-mapped, NAT64, 6to4 and Teredo forms."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client's (obfuscated) address is what it reaches
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _to_address(ip: str | IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return ip
    return ipaddress.ip_address(ip.strip().split("%", 1)[0])


def is_non_public(
    ip: str | IPAddress,
    extra_ranges: Sequence[IPNetwork] = (),
    *,
    exempt: Sequence[IPNetwork] = (),
    extra: Sequence[IPNetwork] = (),
) -> bool:
    """True if `ip` is on the platform floor (never reachable from a sandbox).

    `extra_ranges` (alias `extra`) adds node ranges (sandbox pool, gateway addresses);
    `exempt` lists operator-exempted ranges that lift the *floor list* only, never the
    node's own ranges. An unparsable address counts as non-public (fail closed).
    """
    try:
        addr = _to_address(ip)
    except ValueError:
        return True
    node_ranges = tuple(extra_ranges) + tuple(extra)
    if any(addr.version == n.version and addr in n for n in node_ranges):
        return True
    exempted = any(addr.version == n.version and addr in n for n in exempt)
    if isinstance(addr, ipaddress.IPv4Address):
        return not exempted and any(addr in n for n in FLOOR_V4)
    if not exempted and any(addr in n for n in FLOOR_V6):
        return True
    inner = _embedded_ipv4(addr)
    return inner is not None and is_non_public(inner, node_ranges, exempt=exempt)


@dataclass(frozen=True)
class EgressPolicy:
    """A parsed, normalised egress policy. Build with `parse` or `from_wire`."""

    allow_out: tuple[str, ...] = ()
    deny_out: tuple[str, ...] = ()
    allow_cidrs: tuple[IPNetwork, ...] = ()
    deny_cidrs: tuple[IPNetwork, ...] = ()
    allow_domains: tuple[str, ...] = ()

    # Construction ------------------------------------------------------------------
    @classmethod
    def parse(cls, allow_out: Iterable[Any] | None, deny_out: Iterable[Any] | None) -> EgressPolicy:
        allow_entries, allow_cidrs, domains = _parse_list("allow_out", allow_out, True)
        deny_entries, deny_cidrs, _ = _parse_list("deny_out", deny_out, False)
        if domains and not (ALL_V4 in deny_cidrs or ALL_V6 in deny_cidrs):
            field = f"network.allow_out[{_first_domain_index(allow_out)}]"
            raise PolicyError(
                field,
                "a domain allow-list needs ALL_TRAFFIC ('0.0.0.0/0') or '::/0' in deny_out",
            )
        return cls(
            allow_out=tuple(allow_entries),
            deny_out=tuple(deny_entries),
            allow_cidrs=tuple(allow_cidrs),
            deny_cidrs=tuple(deny_cidrs),
            allow_domains=tuple(domains),
        )

    @classmethod
    def open(cls) -> EgressPolicy:
        return cls()

    @classmethod
    def from_wire(cls, d: Mapping[str, Any] | None) -> EgressPolicy:
        d = d or {}
        return cls.parse(d.get("allow_out") or [], d.get("deny_out") or [])

    def to_wire(self) -> dict[str, list[str]]:
        return {"allow_out": list(self.allow_out), "deny_out": list(self.deny_out)}

    # Semantics (§11.3) -------------------------------------------------------------
    @property
    def denies_all_v4(self) -> bool:
        return ALL_V4 in self.deny_cidrs

    @property
    def default_allows(self) -> bool:
        """IPv4 destinations not matched by any CIDR are accepted (open policy)."""
        return not self.denies_all_v4

    @property
    def domains_enforced(self) -> bool:
        """Names matter: DNS is filtered and DNS-only destinations go through the proxy."""
        return self.denies_all_v4

    @property
    def allow_cidrs_v4(self) -> tuple[ipaddress.IPv4Network, ...]:
        return tuple(n for n in self.allow_cidrs if isinstance(n, ipaddress.IPv4Network))

    @property
    def deny_cidrs_v4(self) -> tuple[ipaddress.IPv4Network, ...]:
        """Denied IPv4 CIDRs; empty when ALL_TRAFFIC is denied (the default refuses)."""
        if self.denies_all_v4:
            return ()
        return tuple(n for n in self.deny_cidrs if isinstance(n, ipaddress.IPv4Network))

    def name_listed(self, name: str) -> bool:
        """True if `name` matches an `allow_out` domain (exact, or `*.x.com` ⊇ x.com)."""
        name = normalize_name(name)
        if not name:
            return False
        for pattern in self.allow_domains:
            if pattern.startswith("*."):
                suffix = pattern[2:]
                if name == suffix or name.endswith("." + suffix):
                    return True
            elif name == pattern:
                return True
        return False

    def name_allowed(self, name: str) -> bool:
        """May this sandbox resolve `name`? Every name when domains are not enforced."""
        if not self.domains_enforced:
            return bool(normalize_name(name))
        return self.name_listed(name)

    def allows_address(self, ip: str | IPAddress) -> bool | None:
        """L4 decision for a destination, floor excluded (see `is_non_public`).

        True: allowed by a CIDR or by an open default. False: refused. None: reachable
        only through an allowed name (resolver + proxy) under a deny-all policy.
        """
        addr = _to_address(ip)
        if addr.version == 6:
            return False  # IPv6 is blocked on this node, whatever the policy
        if any(addr in n for n in self.allow_cidrs_v4):
            return True
        if self.denies_all_v4:
            return None if self.allow_domains else False
        return not any(addr in n for n in self.deny_cidrs_v4)


def _parse_list(
    name: str, entries: Iterable[Any] | None, domains_ok: bool
) -> tuple[list[str], list[IPNetwork], list[str]]:
    if entries is None:
        entries = []
    if isinstance(entries, str | bytes) or not isinstance(entries, Iterable):
        raise PolicyError(f"network.{name}", "must be a list of strings")
    out: list[str] = []
    nets: list[IPNetwork] = []
    domains: list[str] = []
    for i, raw in enumerate(entries):
        field = f"network.{name}[{i}]"
        if i >= MAX_ENTRIES:
            raise PolicyError(f"network.{name}", f"at most {MAX_ENTRIES} entries")
        if not isinstance(raw, str):
            raise PolicyError(field, "must be a string")
        entry = raw.strip()
        net = _parse_network(entry)
        if net is not None:
            if net.version == 6 and not (name == "deny_out" and net == ALL_V6):
                raise PolicyError(field, _IPV6_BLOCKED)
            text = str(net) if "/" in entry else str(net.network_address)
            if net not in nets:
                nets.append(net)
                out.append(text)
            continue
        domain = normalize_name(entry)
        if not _is_domain(domain):
            what = "an IP address, CIDR or domain" if domains_ok else "an IP address or CIDR"
            raise PolicyError(field, f"invalid entry {raw!r}: must be {what}")
        if not domains_ok:
            raise PolicyError(field, f"domains are not allowed in deny_out: {raw!r}")
        if domain not in domains:
            domains.append(domain)
            out.append(domain)
    return out, nets, domains


def _first_domain_index(entries: Iterable[Any] | None) -> int:
    for i, raw in enumerate(entries or []):
        if isinstance(raw, str) and _parse_network(raw.strip()) is None:
            return i
    return 0
