"""The policy → nftables compiler: fixed rule order, a sandbox's elements and the shape of
its transactions (no kernel; tests/integration/test_egress_datapath.py checks verdicts)."""

from __future__ import annotations

import ipaddress
import re

from declawd.egress import nft
from declawd.egress.policy import EgressPolicy

ADDR = "10.77.0.6"
RULES = nft.base_rules()
BASE = nft.base_script(nft.BaseLayout("lab0", nft.floor_networks()))


def index(rules: list[str], needle: str) -> int:
    return next(i for i, r in enumerate(rules) if needle in r)


def reasons(rules: list[str]) -> list[str]:
    return [r.split('prefix "')[1].split('"')[0] for r in rules if "log prefix" in r]


def elements(policy: EgressPolicy, inspect: bool = False) -> nft.Elements:
    return nft.sandbox_elements(ADDR, policy, inspect)


def test_raw_drops_unregistered_s_interfaces_ipv6_and_spoofing() -> None:
    pre = RULES["prerouting_raw"]
    assert pre[:2] == ['iifname != "s*" accept', "iifname != @slots drop"]
    assert pre.index("meta nfproto ipv6 drop") < pre.index("iifname . ip saddr != @src4 drop")


def test_forward_order() -> None:
    fwd = RULES["forward"]
    order = [
        index(fwd, "ct state established,related accept"),
        index(fwd, "iifname != @slots drop"),
        index(fwd, "ip daddr @floor4 meta l4proto tcp reject"),
        index(fwd, "iifname @inspect udp dport 443 reject"),  # before any accept
        index(fwd, "iifname @has_allow jump fwd_allow"),
        index(fwd, "iif . ip daddr @resolved4 reject with icmpx"),
        index(fwd, "iifname @has_deny jump fwd_deny"),
        index(fwd, "iifname @open accept"),
        len(fwd) - 1,
    ]
    assert order == sorted(order)
    assert fwd[-2:] == ["meta l4proto tcp reject with tcp reset",
                        "reject with icmpx admin-prohibited"]  # fmt: skip
    assert RULES["allowed_cidr"][-1] == "accept"
    assert RULES["denied_cidr"][-1] == "reject with icmpx admin-prohibited"


def test_nat_order() -> None:
    nat = RULES["prerouting_nat"]
    assert nat[:3] == [
        "iifname != @slots accept",
        "udp dport 53 redirect to :5353",
        "tcp dport 53 redirect to :5353",
    ]
    # Floor first (L4 path), then inspection's all-TCP, then CIDR-allowed stays on L4,
    # then resolved names to the proxy.
    assert nat[3:] == [
        "ip daddr @floor4 accept",
        "iifname @inspect meta l4proto tcp redirect to :15001",
        "iifname @domains iifname @has_allow jump nat_allow",
        "iifname @domains iif . ip daddr @resolved4 meta l4proto tcp redirect to :15001",
    ]


def test_cidr_lookups_one_per_prefix_length_with_its_mask() -> None:
    for chain, name, then in (
        ("fwd_allow", "allow4", "goto allowed_cidr"),
        ("fwd_deny", "deny4", "goto denied_cidr"),
        ("nat_allow", "allow4", "accept"),
    ):
        rules = RULES[chain]
        assert len(rules) == 33
        for rule in rules:
            m = re.fullmatch(rf"iifname \. ip daddr & (\S+) @{name}_(\d+) {then}", rule)
            assert m, rule
            length = int(m.group(2))
            assert ipaddress.IPv4Network(f"0.0.0.0/{m.group(1)}").prefixlen == length


def test_every_refusal_is_logged_with_a_per_interface_meter() -> None:
    for chain, rules in RULES.items():
        for i, r in enumerate(rules):
            if "reject with tcp reset" in r:
                assert "log prefix" in rules[i - 1], (chain, r)
        for r in rules:
            if "log prefix" in r:
                reason = r.split('prefix "')[1].split('"')[0].split(":")[1]
                assert f"update @log_{reason} {{ iifname {nft.LOG_LIMIT} }} log" in r
    assert reasons(RULES["forward"]) == [
        "deny:floor",
        "deny:udp_quic_inspect",
        "deny:udp_dns_only",
        "allow:open",
        "deny:default",
    ]
    assert reasons(RULES["allowed_cidr"] + RULES["denied_cidr"]) == ["allow:cidr", "deny:deny_cidr"]
    assert reasons(RULES["prerouting_raw"]) == ["deny:ipv6", "deny:spoof"]
    assert reasons(RULES["input"]) == ["deny:gateway"]
    # Every log point has its meter set, created with the table.
    for reason in nft.LOG_POINTS:
        assert f"add set inet declawd log_{reason} {{ type ifname; flags dynamic,timeout;" in BASE


def test_input_only_redirected_ports() -> None:
    inp = RULES["input"]
    start = inp.index("iifname != @slots drop") + 1
    assert inp[start : start + 3] == [
        "ct status dnat udp dport 5353 accept",
        "ct status dnat tcp dport 5353 accept",
        "ct status dnat tcp dport 15001 accept",
    ]
    assert inp[-1] == "reject with icmpx admin-prohibited"


def test_elements_follow_the_policy() -> None:
    deny_all = elements(EgressPolicy.parse(["203.0.113.10", "x.com"], ["0.0.0.0/0"]))
    assert deny_all.flags == ("slots", "domains", "has_allow")
    assert deny_all.keyed == (
        nft.Keyed("src4", ipaddress.IPv4Address(ADDR)),
        nft.Keyed("allow4_32", ipaddress.IPv4Address("203.0.113.10")),
    )
    assert elements(EgressPolicy.open()).flags == ("slots", "open")
    assert elements(EgressPolicy.open(), inspect=True).flags == ("slots", "open", "inspect")
    denied = elements(EgressPolicy.parse([], ["203.0.113.66"]))
    assert denied.flags == ("slots", "open", "has_deny")
    assert denied.keyed[1:] == (nft.Keyed("deny4_32", ipaddress.IPv4Address("203.0.113.66")),)


def test_cidrs_collapsed_one_element_per_network_in_its_lengths_set() -> None:
    p = EgressPolicy.parse(["10.0.0.0/8", "10.1.0.0/16", "203.0.113.0/25", "203.0.113.128/25",
                            "0.0.0.0/0"], [])  # fmt: skip
    assert [(k.set_name, str(k.address)) for k in elements(p).keyed[1:]] == [
        ("allow4_0", "0.0.0.0")
    ]
    p = EgressPolicy.parse(["10.0.0.0/8", "10.1.0.0/16", "203.0.113.0/25", "203.0.113.128/25"],
                           ["0.0.0.0/0"])  # fmt: skip
    script = nft.sandbox_add_script(1, ADDR, p)
    assert 'add element inet declawd allow4_8 { "s1" . 10.0.0.0 }' in script
    assert 'add element inet declawd allow4_24 { "s1" . 203.0.113.0 }' in script


def test_keyed_codes_round_trip() -> None:
    for name in nft.KEYED_SETS:
        k = nft.Keyed(name, ipaddress.IPv4Address("192.0.2.0"))
        assert nft.Keyed.from_code(k.code, k.address) == k


def test_add_records_its_keys_and_registers_last() -> None:
    p = EgressPolicy.parse(["198.51.100.0/24", "x.com"], ["0.0.0.0/0"])
    lines = nft.sandbox_add_script(3, ADDR, p).splitlines()
    assert lines[-3:] == [
        'add element inet declawd slots { "s3" }',
        'add element inet declawd domains { "s3" }',
        'add element inet declawd has_allow { "s3" }',
    ]
    assert (
        'add element inet declawd rec { "s3" . 0 : 10.77.0.6 . 0, "s3" . 1 : 198.51.100.0 . 25 }'
        in lines
    )
    assert 'add element inet declawd nrec { "s3" : 2 }' in lines
    assert not any(line.startswith(("add rule", "add chain", "add set")) for line in lines)


def test_update_deletes_exactly_the_previous_elements() -> None:
    old = EgressPolicy.parse(["198.51.100.0/24", "x.com"], ["0.0.0.0/0"])
    lines = nft.sandbox_update_script(3, ADDR, EgressPolicy.open(), False, elements(old))
    deletes = [line for line in lines.splitlines() if line.startswith("delete")]
    assert deletes == [
        'delete element inet declawd src4 { "s3" . 10.77.0.6 }',
        'delete element inet declawd allow4_24 { "s3" . 198.51.100.0 }',
        'delete element inet declawd rec { "s3" . 0, "s3" . 1 }',
        'delete element inet declawd nrec { "s3" }',
        # Flags the new policy does not set: added first, so deleting never fails.
        *(f'delete element inet declawd {f} {{ "s3" }}'
          for f in ("domains", "inspect", "has_allow", "has_deny")),
    ]  # fmt: skip
    assert 'add element inet declawd nrec { "s3" : 2 }' in lines  # matches the old count
    # Resolved addresses are the daemon's: an update never touches them.
    assert "resolved4" not in lines


def test_remove_of_an_absent_slot_only_clears_flags() -> None:
    lines = nft.sandbox_remove_script(77).splitlines()
    assert lines[:2] == [
        'add element inet declawd nrec { "s77" : 0 }',
        'delete element inet declawd nrec { "s77" }',
    ]
    for f in nft.FLAG_SETS:
        assert lines.index(f'add element inet declawd {f} {{ "s77" }}') < lines.index(
            f'delete element inet declawd {f} {{ "s77" }}'
        )
    assert not any("src4" in line or " rec {" in line for line in lines)


def test_floor_set_content() -> None:
    pool = ipaddress.IPv4Network("10.77.0.0/16")
    floor = nft.floor_networks([pool])
    assert ipaddress.IPv4Network("198.18.0.0/15") in floor
    exempted = nft.floor_networks([pool], [ipaddress.IPv4Network("10.20.0.0/16")])
    assert not any(ipaddress.IPv4Address("10.20.0.1") in n for n in exempted)
    assert any(ipaddress.IPv4Address("10.77.0.1") in n for n in exempted)
    # The node's own ranges stay even if an exemption covers them.
    wide = nft.floor_networks([pool], [ipaddress.IPv4Network("10.0.0.0/8")])
    assert any(ipaddress.IPv4Address("10.77.0.1") in n for n in wide)


def test_base_script_never_touches_sandbox_elements() -> None:
    lines = BASE.splitlines()
    assert [line.split(" {")[0] for line in lines if "element" in line or "flush set" in line] == [
        "flush set inet declawd floor4",
        "add element inet declawd floor4",
    ]
    assert "delete table" not in BASE
    assert 'oifname "lab0" masquerade' in BASE
    assert BASE.count("policy drop") == 2  # forward and input
    rebuild = nft.base_script(nft.BaseLayout("lab0", nft.floor_networks()), rebuild=True)
    assert rebuild.splitlines()[:3] == [
        "add table inet declawd",
        "delete table inet declawd",
        "add table inet declawd",
    ]


def test_resolved_script_keys_by_ifindex() -> None:
    assert nft.add_resolved_script(12, ["203.0.113.1"], 30) == (
        "add element inet declawd resolved4 { 12 . 203.0.113.1 timeout 30s }\n"
    )
