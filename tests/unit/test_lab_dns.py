"""The lab's authoritative answers, computed without a network."""

from __future__ import annotations

import json
from pathlib import Path

from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from declawd.lab.config import load_config
from declawd.lab.dns import DnsServer, answer, handle_wire
from declawd.lab.querylog import QueryLog, read

CONFIG = load_config()


def _ask(name: str, qtype: str = "A") -> DNSRecord:
    return answer(CONFIG, DNSRecord.question(name, qtype))


def _rdata(reply: DNSRecord, rtype: str) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr if QTYPE.get(rr.rtype) == rtype]


def test_a_record_is_authoritative_with_configured_ttl() -> None:
    r = _ask("api.openai.com")
    assert r.header.rcode == RCODE.NOERROR and r.header.aa == 1
    assert _rdata(r, "A") == ["203.0.113.10"]
    assert r.rr[0].ttl == 60
    assert _ask("shortttl.lab").rr[0].ttl == 2


def test_names_match_case_insensitively() -> None:
    assert _rdata(_ask("API.OpenAI.com."), "A") == ["203.0.113.10"]


def test_multiple_addresses() -> None:
    assert sorted(_rdata(_ask("multi.lab"), "A")) == ["203.0.113.50", "203.0.113.51"]


def test_cname_chain_includes_every_link_and_final_address() -> None:
    r = _ask("cdn.example.com")
    assert _rdata(r, "CNAME") == ["www.example.com.", "example.com."]
    assert _rdata(r, "A") == ["203.0.113.20"]
    assert r.header.rcode == RCODE.NOERROR


def test_cname_query_returns_only_the_first_link() -> None:
    r = _ask("cdn.example.com", "CNAME")
    assert _rdata(r, "CNAME") == ["www.example.com."]
    assert _rdata(r, "A") == []


def test_dangling_cname_is_nxdomain_with_the_chain() -> None:
    r = _ask("dangling.lab")
    assert r.header.rcode == RCODE.NXDOMAIN
    assert _rdata(r, "CNAME") == ["nowhere.lab."]


def test_wildcard_zone_answers_every_name_below_it_under_the_name_asked() -> None:
    for name in ("n1.wild.lab", "N2.Wild.Lab", "a.b.wild.lab"):
        r = _ask(name)
        assert r.header.rcode == RCODE.NOERROR and r.header.aa == 1
        assert [(str(rr.rname), str(rr.rdata), rr.ttl) for rr in r.rr] == [
            (name.lower() + ".", "203.0.113.70", 60)
        ]
    assert _ask("n1.wild.lab", "AAAA").rr == []
    assert _ask("wild.lab").header.rcode == RCODE.NXDOMAIN


def test_unknown_name_is_nxdomain() -> None:
    r = _ask("nothing-here.example")
    assert r.header.rcode == RCODE.NXDOMAIN and not r.rr


def test_aaaa_without_v6_addresses_is_empty_noerror() -> None:
    r = _ask("api.openai.com", "AAAA")
    assert r.header.rcode == RCODE.NOERROR and not r.rr
    assert _rdata(_ask("v6.lab", "AAAA"), "AAAA") == ["2001:db8::60"]


def test_txt_record_and_empty_a_for_txt_only_name() -> None:
    assert _rdata(_ask("txt.lab", "TXT"), "TXT") == ['"lab-secret"']
    r = _ask("txt.lab", "A")
    assert r.header.rcode == RCODE.NOERROR and not r.rr


def test_non_public_answers_are_served_as_configured() -> None:
    # The lab hands them out; stripping them is the resolver's job.
    assert _rdata(_ask("metadata.lab"), "A") == ["169.254.169.254"]
    assert _rdata(_ask("rebind.lab"), "A") == ["169.254.169.254"]


def test_axfr_is_refused_and_other_opcodes_not_implemented() -> None:
    assert _ask("api.openai.com", "AXFR").header.rcode == RCODE.REFUSED
    q = DNSRecord.question("api.openai.com")
    q.header.opcode = 2
    assert answer(CONFIG, q).header.rcode == RCODE.NOTIMP


def test_large_udp_answer_is_truncated_but_complete_over_tcp() -> None:
    q = DNSRecord.question("many.lab")
    udp, _ = handle_wire(CONFIG, q.pack(), udp=True)
    tcp, _ = handle_wire(CONFIG, q.pack(), udp=False)
    assert udp is not None and tcp is not None
    short, full = DNSRecord.parse(udp), DNSRecord.parse(tcp)
    assert short.header.tc == 1 and not short.rr
    assert short.q.qname == q.q.qname
    assert full.header.tc == 0 and len(full.rr) == 100


def test_edns_payload_size_allows_bigger_udp_answers() -> None:
    q = DNSRecord.question("many.lab")
    q.add_ar(EDNS0(udp_len=4096))
    udp, _ = handle_wire(CONFIG, q.pack(), udp=True)
    assert udp is not None and len(DNSRecord.parse(udp).rr) == 100


def test_garbage_and_responses_get_no_reply() -> None:
    assert handle_wire(CONFIG, b"\x01\x02garbage", udp=True) == (None, None)
    response = _ask("api.openai.com").pack()
    assert handle_wire(CONFIG, response, udp=True) == (None, None)


def test_every_query_is_logged_before_the_answer(tmp_path: Path) -> None:
    log = QueryLog(tmp_path / "lab" / "query.log")
    server = DnsServer(CONFIG, log, "127.0.0.1")
    wire = server.respond(
        DNSRecord.question("evil.com", "TXT").pack(), client="1.2.3.4", transport="udp"
    )
    assert wire is not None
    server.respond(DNSRecord.question("nope.lab").pack(), client="1.2.3.4", transport="tcp")
    server.respond(b"junk", client="1.2.3.4", transport="udp")
    lines = [json.loads(x) for x in (tmp_path / "lab" / "query.log").read_text().splitlines()]
    assert [(e["name"], e["type"], e["rcode"], e["transport"]) for e in lines] == [
        ("evil.com", "TXT", "NOERROR", "udp"),
        ("nope.lab", "A", "NXDOMAIN", "tcp"),
    ]
    assert lines[0]["client"] == "1.2.3.4" and isinstance(lines[0]["time"], float)
    log.close()


def test_read_filters_by_time(tmp_path: Path) -> None:
    from declawd.config import Settings

    settings = Settings(state_dir=tmp_path)
    settings.lab_dir.mkdir()
    entries = [{"time": 10.0, "name": "a"}, {"time": 20.0, "name": "b"}]
    text = "\n".join(json.dumps(e) for e in entries) + '\n{"time": 3'  # torn last line
    (settings.lab_dir / "query.log").write_text(text)
    assert [e["name"] for e in read(settings)] == ["a", "b"]
    assert [e["name"] for e in read(settings, since=15.0)] == ["b"]
    assert read(Settings(state_dir=tmp_path / "none")) == []


def test_wildcard_answers_take_the_wildcards_ttl() -> None:
    from declawd.lab.config import parse_config

    host = {"name": "*.z.lab", "addresses": ["203.0.113.91"]}
    config = parse_config({"hosts": [host], "ttl": {"*.z.lab": 7}})
    r = answer(config, DNSRecord.question("x.z.lab"))
    assert [(str(rr.rdata), rr.ttl) for rr in r.rr] == [("203.0.113.91", 7)]
