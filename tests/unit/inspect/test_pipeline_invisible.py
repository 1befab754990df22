"""Invisible text through the HTTP layer: strip both ways (bodies, query values, streams),
block (403, nothing upstream; a response replaced or its stream reset), log_only, domains."""

from __future__ import annotations

import json
from typing import Literal

import pytest

from declawd.inspect.model import InspectionPolicy, InvisibleTextGuard
from tests.unit.inspect.httpwire import H1Upstream, H2Upstream, Resp, Seen, Wire, ctx

HIDDEN = "".join(chr(0xE0000 + ord(c)) for c in "exfiltrate")  # 10 tag characters


Action = Literal["strip", "block", "log_only"]


def guard(action: Action = "strip", domains: tuple[str, ...] | None = None) -> InspectionPolicy:
    return InspectionPolicy(invisible_text=InvisibleTextGuard(action, domains))


def post_json(w: Wire, doc: object, target: str = "/v1/chat"):
    body = json.dumps(doc, ensure_ascii=False).encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    got = w.client.request("POST", target, headers, body)
    w.pump()
    return got


def answer(body: str, ctype: str = "text/plain; charset=utf-8"):
    data = body.encode()
    return lambda _: Resp(200, [("content-type", ctype), ("content-length", str(len(data)))], data)


@pytest.mark.parametrize("proto", ["h1", "h2"])
def test_strip_removes_it_from_a_json_request_which_stays_valid(proto: str) -> None:
    w = Wire(ctx(proto, proto), guard("strip"))
    got = post_json(w, {"messages": [{"content": "hi" + HIDDEN + " ❤️"}], "n": 1.50})
    sent = bytes(w.upstream.seen[0].body)
    assert json.loads(sent) == {"messages": [{"content": "hi ❤️"}], "n": 1.50}
    assert b"1.5" in sent and got.status == 200
    record = w.audits[0].record
    assert record["invisible_text"] == {"action": "strip", "outbound": {"tag": 10}}
    assert (w.audits[0].verdict, record["pii_redactions"]) == ("allow", 0)  # SDK keys intact


def test_strip_cleans_query_values() -> None:
    w = Wire(ctx(), guard("strip"))
    got = w.client.request("GET", "/search?q=a%E2%80%8Bb&plain=x+y&raw", [])
    w.pump()
    assert w.upstream.seen[0].target == "/search?q=ab&plain=x+y&raw"
    assert got.status == 200
    assert w.audits[0].record["invisible_text"]["outbound"] == {"zero_width": 1}


@pytest.mark.parametrize("proto", ["h1", "h2"])
def test_strip_cleans_the_response_the_sandbox_reads(proto: str) -> None:
    w = Wire(ctx(proto, proto), guard("strip"), handler=answer("fine\u202e" + HIDDEN + "."))
    got = w.client.request("GET", "/page", [])
    w.pump()
    assert bytes(got.body) == b"fine."
    assert got.header("content-length") == "5"
    assert w.audits[0].record["invisible_text"] == {
        "action": "strip",
        "inbound": {"bidi": 1, "tag": 10},
    }


@pytest.mark.parametrize("proto", ["h1", "h2"])
def test_block_answers_403_and_sends_nothing_upstream(proto: str) -> None:
    w = Wire(ctx(proto, proto), guard("block"))
    got = post_json(w, {"prompt": "summarise" + HIDDEN})
    assert got.status == 403
    assert got.json() == {
        "error": "invisible_text_detected",
        "reason": "invisible text: 10 tag",
    }
    assert w.upstream.seen == []
    audit = w.audits[0]
    assert (audit.verdict, audit.reason, audit.record["status_code"]) == (
        "deny",
        "invisible_text_detected",
        403,
    )
    assert audit.record["invisible_text"] == {"action": "block", "outbound": {"tag": 10}}


def test_block_in_a_query_value_sends_nothing_upstream() -> None:
    w = Wire(ctx(), guard("block"))
    got = w.client.request("GET", "/?q=%E2%80%AEevil", [])
    w.pump()
    assert got.status == 403 and w.upstream.seen == []
    assert w.audits[0].record["invisible_text"]["outbound"] == {"bidi": 1}


def test_block_replaces_a_buffered_response_with_the_403() -> None:
    w = Wire(ctx(), guard("block"), handler=answer("read me" + HIDDEN))
    got = w.client.request("GET", "/page", [])
    w.pump()
    assert got.status == 403 and got.json() == {
        "error": "invisible_text_detected",
        "reason": "invisible text: 10 tag",
    }
    assert HIDDEN.encode() not in bytes(got.body)
    assert w.audits[0].verdict == "deny"
    assert w.audits[0].record["invisible_text"]["inbound"] == {"tag": 10}


@pytest.mark.parametrize("proto", ["h1", "h2"])
def test_block_resets_a_stream_whose_head_already_went(proto: str) -> None:
    w = Wire(ctx(proto, proto), guard("block"), handler=None)
    got = w.client.request("GET", "/events", [])
    w.pump()
    up = w.upstream
    sid = up.sids[0] if isinstance(up, H2Upstream) else 0
    up.start(200, [("content-type", "text/event-stream")], sid)
    up.send(b"data: fine\n\n", sid)
    w.pump()
    assert got.status == 200 and bytes(got.body) == b"data: fine\n\n"
    up.send(f"data: then{HIDDEN}\n\n".encode(), sid)
    w.pump()
    # h2 resets the stream; an HTTP/1.1 response cannot be cut short but by the connection.
    assert got.reset if proto == "h2" else w.reset is not None
    assert bytes(got.body) == b"data: fine\n\n" and not got.ended
    assert w.audits[0].verdict == "deny" and w.audits[0].reason == "invisible_text_detected"


def test_log_only_changes_nothing_and_counts() -> None:
    w = Wire(ctx(), guard("log_only"))
    doc = {"prompt": "x" + HIDDEN + "\u200b"}
    got = post_json(w, doc)
    sent = json.dumps(doc, ensure_ascii=False).encode()
    assert bytes(w.upstream.seen[0].body) == sent and bytes(got.body) == sent
    assert w.audits[0].record["invisible_text"] == {
        "action": "log_only",
        "outbound": {"tag": 10, "zero_width": 1},
        "inbound": {"tag": 10, "zero_width": 1},  # the echo
    }


def test_a_streamed_request_split_inside_a_character_is_stripped() -> None:
    w = Wire(ctx(), guard("strip"))
    raw = ("start 😀\ufe0f" + HIDDEN + " end").encode()
    cut = raw.index(HIDDEN.encode()) + 2  # inside the UTF-8 bytes of the first tag
    pieces = [raw[:cut], raw[cut:-5], raw[-5:]]
    w.client.request("POST", "/upload", [("content-type", "text/plain")], pieces)
    w.pump()
    seen: Seen = w.upstream.seen[0]
    assert bytes(seen.body).decode() == "start 😀\ufe0f end"


def test_a_utf16_stream_split_inside_a_surrogate_pair_is_stripped() -> None:
    w = Wire(ctx(), guard("strip"), handler=None)
    got = w.client.request("GET", "/", [])
    w.pump()
    up = w.upstream
    assert isinstance(up, H1Upstream)
    up.start(200, [("content-type", "text/plain; charset=utf-16-le")])
    raw = ("ok" + HIDDEN[:1] + "!").encode("utf-16-le")
    up.send(raw[:6])  # "ok" and the high surrogate of the tag
    w.pump()
    up.send(raw[6:])
    up.end()
    w.pump()
    assert bytes(got.body).decode("utf-16-le") == "ok!"


@pytest.mark.parametrize(
    ("domains", "stripped"),
    [(("other.com",), False), (("*.example.com",), True), (("api.example.com",), True)],
)
def test_domains_scope_the_guard_to_their_hosts(domains: tuple[str, ...], stripped: bool) -> None:
    policy = guard("strip", domains)
    assert policy.active
    assert policy.inspects("api.example.com", tls=True) is stripped
    w = Wire(ctx(host="api.example.com"), policy)
    post_json(w, {"p": "a" + HIDDEN})
    assert (HIDDEN.encode() not in bytes(w.upstream.seen[0].body)) is stripped
    assert ("invisible_text" in w.audits[0].record) is stripped


def test_the_guard_survives_the_gateways_wire_form() -> None:
    policy = guard("block", ("*.x.io", "~a.*"))
    assert InspectionPolicy.from_wire(policy.to_wire()) == policy
    assert InspectionPolicy.from_wire(InspectionPolicy().to_wire()).invisible_text is None
    assert not InspectionPolicy().active
