"""The policy → nftables compiler: rule order, sets and transaction shape (no kernel)."""

from __future__ import annotations

import ipaddress

from declawd.egress import nft
from declawd.egress.policy import EgressPolicy

ADDR = "10.77.0.6"


def fwd(policy: EgressPolicy) -> list[str]:
    return nft.sandbox_rules(1, ADDR, policy)["fwd_1"]


def nat(policy: EgressPolicy) -> list[str]:
    return nft.sandbox_rules(1, ADDR, policy)["nat_1"]


def index(rules: list[str], needle: str) -> int:
    return next(i for i, r in enumerate(rules) if needle in r)


def test_anti_spoof_and_ipv6_drop() -> None:
    pre = nft.sandbox_rules(1, ADDR, EgressPolicy.open())["pre_1"]
    assert "meta nfproto ipv6 drop" in pre
    assert f"ip saddr != {ADDR} drop" in pre


def test_dns_redirect_first_under_every_policy() -> None:
    for p in (EgressPolicy.open(), EgressPolicy.parse(["x.com"], ["0.0.0.0/0"])):
        assert nat(p)[:2] == ["udp dport 53 redirect to :5353", "tcp dport 53 redirect to :5353"]


def test_deny_all_order() -> None:
    p = EgressPolicy.parse(["203.0.113.10", "x.com"], ["0.0.0.0/0"])
    rules = fwd(p)
    order = [
        index(rules, "@floor4 meta l4proto tcp reject"),
        index(rules, "@a4_1 accept"),
        index(rules, "@r4_1 reject with icmpx"),
        len(rules) - 1,
    ]
    assert order == sorted(order)
    assert rules[-2:] == ["meta l4proto tcp reject with tcp reset",
                          "reject with icmpx admin-prohibited"]  # fmt: skip
    n = nat(p)
    assert n.index("ip daddr @floor4 return") < n.index("ip daddr @a4_1 return")
    assert n[-1] == "ip daddr @r4_1 meta l4proto tcp redirect to :15001"


def test_open_policy_accepts_through_default() -> None:
    rules = fwd(EgressPolicy.parse([], ["203.0.113.66"]))
    assert rules[-1] == "accept"
    assert 'prefix "allow:1:open" group 7' in rules[-2]
    assert index(rules, "@d4_1 meta l4proto tcp reject") < len(rules) - 1
    assert not any("@r4_1" in r for r in rules)
    assert len(nat(EgressPolicy.open())) == 2  # DNS (UDP, TCP) only: nothing goes to the proxy


def test_every_refusal_is_logged_with_a_rate_limit() -> None:
    rules = fwd(EgressPolicy.parse(["1.2.3.4", "x.com"], ["0.0.0.0/0"]))
    for i, r in enumerate(rules):
        if "reject with tcp reset" in r:
            assert "log prefix" in rules[i - 1] and nft.LOG_LIMIT in rules[i - 1]
    reasons = [r.split('prefix "')[1].split('"')[0] for r in rules if "log prefix" in r]
    assert reasons == ["deny:1:floor", "allow:1:cidr", "deny:1:udp_dns_only", "deny:1:default"]


def test_input_only_redirected_ports() -> None:
    inp = nft.sandbox_rules(1, ADDR, EgressPolicy.open())["in_1"]
    assert inp[:3] == [
        "ct status dnat udp dport 5353 accept",
        "ct status dnat tcp dport 5353 accept",
        "ct status dnat tcp dport 15001 accept",
    ]
    assert inp[-1] == "reject with icmpx admin-prohibited"


def test_update_keeps_resolved_set_only_while_names_matter() -> None:
    keep = nft.sandbox_update_script(1, ADDR, EgressPolicy.parse(["x.com"], ["0.0.0.0/0"]))
    drop = nft.sandbox_update_script(1, ADDR, EgressPolicy.open())
    assert "flush set inet declawd r4_1" not in keep
    assert "flush set inet declawd r4_1" in drop
    assert (
        "flush set inet declawd a4_1" in keep and "add element inet declawd pre_by_if" not in keep
    )


def test_cidrs_collapsed_for_interval_sets() -> None:
    p = EgressPolicy.parse(["10.0.0.0/8", "10.1.0.0/16", "203.0.113.0/25", "203.0.113.128/25"],
                           ["0.0.0.0/0"])  # fmt: skip
    script = nft.sandbox_add_script(1, ADDR, p)
    assert "add element inet declawd a4_1 { 10.0.0.0/8, 203.0.113.0/24 }" in script


def test_add_script_dispatches_last_and_remove_is_self_contained() -> None:
    lines = nft.sandbox_add_script(3, ADDR, EgressPolicy.open()).splitlines()
    assert all("_by_if" in line for line in lines[-4:])
    rm = nft.sandbox_remove_script(3).splitlines()
    assert rm.index('delete element inet declawd fwd_by_if { "s3" }') < rm.index(
        "delete chain inet declawd fwd_3"
    )


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


def test_base_script_never_touches_sandbox_objects() -> None:
    s = nft.base_script(nft.BaseLayout("lab0", nft.floor_networks()))
    assert "_1" not in s and "flush map" not in s
    assert 'oifname "lab0" masquerade' in s
    assert "policy drop" in s


# Content inspection: an active InspectionPolicy changes the sandbox's nat and fwd chains --


def test_inspection_sends_all_tcp_but_the_floor_to_the_proxy_under_an_open_policy() -> None:
    rules = nft.sandbox_rules(1, ADDR, EgressPolicy.open(), inspect=True)
    assert rules["nat_1"] == [
        "udp dport 53 redirect to :5353",
        "tcp dport 53 redirect to :5353",
        "ip daddr @floor4 return",
        "meta l4proto tcp redirect to :15001",
    ]
    assert rules["fwd_1"] == [
        f'ip daddr @floor4 {nft.LOG_LIMIT} log prefix "deny:1:floor" group 7',
        "ip daddr @floor4 meta l4proto tcp reject with tcp reset",
        "ip daddr @floor4 reject with icmpx admin-prohibited",
        f'udp dport 443 {nft.LOG_LIMIT} log prefix "deny:1:udp_quic_inspect" group 7',
        "udp dport 443 reject with icmpx admin-prohibited",
        f'{nft.LOG_LIMIT} log prefix "allow:1:open" group 7',
        "accept",
    ]


def test_inspection_under_a_domain_policy_redirects_cidr_allowed_tcp_too() -> None:
    p = EgressPolicy.parse(["203.0.113.10", "x.com"], ["0.0.0.0/0"])
    rules = nft.sandbox_rules(1, ADDR, p, inspect=True)
    assert rules["nat_1"] == [
        "udp dport 53 redirect to :5353",
        "tcp dport 53 redirect to :5353",
        "ip daddr @floor4 return",
        "meta l4proto tcp redirect to :15001",
    ]
    reasons = [r.split('prefix "')[1].split('"')[0] for r in rules["fwd_1"] if "log prefix" in r]
    assert reasons == [
        "deny:1:floor",
        "deny:1:udp_quic_inspect",
        "allow:1:cidr",
        "deny:1:udp_dns_only",
        "deny:1:default",
    ]
    # QUIC is refused before the CIDR accept could let it through.
    assert index(rules["fwd_1"], "udp dport 443 reject") < index(rules["fwd_1"], "@a4_1 accept")


def test_inspection_with_denied_cidrs_keeps_them_refused_at_l4() -> None:
    p = EgressPolicy.parse([], ["203.0.113.66"])
    rules = nft.sandbox_rules(1, ADDR, p, inspect=True)
    assert rules["nat_1"][-1] == "meta l4proto tcp redirect to :15001"
    assert "ip daddr @d4_1 reject with icmpx admin-prohibited" in rules["fwd_1"]
    assert rules["fwd_1"][-1] == "accept"


def test_without_inspection_the_rules_are_the_policys_alone() -> None:
    for p in (
        EgressPolicy.open(),
        EgressPolicy.parse(["203.0.113.10", "x.com"], ["0.0.0.0/0"]),
        EgressPolicy.parse(["10.0.0.0/8"], ["203.0.113.66"]),
    ):
        plain = nft.sandbox_rules(1, ADDR, p, inspect=False)
        assert plain == nft.sandbox_rules(1, ADDR, p)
        assert not any("udp_quic_inspect" in r for r in plain["fwd_1"])
        assert "meta l4proto tcp redirect to :15001" not in plain["nat_1"]
        # pre and in chains never depend on inspection
        inspected = nft.sandbox_rules(1, ADDR, p, inspect=True)
        assert (plain["pre_1"], plain["in_1"]) == (inspected["pre_1"], inspected["in_1"])


def test_add_and_update_scripts_carry_the_inspection_rules() -> None:
    add = nft.sandbox_add_script(2, ADDR, EgressPolicy.open(), inspect=True)
    update = nft.sandbox_update_script(2, ADDR, EgressPolicy.open(), inspect=True)
    for script in (add, update):
        assert "add rule inet declawd nat_2 meta l4proto tcp redirect to :15001" in script
        assert "add rule inet declawd fwd_2 udp dport 443 reject with icmpx admin-prohibited" in (
            script
        )
    back = nft.sandbox_update_script(2, ADDR, EgressPolicy.open())
    assert "redirect to :15001" not in back and "udp dport 443" not in back
