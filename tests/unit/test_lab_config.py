"""Lab config validation: the defaults load, and each kind of mistake names its field."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from declawd.lab.config import LabConfigError, load_config, parse_config


def _host(**kw: object) -> dict:
    return {"name": "h.lab", "addresses": ["203.0.113.90"], "http": True, **kw}


def test_default_config_has_the_documented_hosts() -> None:
    c = load_config()
    addr = {h.name: [str(a) for a in h.addresses] for h in c.hosts}
    assert addr["api.openai.com"] == ["203.0.113.10"]
    assert addr["evil.com"] == ["203.0.113.66"]
    assert addr["multi.lab"] == ["203.0.113.50", "203.0.113.51"]
    assert c.cnames["www.example.com"] == "example.com"
    assert c.ttl_for("shortttl.lab") == 2
    assert c.host("smtp.lab") is not None
    assert c.host("smtp.lab").banner_ports == {25: "220 smtp.lab ESMTP lab"}  # type: ignore[union-attr]
    assert c.txt["txt.lab"] == ("lab-secret",)


def test_dns_only_hosts_are_not_bound() -> None:
    bound = {str(a) for a in load_config().bound_addresses()}
    assert "203.0.113.10" in bound
    assert "169.254.169.254" not in bound
    assert "10.1.2.3" not in bound
    assert "203.0.113.150" not in bound  # many.lab is DNS-only


def test_certificate_names_include_aliases_of_the_chain() -> None:
    c = load_config()
    example = c.host("example.com")
    assert example is not None
    assert sorted(c.names_for_host(example)) == [
        "cdn.example.com",
        "example.com",
        "www.example.com",
    ]


def test_names_are_normalised() -> None:
    c = parse_config({"hosts": [_host(name="API.Example.COM.")]})
    assert c.hosts[0].name == "api.example.com"
    assert c.host("Api.Example.Com.") is c.hosts[0]


def test_host_for_address_only_matches_served_hosts() -> None:
    c = load_config()
    assert c.host_for_address("203.0.113.51").name == "multi.lab"  # type: ignore[union-attr]
    assert c.host_for_address("169.254.169.254") is None
    assert c.host_for_address("not-an-ip") is None


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ([], "config"),
        ({"hostz": []}, "config"),
        ({"hosts": [_host(addresses=["999.1.1.1"])]}, "hosts[0].addresses[0]"),
        ({"hosts": [_host(addresses=[])]}, "hosts[0].addresses"),
        ({"hosts": [_host(name="bad name")]}, "hosts[0].name"),
        ({"hosts": [_host(name="-x.lab")]}, "hosts[0].name"),
        ({"hosts": [_host(http="yes")]}, "hosts[0].http"),
        ({"hosts": [_host(tcp_echo_ports=[0])]}, "hosts[0].tcp_echo_ports[0]"),
        ({"hosts": [_host(tcp_echo_ports=[80])]}, "hosts[0]"),
        ({"hosts": [_host(udp_echo_ports=[9, 9])]}, "hosts[0].udp_echo_ports"),
        ({"hosts": [_host(banner_ports={"25": "a\nb"})]}, "hosts[0].banner_ports.25"),
        ({"hosts": [_host(banner_ports={"x": "a"})]}, "hosts[0].banner_ports.x"),
        ({"hosts": [_host(colour="red")]}, "hosts[0]"),
        ({"hosts": [_host(addresses=["169.254.169.254"])]}, "hosts[0].addresses[0]"),
        ({"hosts": [_host(addresses=["10.0.0.1"])]}, "hosts[0].addresses[0]"),
        ({"hosts": [_host(addresses=["192.0.2.5"])]}, "hosts[0].addresses[0]"),
        ({"hosts": [_host(addresses=["198.51.100.53"])]}, "hosts[0].addresses[0]"),
        ({"hosts": [_host(addresses=["100.96.0.2"])]}, "hosts[0].addresses[0]"),
        ({"hosts": [_host(), _host()]}, "hosts[1].name"),
        ({"hosts": [_host(), _host(name="o.lab")]}, "hosts[1].addresses"),
        ({"hosts": [_host()], "cnames": {"h.lab": "x.lab"}}, "cnames.h.lab"),
        ({"cnames": {"a.lab": "b.lab", "b.lab": "a.lab"}}, "cnames.a.lab"),
        ({"cnames": ["a"]}, "cnames"),
        ({"hosts": [_host()], "ttl": {"h.lab": -1}}, "ttl.h.lab"),
        ({"hosts": [_host()], "ttl": {"other.lab": 5}}, "ttl.other.lab"),
        ({"default_ttl": True}, "default_ttl"),
        ({"txt": {"t.lab": ["x" * 256]}}, "txt.t.lab"),
        ({"txt": {"a.lab": "x"}, "cnames": {"a.lab": "b.lab"}}, "txt.a.lab"),
        ({"hosts": [_host(name="a.*.lab")]}, "hosts[0].name"),
        ({"hosts": [_host(name="*")]}, "hosts[0].name"),
        ({"hosts": [_host(name="*x.lab")]}, "hosts[0].name"),
        ({"cnames": {"*.a.lab": "b.lab"}}, "cnames.*.a.lab"),
        ({"txt": {"*.t.lab": "x"}}, "txt.*.t.lab"),
        ({"hosts": [_host(h2="yes")]}, "hosts[0].h2"),
        ({"hosts": [_host(h2=True)]}, "hosts[0].h2"),
        ({"hosts": [_host(https=True, cert_issuer="acme")]}, "hosts[0].cert_issuer"),
        ({"hosts": [_host(cert_issuer="self-signed")]}, "hosts[0].cert_issuer"),
        ({"hosts": [_host(https=True, cert_names="a.lab")]}, "hosts[0].cert_names"),
        ({"hosts": [_host(https=True, cert_names=["a b"])]}, "hosts[0].cert_names[0]"),
        ({"hosts": [_host(cert_names=["a.lab"])]}, "hosts[0].cert_names"),
    ],
)
def test_invalid_config_names_the_field(data: object, field: str) -> None:
    with pytest.raises(LabConfigError) as err:
        parse_config(data)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")


def test_dns_only_host_may_use_non_public_addresses() -> None:
    c = parse_config({"hosts": [{"name": "meta.lab", "addresses": ["169.254.169.254"]}]})
    assert c.hosts[0].addresses == (ipaddress.ip_address("169.254.169.254"),)
    assert not c.hosts[0].serves


def test_long_cname_chain_is_refused() -> None:
    cnames = {f"c{i}.lab": f"c{i + 1}.lab" for i in range(9)}
    with pytest.raises(LabConfigError, match="8 hops"):
        parse_config({"cnames": cnames})


def test_load_config_reports_bad_json_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(LabConfigError, match="invalid JSON"):
        load_config(bad)
    with pytest.raises(LabConfigError, match="cannot read"):
        load_config(tmp_path / "missing.json")
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"hosts": [_host()]}))
    assert load_config(good).hosts[0].name == "h.lab"


def test_default_config_has_a_served_wildcard_zone() -> None:
    c = load_config()
    wild = c.host("n123.wild.lab")
    assert wild is not None and wild.name == "*.wild.lab"
    assert [str(a) for a in wild.addresses] == ["203.0.113.70"] and wild.https
    assert c.host("a.b.wild.lab") is wild  # any depth below the zone
    assert c.host("wild.lab") is None  # the zone itself is not covered
    assert c.host_for_address("203.0.113.70") is wild
    assert "203.0.113.70" in {str(a) for a in c.bound_addresses()}
    assert c.names_for_host(wild) == ["*.wild.lab"]  # the certificate's SAN


def test_existing_names_and_closer_wildcards_win_over_a_wildcard() -> None:
    c = parse_config(
        {
            "hosts": [
                _host(name="*.z.lab", addresses=["203.0.113.91"]),
                _host(name="*.deep.z.lab", addresses=["203.0.113.92"]),
                _host(name="exact.z.lab", addresses=["203.0.113.93"]),
            ],
            "cnames": {"alias.z.lab": "exact.z.lab"},
            "txt": {"text.z.lab": "t"},
            "ttl": {"*.z.lab": 7},
        }
    )
    assert c.host("exact.z.lab").name == "exact.z.lab"  # type: ignore[union-attr]
    assert c.host("x.deep.z.lab").name == "*.deep.z.lab"  # type: ignore[union-attr]
    assert c.host("x.z.lab").name == "*.z.lab"  # type: ignore[union-attr]
    assert c.host("alias.z.lab") is None and c.host("text.z.lab") is None
    assert c.ttl_for("*.z.lab") == 7


def test_default_config_has_h2_and_bad_certificate_hosts() -> None:
    c = load_config()
    served = {h.name: h for h in c.hosts if h.serves}
    assert {n for n, h in served.items() if h.h2} == {"api.anthropic.com", "example.com"}
    assert not served["api.openai.com"].h2  # the h1-only side of h1<->h2 translation
    assert [str(a) for a in served["api.anthropic.com"].addresses] == ["203.0.113.11"]
    assert served["api.github.com"].https
    untrusted, wrongname = served["untrusted.example.net"], served["wrongname.example.net"]
    assert (untrusted.cert_issuer, [str(a) for a in untrusted.addresses]) == (
        "self-signed",
        ["203.0.113.80"],
    )
    assert c.certificate_names(untrusted) == ["untrusted.example.net"]
    assert (wrongname.cert_issuer, [str(a) for a in wrongname.addresses]) == (
        "lab",
        ["203.0.113.81"],
    )
    assert c.certificate_names(wrongname) == ["example.com"]
    assert c.names_for_host(wrongname) == ["wrongname.example.net"]  # SNI still picks it


def test_tls_keys_parse() -> None:
    c = parse_config(
        {"hosts": [_host(https=True, h2=True, cert_issuer="self-signed", cert_names=["X.lab"])]}
    )
    h = c.hosts[0]
    assert (h.h2, h.cert_issuer, h.cert_names) == (True, "self-signed", ("x.lab",))
    plain = parse_config({"hosts": [_host(https=True)]}).hosts[0]
    assert (plain.h2, plain.cert_issuer, plain.cert_names) == (False, "lab", ())
    assert parse_config({"hosts": [_host(h2=False)]}).hosts[0].h2 is False
