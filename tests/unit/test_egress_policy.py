"""EgressPolicy parsing, the §11.3 truth table, name matching and the platform floor."""

from __future__ import annotations

import ipaddress

import pytest

from declawd.egress.policy import FLOOR_V4, FLOOR_V6, EgressPolicy, PolicyError, is_non_public
from declawd.errors import InvalidInput


def err(allow: object, deny: object) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        EgressPolicy.parse(allow, deny)  # type: ignore[arg-type]
    return info.value


@pytest.mark.parametrize(
    "entry",
    ["1.2.3.4", "10.0.0.1/8", "example.com", "*.example.com", "API.OpenAI.com.",
     "xn--bcher-kva.example", "a-b.c-d.io"],
)  # fmt: skip
def test_valid_allow_entries(entry: str) -> None:
    EgressPolicy.parse([entry], ["0.0.0.0/0"])


@pytest.mark.parametrize(
    "entry",
    ["localhost", "under_score.com", "*example.com", "*.*.x.com", "host.com:443",
     "https://x.com", "x.com/path", "x.123", "-a.com", "a-.com", "", "1.2.3.4/33"],
)  # fmt: skip
def test_invalid_entries_name_the_field(entry: str) -> None:
    e = err(["1.1.1.1/32", entry], ["0.0.0.0/0"])
    assert e.field == "network.allow_out[1]"
    assert isinstance(e, InvalidInput)
    assert e.message == f"network.allow_out[1]: {e.reason}"
    assert str(e).count("network.allow_out[1]") == 1


def test_renamed_policy_error_names_the_new_field_once() -> None:
    e = err(["nope"], []).renamed("allow_out[0]")
    assert isinstance(e, PolicyError)
    assert e.message == f"allow_out[0]: {e.reason}"


def test_domain_in_deny_out_rejected() -> None:
    assert err([], ["10.0.0.0/8", "evil.com"]).field == "network.deny_out[1]"


def test_non_string_entry() -> None:
    assert "string" in err([5], []).reason
    assert err("x.com", []).field == "network.allow_out"  # a bare string, not a list


def test_domain_needs_deny_all() -> None:
    e = err(["1.2.3.4", "x.com"], ["10.0.0.0/8"])
    assert e.field == "network.allow_out[1]" and "ALL_TRAFFIC" in e.reason
    EgressPolicy.parse(["x.com"], ["0.0.0.0/0"])
    EgressPolicy.parse(["x.com"], ["::/0"])  # accepted; §11.3: IPv4 stays open


def test_ipv6_rejected_except_deny_all_v6() -> None:
    assert "IPv6 is blocked" in err(["2001:db8::1"], []).reason
    assert "IPv6 is blocked" in err([], ["2001:db8::/32"]).reason
    assert "IPv6 is blocked" in err(["::/0"], []).reason
    EgressPolicy.parse([], ["::/0"])


def test_normalisation_and_wire_roundtrip() -> None:
    p = EgressPolicy.parse(["10.1.2.3/8", "1.2.3.4", "API.X.com.", "api.x.com"], ["0.0.0.0/0"])
    assert p.to_wire() == {"allow_out": ["10.0.0.0/8", "1.2.3.4", "api.x.com"],
                           "deny_out": ["0.0.0.0/0"]}  # fmt: skip
    assert EgressPolicy.from_wire(p.to_wire()) == p
    assert EgressPolicy.from_wire({}) == EgressPolicy.open()


# Truth table (§11.3) ---------------------------------------------------------------


def test_empty_is_open() -> None:
    p = EgressPolicy.parse([], [])
    assert p.default_allows and not p.domains_enforced
    assert p.allows_address("203.0.113.66") is True


def test_cidrs_only_allow_list_stays_open() -> None:
    p = EgressPolicy.parse(["203.0.113.10"], [])
    assert p.default_allows
    assert p.allows_address("198.51.100.1") is True


def test_deny_cidrs_under_open_default() -> None:
    p = EgressPolicy.parse([], ["203.0.113.0/24"])
    assert p.allows_address("203.0.113.66") is False
    assert p.allows_address("198.51.100.1") is True


def test_deny_all_refuses_rest_and_enforces_names() -> None:
    p = EgressPolicy.parse(["203.0.113.10", "api.openai.com"], ["0.0.0.0/0"])
    assert not p.default_allows and p.domains_enforced
    assert p.allows_address("203.0.113.10") is True
    assert p.allows_address("203.0.113.66") is None  # only through an allowed name
    assert EgressPolicy.parse(["1.2.3.4"], ["0.0.0.0/0"]).allows_address("5.6.7.8") is False
    assert p.deny_cidrs_v4 == ()


def test_deny_all_v6_only_keeps_ipv4_open() -> None:
    p = EgressPolicy.parse([], ["::/0"])
    assert p.default_allows and not p.domains_enforced
    assert p.allows_address("203.0.113.66") is True
    assert p.allows_address("2001:db8::1") is False


def test_allow_beats_deny_on_overlap() -> None:
    p = EgressPolicy.parse(["203.0.113.10"], ["203.0.113.0/24"])
    assert p.allows_address("203.0.113.10") is True
    assert p.allows_address("203.0.113.11") is False


def test_ipv6_never_allowed() -> None:
    assert EgressPolicy.open().allows_address("2606:4700::1") is False


# Names -----------------------------------------------------------------------------


def test_name_matching() -> None:
    p = EgressPolicy.parse(["api.openai.com", "*.x.com"], ["0.0.0.0/0"])
    assert p.name_allowed("API.OpenAI.com.")
    assert not p.name_allowed("openai.com")
    assert not p.name_allowed("a.api.openai.com")
    assert p.name_allowed("x.com") and p.name_allowed("a.x.com") and p.name_allowed("a.b.x.com")
    assert not p.name_allowed("ax.com")
    assert not p.name_allowed("x.com.evil.com")
    assert not p.name_allowed("")


def test_every_name_resolves_when_domains_not_enforced() -> None:
    p = EgressPolicy.parse([], ["203.0.113.66"])
    assert p.name_allowed("evil.com") and not p.name_listed("evil.com")


# Floor -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ip",
    ["0.1.2.3", "10.0.0.1", "100.64.0.1", "100.127.255.255", "127.0.0.1", "169.254.169.254",
     "172.16.0.1", "172.31.255.255", "192.168.1.1", "224.0.0.1", "239.255.255.255",
     "240.0.0.1", "255.255.255.255", "198.18.0.1", "198.19.255.255",
     "::", "::1", "fc00::1", "fd12::1", "fe80::1", "ff02::1",
     "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1", "2001:0:1::1"],
)  # fmt: skip
def test_non_public(ip: str) -> None:
    assert is_non_public(ip)


@pytest.mark.parametrize(
    "ip",
    ["8.8.8.8", "1.1.1.1", "203.0.113.10", "198.51.100.53", "192.0.2.1", "100.128.0.1",
     "172.32.0.1", "198.20.0.1", "100.63.255.255", "2001:db8::1", "2606:4700::1111"],
)  # fmt: skip
def test_public(ip: str) -> None:
    assert not is_non_public(ip)


def test_extra_ranges_and_exemptions() -> None:
    pool = ipaddress.ip_network("10.77.0.0/16")
    assert is_non_public("203.0.113.1", [ipaddress.ip_network("203.0.113.0/24")])
    assert is_non_public("203.0.113.1", extra=[ipaddress.ip_network("203.0.113.0/24")])
    corp = ipaddress.ip_network("10.20.0.0/16")
    assert not is_non_public("10.20.1.1", exempt=[corp])
    assert is_non_public("10.77.0.2", [pool], exempt=[ipaddress.ip_network("10.0.0.0/8")])
    # An exempted 6to4 prefix still refuses a non-public embedded IPv4 address.
    sixtofour = ipaddress.ip_network("2002::/16")
    assert is_non_public("2002:a00:1::", exempt=[sixtofour])
    assert not is_non_public("2002:cb00:710a::", exempt=[sixtofour])


def test_unparsable_is_non_public() -> None:
    assert is_non_public("not-an-ip")


def test_floor_constants_are_the_documented_list() -> None:
    assert len(FLOOR_V4) == 10 and len(FLOOR_V6) == 9
    assert ipaddress.ip_network("198.18.0.0/15") in FLOOR_V4
