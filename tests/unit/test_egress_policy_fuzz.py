"""Property-based fuzzing of the policy parser and its decisions.

Oracles: the official SDK's own `domain_matches` (made case-insensitive and trailing-dot
tolerant, as declaw-api.md §11.3 says we do) for names, and a direct reading of the §11.3
truth table for addresses. Properties: the parser never fails other than with PolicyError;
a deny-all policy never allows a name the oracle rejects nor an address outside its allowed
CIDRs; the floor always holds.
"""

from __future__ import annotations

import ipaddress

from declaw import domain_matches
from hypothesis import given, settings
from hypothesis import strategies as st

from declawd.egress.policy import EgressPolicy, PolicyError, is_non_public

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
TLD = st.from_regex(r"[a-z]{2,6}", fullmatch=True)
DOMAIN = st.builds(
    lambda labels, tld: ".".join([*labels, tld]), st.lists(LABEL, min_size=1, max_size=3), TLD
)
PATTERN = st.one_of(DOMAIN, DOMAIN.map(lambda d: "*." + d))
V4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
CIDR = st.builds(
    lambda ip, p: str(ipaddress.ip_network(f"{ip}/{p}", strict=False)), V4, st.integers(0, 32)
)
NOISE = st.text(max_size=40)


def _oracle_name(patterns: list[str], name: str) -> bool:
    name = name.lower().removesuffix(".")
    return any(domain_matches(p.lower(), name) for p in patterns)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(NOISE, PATTERN, CIDR, V4), max_size=6),
    st.lists(st.one_of(NOISE, CIDR, V4), max_size=6),
)
def test_parser_never_crashes(allow: list[str], deny: list[str]) -> None:
    try:
        policy = EgressPolicy.parse(allow, deny)
    except PolicyError as exc:
        assert exc.field.startswith("network.")
        return
    # a parsed policy round-trips through the wire form
    again = EgressPolicy.from_wire(policy.to_wire())
    assert again.to_wire() == policy.to_wire()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(PATTERN, min_size=1, max_size=5),
    st.one_of(DOMAIN, PATTERN.map(lambda p: p.removeprefix("*."))),
    st.booleans(),
    st.booleans(),
)
def test_deny_all_allows_only_listed_names(
    patterns: list[str], name: str, upper: bool, dot: bool
) -> None:
    policy = EgressPolicy.parse(patterns, ["0.0.0.0/0"])
    probe = (name.upper() if upper else name) + ("." if dot else "")
    assert policy.name_allowed(probe) == _oracle_name(patterns, probe)


@settings(max_examples=300, deadline=None)
@given(st.lists(CIDR, max_size=4), st.lists(CIDR, max_size=4), st.booleans(), V4)
def test_address_decisions_follow_the_truth_table(
    allow: list[str], deny: list[str], deny_all: bool, ip: str
) -> None:
    policy = EgressPolicy.parse(allow, [*deny, *(["0.0.0.0/0"] if deny_all else [])])
    addr = ipaddress.IPv4Address(ip)
    in_allow = any(addr in ipaddress.ip_network(c) for c in allow)
    in_deny = deny_all or any(addr in ipaddress.ip_network(c) for c in deny)
    expected = True if in_allow else not in_deny  # allow beats deny; open by default
    assert bool(policy.allows_address(ip)) == expected


@settings(max_examples=500, deadline=None)
@given(V4)
def test_floor_holds_for_every_non_public_v4(ip: str) -> None:
    addr = ipaddress.IPv4Address(ip)
    floor = [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "198.18.0.0/15",
    ]
    expected = any(addr in ipaddress.ip_network(n) for n in floor)
    assert is_non_public(ip) == expected
    # IPv4-mapped IPv6 is non-public as a whole; NAT64 forms inherit the embedded verdict
    assert is_non_public(f"::ffff:{ip}")
    if expected:
        assert is_non_public(f"64:ff9b::{ip}") is True
