"""dnsfilter: query decisions and upstream-answer filtering, with dnslib-built messages."""

from __future__ import annotations

import ipaddress

import pytest
from dnslib import (
    AAAA,
    CNAME,
    EDNS0,
    QTYPE,
    RCODE,
    RR,
    TXT,
    A,
    DNSHeader,
    DNSLabel,
    DNSQuestion,
    DNSRecord,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from declawd.addresses import SINK_ADDRESS
from declawd.egress.dnsfilter import (
    Action,
    FloodMeter,
    build_answer,
    decide_query,
    encode,
    filter_answer,
    pack_answer,
    parse_upstream,
    upstream_query,
)
from declawd.egress.policy import EgressPolicy, is_non_public
from declawd.egress.resolved import ResolvedNames, admitted_lifetime

ENFORCED = EgressPolicy.parse(["api.openai.com", "*.example.org", "cname.example"], ["0.0.0.0/0"])
OPEN = EgressPolicy.parse([], [])
POOL = [ipaddress.ip_network("10.77.0.0/16")]


def query(name: str, qtype: str = "A", *, edns: int | None = None, qid: int = 4242) -> bytes:
    q = DNSRecord.question(name, qtype)
    q.header.id = qid
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns))
    return q.pack()


def reply_for(decision, records: list[RR], qid: int, rcode: int = RCODE.NOERROR) -> DNSRecord:
    """An upstream reply to what the resolver would send for `decision`."""
    sent = DNSRecord.parse(upstream_query(decision.name, decision.qtype, qid))
    r = DNSRecord(DNSHeader(id=qid, qr=1, ra=1, rcode=rcode), q=sent.q)
    for rr in records:
        r.add_answer(rr)
    return DNSRecord.parse(r.pack())


def addresses(record: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in record.rr if rr.rtype in (QTYPE.A, QTYPE.AAAA)]


# Query decisions -----------------------------------------------------------------------


def test_allowed_name_is_forwarded_case_and_trailing_dot_insensitive() -> None:
    d = decide_query(query("API.OpenAI.com."), ENFORCED)
    assert d.action is Action.FORWARD
    assert d.name == "api.openai.com"


@pytest.mark.parametrize("name", ["example.org", "a.example.org", "x.y.z.example.org"])
def test_wildcard_matches_apex_and_any_depth(name: str) -> None:
    assert decide_query(query(name), ENFORCED).action is Action.FORWARD


@pytest.mark.parametrize("name", ["evil.com", "api.openai.com.evil.com", "notexample.org"])
def test_denied_name_gets_sink_address_and_is_not_forwarded(name: str) -> None:
    d = decide_query(query(name), ENFORCED)
    assert d.action is Action.ANSWER
    assert d.response is not None
    assert d.response.header.rcode == RCODE.NOERROR
    assert addresses(d.response) == [SINK_ADDRESS]
    assert d.response.rr[0].ttl == 5
    assert d.audit is not None and (d.audit.verdict, d.audit.reason) == ("deny", "not_allowed")


def test_denied_name_aaaa_is_empty() -> None:
    d = decide_query(query("evil.com", "AAAA"), ENFORCED)
    assert d.action is Action.ANSWER and d.response is not None
    assert d.response.rr == [] and d.response.header.rcode == RCODE.NOERROR


@pytest.mark.parametrize("policy", [ENFORCED, OPEN])
def test_aaaa_answered_empty_without_forwarding(policy: EgressPolicy) -> None:
    d = decide_query(query("api.openai.com", "AAAA"), policy)
    assert d.action is Action.ANSWER and d.response is not None
    assert d.response.rr == [] and d.response.header.rcode == RCODE.NOERROR


@pytest.mark.parametrize("qtype", ["TXT", "NULL", "HTTPS", "SVCB", "MX", "SRV", "NS", "PTR"])
@pytest.mark.parametrize("policy", [ENFORCED, OPEN])
def test_other_qtypes_get_no_data_and_are_not_forwarded(qtype: str, policy) -> None:
    d = decide_query(query("api.openai.com", qtype), policy)
    assert d.action is Action.ANSWER and d.response is not None
    assert d.response.header.rcode == RCODE.NOERROR and d.response.rr == []
    assert d.audit is not None and d.audit.reason == "qtype_blocked"


@pytest.mark.parametrize("qtype", ["AXFR", "IXFR", "ANY"])
def test_zone_transfer_and_any_are_refused(qtype: str) -> None:
    d = decide_query(query("api.openai.com", qtype), OPEN)
    assert d.response is not None and d.response.header.rcode == RCODE.REFUSED


def test_unknown_source_is_refused() -> None:
    d = decide_query(query("api.openai.com"), None)
    assert d.response is not None and d.response.header.rcode == RCODE.REFUSED
    assert d.action is Action.ANSWER


def test_rate_limited_is_refused() -> None:
    d = decide_query(query("api.openai.com"), ENFORCED, rate_ok=False)
    assert d.response is not None and d.response.header.rcode == RCODE.REFUSED
    assert d.audit is not None and d.audit.reason == "rate_limited"


def test_name_over_253_chars_is_refused() -> None:
    labels = [b"a" * 63] * 4 + [b"org"]  # 259 characters: dnslib refuses to build it
    wire = b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"
    data = b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + wire + b"\x00\x01\x00\x01"
    d = decide_query(data, OPEN)
    assert d.response is not None and d.response.header.rcode == RCODE.REFUSED
    answer = DNSRecord.parse(encode(d.response, 512))  # must still be encodable
    assert answer.header.id == 7 and answer.header.rcode == RCODE.REFUSED


def test_label_over_63_is_formerr() -> None:
    raw = bytearray(query("a" * 63 + ".example.org"))
    raw[12] = 70  # claim a 70-byte first label, then supply the bytes
    data = bytes(raw[:13]) + b"b" * 70 + bytes(raw[13 + 63 :])
    d = decide_query(data, OPEN)
    assert d.response is not None and d.response.header.rcode == RCODE.FORMERR


def test_label_with_dot_byte_is_refused_not_matched() -> None:
    # One label "api.openai" + "com": textually api.openai.com, on the wire a different name.
    q = DNSRecord(DNSHeader(id=7, rd=1))
    q.add_question(DNSQuestion(DNSLabel([b"api.openai", b"com"]), QTYPE.A))
    d = decide_query(q.pack(), ENFORCED)
    assert d.action is Action.ANSWER and d.response is not None
    assert d.response.header.rcode == RCODE.REFUSED


def test_garbage_and_responses_are_dropped_or_formerr() -> None:
    assert decide_query(b"\x00\x01", OPEN).action is Action.DROP
    resp = DNSRecord.question("a.com").reply().pack()
    assert decide_query(resp, OPEN).action is Action.DROP
    d = decide_query(b"\x12\x34\x01\x00\x00\x01" + b"\xff" * 20, OPEN)
    assert d.action is Action.ANSWER and d.response is not None
    assert d.response.header.id == 0x1234 and d.response.header.rcode == RCODE.FORMERR


def test_upstream_query_carries_only_the_question() -> None:
    client = DNSRecord.question("api.openai.com")
    client.add_ar(RR("x.evil.com", QTYPE.TXT, rdata=TXT("secret")))
    d = decide_query(client.pack(), ENFORCED)
    sent = DNSRecord.parse(upstream_query(d.name, d.qtype, 99))
    assert sent.header.id == 99 and str(sent.q.qname) == "api.openai.com."
    assert [rr.rtype for rr in sent.ar] == [QTYPE.OPT]
    assert sent.rr == [] and sent.auth == []


# Upstream answers ----------------------------------------------------------------------


def test_answer_addresses_admitted_and_ttl_kept() -> None:
    d = decide_query(query("api.openai.com"), ENFORCED)
    r = reply_for(d, [RR("api.openai.com", QTYPE.A, ttl=120, rdata=A("203.0.113.10"))], 5)
    f = filter_answer(d, r, extra_ranges=POOL)
    assert addresses(f.response) == ["203.0.113.10"]
    assert f.admit == {"203.0.113.10": 120.0}
    assert f.response.header.id == 4242
    assert f.audit is not None and f.audit.reason == "allowed"


def test_cname_chain_followed_and_every_name_recorded() -> None:
    d = decide_query(query("cname.example"), ENFORCED)
    r = reply_for(
        d,
        [
            RR("cname.example", QTYPE.CNAME, ttl=300, rdata=CNAME("edge.cdn.net")),
            RR("edge.cdn.net", QTYPE.CNAME, ttl=60, rdata=CNAME("api.openai.com")),
            RR("api.openai.com", QTYPE.A, ttl=120, rdata=A("203.0.113.10")),
            RR("unrelated.com", QTYPE.A, ttl=120, rdata=A("203.0.113.99")),
        ],
        5,
    )
    f = filter_answer(d, r, extra_ranges=POOL)
    assert f.names == ["cname.example", "edge.cdn.net", "api.openai.com"]
    assert addresses(f.response) == ["203.0.113.10"]
    assert f.ttl == 60  # the weakest link of the chain
    assert all(rr.ttl == 60 for rr in f.response.rr)


def test_cname_loop_terminates() -> None:
    d = decide_query(query("cname.example"), ENFORCED)
    r = reply_for(
        d,
        [
            RR("cname.example", QTYPE.CNAME, rdata=CNAME("b.example")),
            RR("b.example", QTYPE.CNAME, rdata=CNAME("cname.example")),
        ],
        5,
    )
    f = filter_answer(d, r)
    assert f.admit == {}


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.5",
        "127.0.0.1",
        "169.254.169.254",
        "100.64.1.1",
        "172.16.0.1",
        "192.168.1.1",
        "0.1.2.3",
        "224.0.0.1",
        "240.0.0.1",
        "198.18.0.1",
        "198.19.255.1",
    ],
)
def test_non_public_addresses_stripped(address: str) -> None:
    d = decide_query(query("api.openai.com"), ENFORCED)
    r = reply_for(
        d,
        [
            RR("api.openai.com", QTYPE.A, rdata=A(address)),
            RR("api.openai.com", QTYPE.A, rdata=A("203.0.113.10")),
        ],
        5,
    )
    f = filter_answer(d, r, extra_ranges=POOL)
    assert addresses(f.response) == ["203.0.113.10"]
    assert address not in f.admit
    assert f.audit is not None and f.audit.reason == "non_public_stripped"


def test_aaaa_records_in_an_a_answer_never_pass() -> None:
    # Includes the IPv4-embedding forms: an upstream must not smuggle them in via AAAA.
    d = decide_query(query("api.openai.com"), ENFORCED)
    r = reply_for(
        d,
        [
            RR("api.openai.com", QTYPE.AAAA, rdata=AAAA("::ffff:a00:1")),
            RR("api.openai.com", QTYPE.AAAA, rdata=AAAA("64:ff9b::a00:1")),
            RR("api.openai.com", QTYPE.AAAA, rdata=AAAA("2002:a00:1::")),
        ],
        5,
    )
    f = filter_answer(d, r)
    assert addresses(f.response) == [] and f.admit == {}


def test_pool_addresses_are_floor() -> None:
    d = decide_query(query("api.openai.com"), OPEN)
    r = reply_for(d, [RR("api.openai.com", QTYPE.A, rdata=A("10.77.0.6"))], 5)
    assert filter_answer(d, r, extra_ranges=POOL).admit == {}


def test_open_policy_answer_still_floor_filtered() -> None:
    d = decide_query(query("internal.example"), OPEN)
    assert d.action is Action.FORWARD
    r = reply_for(d, [RR("internal.example", QTYPE.A, rdata=A("10.0.0.5"))], 5)
    f = filter_answer(d, r)
    assert addresses(f.response) == []


def test_upstream_errors_become_servfail_and_nxdomain_passes() -> None:
    d = decide_query(query("api.openai.com"), ENFORCED)
    f = filter_answer(d, reply_for(d, [], 5, rcode=RCODE.REFUSED))
    assert f.response.header.rcode == RCODE.SERVFAIL
    f = filter_answer(d, reply_for(d, [], 5, rcode=RCODE.NXDOMAIN))
    assert f.response.header.rcode == RCODE.NXDOMAIN


def test_upstream_reply_must_match_id_and_question() -> None:
    d = decide_query(query("api.openai.com"), ENFORCED)
    good = reply_for(d, [RR("api.openai.com", QTYPE.A, rdata=A("203.0.113.10"))], 77).pack()
    assert parse_upstream(good, 77, "api.openai.com", QTYPE.A) is not None
    assert parse_upstream(good, 78, "api.openai.com", QTYPE.A) is None
    assert parse_upstream(good, 77, "evil.com", QTYPE.A) is None
    assert parse_upstream(good, 77, "api.openai.com", QTYPE.CNAME) is None
    assert parse_upstream(query("api.openai.com", qid=77), 77, "api.openai.com", 1) is None


def test_large_udp_answer_truncated_and_tcp_not() -> None:
    d = decide_query(query("api.openai.com"), ENFORCED)
    many = [RR("api.openai.com", QTYPE.A, rdata=A(f"203.0.113.{i}")) for i in range(1, 60)]
    f = filter_answer(d, reply_for(d, many, 5))
    udp = DNSRecord.parse(encode(f.response, d.client_limit))
    assert udp.header.tc == 1 and udp.rr == []
    assert len(encode(f.response, d.client_limit)) <= 512
    tcp = DNSRecord.parse(encode(f.response, None))
    assert tcp.header.tc == 0 and len(tcp.rr) == 59


def test_edns_raises_the_udp_limit() -> None:
    d = decide_query(query("api.openai.com", edns=4096), ENFORCED)
    assert d.client_limit == 4096
    many = [RR("api.openai.com", QTYPE.A, rdata=A(f"203.0.113.{i}")) for i in range(1, 60)]
    f = filter_answer(d, reply_for(d, many, 5))
    assert DNSRecord.parse(encode(f.response, d.client_limit)).header.tc == 0


def test_flood_meter_lets_bursts_through_and_refuses_only_beyond_the_window_budget() -> None:
    meter = FloodMeter(qps=2000, window_s=5, now=0.0)
    # 10 000 at once is still within 2000/s over 5 s; the next one is not.
    assert sum(meter.take(0.0) for _ in range(10_000)) == 10_000
    assert meter.take(0.0) is False
    assert meter.take(4.9) is False  # still inside the window
    # At 5 s the first 0.5 s bin leaves the window: room again.
    assert meter.take(5.0) is True


def test_flood_meter_counts_only_the_last_window() -> None:
    meter = FloodMeter(qps=10, window_s=1, now=0.0)  # 10 per second, bins of 0.1 s
    assert sum(meter.take(0.05) for _ in range(6)) == 6
    assert sum(meter.take(0.55) for _ in range(10)) == 4
    assert sum(meter.take(1.05) for _ in range(10)) == 6  # the 6 of the first bin left
    assert sum(meter.take(100.0) for _ in range(20)) == 10  # a long pause empties every bin


def test_flood_meter_refuses_a_bad_limit() -> None:
    with pytest.raises(ValueError, match="positive"):
        FloodMeter(qps=0, window_s=5, now=0.0)


def test_build_answer_rebuilds_chain_with_the_clients_spelling() -> None:
    request = DNSRecord.parse(query("CnAmE.Example"))
    answer = build_answer(request, 0, ["cname.example", "api.openai.com"], ["203.0.113.10"], 7)
    assert answer.header.id == 4242 and answer.header.rcode == 0
    assert [(str(rr.rname), QTYPE[rr.rtype], str(rr.rdata), rr.ttl) for rr in answer.rr] == [
        ("CnAmE.Example.", "CNAME", "api.openai.com.", 7),
        ("api.openai.com.", "A", "203.0.113.10", 7),
    ]


def test_resolved_names_expire_after_clamped_ttl_plus_grace() -> None:
    now = [0.0]
    names = ResolvedNames(clock=lambda: now[0])
    names.record("sbx-1", "API.openai.com.", ["203.0.113.10"], ttl_s=1)
    assert names.resolved_for("sbx-1", "api.openai.com", "203.0.113.10")
    assert not names.resolved_for("sbx-2", "api.openai.com", "203.0.113.10")
    assert names.any_allowed_name_for("sbx-1", "203.0.113.10") == "api.openai.com"
    assert names.any_allowed_name_for("sbx-1", "203.0.113.10", lambda n: False) is None
    now[0] = admitted_lifetime(1) - 0.1
    assert names.resolved_for("sbx-1", "api.openai.com", "203.0.113.10")
    now[0] = admitted_lifetime(1) + 0.1
    assert not names.resolved_for("sbx-1", "api.openai.com", "203.0.113.10")
    assert admitted_lifetime(10**6) == 3600 + 30


def test_resolved_names_remaining_for_reports_the_latest_live_pair_of_each_address() -> None:
    now = [0.0]
    names = ResolvedNames(clock=lambda: now[0])
    names.record("sbx-1", "a.lab", ["203.0.113.1", "203.0.113.2"], ttl_s=60)
    names.record("sbx-1", "b.lab", ["203.0.113.1"], ttl_s=600)
    now[0] = 10.0
    assert names.remaining_for("sbx-1", ["203.0.113.1", "203.0.113.2", "203.0.113.3"]) == {
        "203.0.113.1": 620.0,
        "203.0.113.2": 80.0,
    }
    assert names.remaining_for("sbx-2", ["203.0.113.1"]) == {}
    now[0] = 91.0
    assert names.remaining_for("sbx-1", ["203.0.113.2"]) == {}
    # A policy that drops the longer-lived name: the address's latest expiry is a's again.
    names.record("sbx-1", "a.lab", ["203.0.113.1"], ttl_s=60)  # until 91 + 90
    names.retain("sbx-1", lambda n: n != "b.lab")
    assert names.remaining_for("sbx-1", ["203.0.113.1"]) == {"203.0.113.1": 90.0}
    assert names.remaining("sbx-1") == {"203.0.113.1": 90.0}
    names.forget("sbx-1")
    assert names.remaining_for("sbx-1", ["203.0.113.1"]) == {} and names.remaining("sbx-1") == {}


def test_resolved_names_stay_bounded_per_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("declawd.egress.resolved.MAX_PAIRS_PER_SANDBOX", 10)
    now = [0.0]
    names = ResolvedNames(clock=lambda: now[0])
    for i in range(11):
        now[0] = float(i)
        names.record("sbx-1", f"n{i}.lab", ["203.0.113.1"], ttl_s=60)
    # Over the bound: the newest half is kept.
    kept = [i for i in range(11) if names.resolved_for("sbx-1", f"n{i}.lab", "203.0.113.1")]
    assert kept == [6, 7, 8, 9, 10]
    names.record("sbx-1", "n10.lab", ["203.0.113.1"], ttl_s=60)  # known pair: no new count
    names.record("sbx-1", "x.lab", ["203.0.113.1"], ttl_s=60)
    assert names.any_allowed_name_for("sbx-1", "203.0.113.1") == "n10.lab"
    assert names.resolved_for("sbx-1", "n6.lab", "203.0.113.1")


# Fuzzing -------------------------------------------------------------------------------

_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
_name = st.lists(_label, min_size=1, max_size=5).map(".".join)
_qtype = st.sampled_from(["A", "AAAA", "CNAME", "TXT", "ANY", "MX", "NULL", "HTTPS", "AXFR"])
_ip = st.integers(min_value=0, max_value=2**32 - 1).map(lambda i: str(ipaddress.IPv4Address(i)))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_never_crash(data: bytes) -> None:
    for policy in (ENFORCED, OPEN, None):
        d = decide_query(data, policy)
        if d.response is not None:
            encode(d.response, 512)
        # Garbage is never forwarded upstream.
        if d.action is Action.FORWARD:
            assert d.request is not None and len(d.request.questions) == 1


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_name, _qtype, st.lists(_ip, max_size=6), st.integers(0, 2**31 - 1))
def test_fuzz_denied_names_never_get_real_addresses(
    name: str, qtype: str, upstream_ips: list[str], ttl: int
) -> None:
    d = decide_query(query(name, qtype), ENFORCED)
    if ENFORCED.name_allowed(name):
        if d.action is Action.FORWARD:
            rrs = [RR(name, QTYPE.A, ttl=ttl, rdata=A(ip)) for ip in upstream_ips]
            f = filter_answer(d, reply_for(d, rrs, 1), extra_ranges=POOL)
            for ip in addresses(f.response):
                assert not is_non_public(ip, POOL)
            assert all(rr.ttl <= 3600 for rr in f.response.rr)
        return
    assert d.action is Action.ANSWER and d.response is not None
    assert set(addresses(d.response)) <= {SINK_ADDRESS}


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=12, max_size=300), _name)
def test_fuzz_random_upstream_bytes_never_crash(data: bytes, name: str) -> None:
    d = decide_query(query(name + ".example.org"), ENFORCED)
    assert d.action is Action.FORWARD
    qid = int.from_bytes(data[:2], "big")
    reply = parse_upstream(data, qid, d.name, d.qtype)
    if reply is not None:
        f = filter_answer(d, reply, extra_ranges=POOL)
        encode(f.response, 512)


_owner = st.sampled_from(["api.openai.com", "cdn.net", "x.cdn.net", "evil.com"])
_rr = st.one_of(
    st.builds(
        lambda o, ip, t: RR(o, QTYPE.A, ttl=t, rdata=A(ip)), _owner, _ip, st.integers(0, 2**31 - 1)
    ),
    st.builds(lambda o, tgt: RR(o, QTYPE.CNAME, rdata=CNAME(tgt)), _owner, _owner),
    st.builds(lambda o: RR(o, QTYPE.AAAA, rdata=AAAA("2001:db8::1")), _owner),
    st.builds(lambda o, t: RR(o, QTYPE.TXT, rdata=TXT(t)), _owner, st.text(max_size=30)),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_rr, max_size=12), st.sampled_from([RCODE.NOERROR, RCODE.NXDOMAIN, RCODE.SERVFAIL]))
def test_fuzz_wellformed_upstream_replies_only_public_a_records(rrs: list[RR], rcode: int) -> None:
    d = decide_query(query("api.openai.com"), ENFORCED)
    f = filter_answer(d, reply_for(d, rrs, 9, rcode), extra_ranges=POOL)
    out = DNSRecord.parse(encode(f.response, None))
    assert {rr.rtype for rr in out.rr} <= {QTYPE.A, QTYPE.CNAME}
    for ip in addresses(out):
        assert not is_non_public(ip, POOL) and ip in f.admit
    assert out.auth == [] and all(rr.rtype == QTYPE.OPT for rr in out.ar)


@pytest.mark.parametrize("name", ["api.openai.com", "a-b_c.x.lab", "x" * 63 + ".lab"])
def test_hand_packed_upstream_query_is_what_dnslib_would_send(name: str) -> None:
    built = DNSRecord(DNSHeader(id=777, rd=1), q=None)
    built.add_question(DNSQuestion(name, QTYPE.CNAME))
    built.add_ar(EDNS0(udp_len=1232))
    assert upstream_query(name, QTYPE.CNAME, 777) == built.pack()


@pytest.mark.parametrize("edns", [None, 1232])
@pytest.mark.parametrize(
    ("chain", "addresses"),
    [
        (["api.openai.com"], ["203.0.113.10"]),
        (["api.openai.com"], []),
        (["cname.example", "a.example.org", "api.openai.com"], ["203.0.113.10", "198.51.100.7"]),
        (["api.openai.com"], [f"203.0.113.{i}" for i in range(1, 60)]),  # truncated over UDP
    ],
)
@pytest.mark.parametrize("limit", [512, None])
def test_hand_packed_answer_means_what_the_dnslib_one_says(
    edns: int | None, chain: list[str], addresses: list[str], limit: int | None
) -> None:
    request = DNSRecord.parse(query("ApI.OpenAI.com", edns=edns))
    request.q.qname = DNSLabel(chain[0].upper())  # the client's own spelling is kept
    request.header.rd = 0
    ours = pack_answer(request, RCODE.NXDOMAIN, chain, addresses, 42, limit)
    theirs = encode(build_answer(request, RCODE.NXDOMAIN, chain, addresses, 42), limit)
    mine, ref = DNSRecord.parse(ours), DNSRecord.parse(theirs)
    assert str(mine.header) == str(ref.header)
    assert [str(x) for x in mine.questions] == [str(x) for x in ref.questions]
    assert [str(x) for x in mine.rr] == [str(x) for x in ref.rr]
    assert [str(x) for x in mine.ar] == [str(x) for x in ref.ar]
    assert len(ours) <= len(theirs)
