"""HttpInspector between real h11/h2 ends: translation, concurrency, flow control, errors,
tunnels, connection lifetime and the audit record."""

from __future__ import annotations

import json

import h2.connection
import h2.events
import h11
import pytest

from declawd.inspect.exchange import HIGH_WATER
from declawd.inspect.http import HttpInspector
from declawd.inspect.http2 import STREAM_WINDOW
from declawd.inspect.model import (
    CloseClient,
    CloseUpstream,
    HttpAudit,
    InspectionPolicy,
    ResetBoth,
    ToClient,
    ToUpstream,
    TransformRule,
)
from tests.unit.inspect.httpwire import (
    Got,
    H1Sandbox,
    H2Sandbox,
    H2Upstream,
    Resp,
    Secrets,
    Seen,
    Wire,
    ctx,
)

PAIRS = [("h1", "h1"), ("h2", "h2"), ("h2", "h1"), ("h1", "h2")]
POLICY = InspectionPolicy(transformations=(TransformRule("alice", "bob", "both"),))
AUDIT_KEYS = {
    "timestamp",
    "method",
    "url",
    "status_code",
    "direction",
    "pii_redactions",
    "injection_blocks",
    "transformations_applied",
    "vault_injections",
    "bytes_out",
    "bytes_in",
    "host",
}


def json_post(w: Wire, payload: object, target: str = "/v1/chat"):
    body = json.dumps(payload).encode()
    return w.client.request(
        "POST",
        target,
        [("content-type", "application/json"), ("content-length", str(len(body)))],
        body,
    )


@pytest.mark.parametrize("client,upstream", PAIRS)
def test_json_is_rewritten_both_ways_across_protocols(client: str, upstream: str) -> None:
    def answer(seen: Seen) -> Resp:
        body = json.dumps({"got": json.loads(bytes(seen.body)), "from": "alice"}).encode()
        return Resp(
            201,
            [
                ("content-type", "application/json"),
                ("x-up", "1"),
                ("content-length", str(len(body))),
            ],
            body,
        )

    w = Wire(ctx(client, upstream), POLICY, handler=answer)
    got = json_post(w, {"alice": "hello alice", "n": 3}, "/v1/chat?to=alice")
    w.pump()
    seen = w.upstream.seen[0]
    assert seen.method == "POST" and seen.target == "/v1/chat?to=bob"
    assert json.loads(bytes(seen.body)) == {"alice": "hello bob", "n": 3}
    assert seen.header("content-length") == str(len(seen.body))
    authority = seen.header(":authority") if upstream == "h2" else seen.header("host")
    assert authority == "api.example.com"
    assert got.status == 201 and got.ended
    assert got.json() == {"got": {"alice": "hello bob", "n": 3}, "from": "bob"}
    assert got.header("x-up") == "1"
    assert got.header("content-length") == str(len(got.body))
    [audit] = w.audits
    assert set(audit.record) == AUDIT_KEYS
    assert audit.record == {
        "timestamp": "2023-11-14T22:13:20+00:00",
        "method": "POST",
        "url": "https://api.example.com/v1/chat?to=bob",
        "status_code": 201,
        "direction": "outbound",
        "pii_redactions": 0,
        "injection_blocks": 0,
        "transformations_applied": 3,
        "vault_injections": 0,
        "bytes_out": len(seen.body),
        "bytes_in": len(got.body),
        "host": "api.example.com",
    }
    assert (audit.verdict, audit.reason) == ("allow", "inspected")


@pytest.mark.parametrize("client,upstream", PAIRS)
def test_keep_alive_serves_requests_in_turn(client: str, upstream: str) -> None:
    w = Wire(ctx(client, upstream), POLICY)
    for i in range(3):
        got = json_post(w, [f"alice {i}"])
        w.pump()
        assert got.json() == [f"bob {i}"]
    assert len(w.audits) == 3 and not w.closed_client and w.reset is None


def test_hop_by_hop_headers_do_not_cross_and_cookies_are_joined_for_h1() -> None:
    w = Wire(ctx("h2", "h1"), POLICY)
    w.client.request("GET", "/", [("cookie", "a=1"), ("cookie", "b=2"), ("te", "trailers")])
    w.pump()
    seen = w.upstream.seen[0]
    assert seen.header("cookie") == "a=1; b=2"
    assert seen.header("host") == "api.example.com"
    w = Wire(ctx("h1", "h2"), POLICY)
    w.client.request(
        "GET",
        "/",
        [
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("x-end", "2"),
        ],
    )
    w.pump()
    names = [k for k, _ in w.upstream.seen[0].headers]
    assert "x-hop" not in names and "keep-alive" not in names and "connection" not in names
    assert "host" not in names and w.upstream.seen[0].header("x-end") == "2"


# HTTP/2: streams at once, flow control -----------------------------------------------------


@pytest.mark.parametrize("upstream", ["h2", "h1"])
def test_concurrent_h2_streams_each_get_their_answer(upstream: str) -> None:
    w = Wire(ctx("h2", upstream), POLICY, handler=None)
    gots = [json_post(w, {"i": i, "who": "alice"}, f"/s/{i}") for i in range(6)]
    w.pump()
    up = w.upstream
    if isinstance(up, H2Upstream):
        assert len(up.seen) == 6  # all in flight together
        for sid in reversed(up.sids):
            seen = up.by_sid[sid]
            up.respond(Resp(200, [("content-type", "application/json")], bytes(seen.body)), sid)
        w.pump()
    else:
        for _ in range(6):  # HTTP/1.1 upstream: one at a time, in order
            seen = up.seen[-1]
            up.respond(Resp(200, [("content-type", "application/json")], bytes(seen.body)))
            w.pump()
        assert [s.target for s in up.seen] == [f"/s/{i}" for i in range(6)]
    for i, got in enumerate(gots):
        assert got.ended and got.json() == {"i": i, "who": "bob"}
    assert len(w.audits) == 6


@pytest.mark.parametrize("client,upstream", PAIRS)
def test_bodies_bigger_than_every_window_arrive_whole(client: str, upstream: str) -> None:
    big = bytes(range(256)) * 12_000  # ~3 MiB, opaque
    w = Wire(
        ctx(client, upstream),
        POLICY,
        handler=lambda s: Resp(
            200,
            [("content-type", "application/octet-stream")],
            [bytes(s.body)[i : i + 100_000] for i in range(0, len(s.body), 100_000)],
        ),
    )
    got = w.client.request(
        "PUT",
        "/blob",
        [("content-type", "application/octet-stream"), ("content-length", str(len(big)))],
        big,
    )
    w.pump()
    assert bytes(w.upstream.seen[0].body) == big
    assert got.ended and bytes(got.body) == big
    rec = w.audits[0].record
    assert (rec["bytes_out"], rec["bytes_in"]) == (len(big), len(big))


def test_data_the_sandbox_cannot_take_waits_and_is_not_acknowledged() -> None:
    w = Wire(ctx("h2", "h2"), POLICY, handler=None)
    client = w.client
    assert isinstance(client, H2Sandbox)
    got = client.request("GET", "/big", [])
    w.pump()
    client.reading = False  # a slow reader: its 64 KiB window fills up, the rest waits here
    up = w.upstream
    assert isinstance(up, H2Upstream)
    sid = up.sids[0]
    up.start(200, [("content-type", "application/octet-stream")], sid)
    up.send(b"z" * 2_000_000, sid)
    w.pump()
    assert len(got.body) == 65535
    assert w.inspector.client_backlog > 0
    # What the upstream could send is bounded: our stream window, plus what we acknowledged
    # while the sandbox side's queue was under HIGH_WATER.
    sent = 2_000_000 - sum(len(q) for q in up._pending.values())
    assert sent <= STREAM_WINDOW + HIGH_WATER + 65535
    client.resume()
    up.end(sid)
    w.pump()
    assert got.ended and bytes(got.body) == b"z" * 2_000_000


# Errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("client", ["h1", "h2"])
def test_an_unreachable_upstream_answers_502_json_every_time(client: str) -> None:
    w = Wire(ctx(client, None, error="certificate verify failed: self-signed"), POLICY)
    for _ in range(2):
        got = json_post(w, {"x": "alice"})
        w.pump()
        assert got.status == 502 and got.ended
        assert got.json() == {
            "error": "upstream_unavailable",
            "reason": "certificate verify failed: self-signed",
        }
    assert [(a.verdict, a.reason, a.record["status_code"]) for a in w.audits] == [
        ("deny", "upstream_unavailable", 502)
    ] * 2
    assert w.reset is None


def test_a_malformed_h1_request_gets_400_and_a_close() -> None:
    w = Wire(ctx(), POLICY)
    assert isinstance(w.client, H1Sandbox)
    w.client.send_raw(b"GET / HTTP/1.1\r\nHost: api.example.com\r\nBad Header\r\n\r\n")
    cmds = w.inspector.client_data(w.client.take())
    raw = b"".join(c.data for c in cmds if isinstance(c, ToClient))
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert json.loads(raw.split(b"\r\n\r\n", 1)[1])["error"] == "bad_request"
    assert CloseUpstream() in cmds and CloseClient() in cmds


def test_garbage_on_h2_is_a_goaway_and_a_close_never_an_exception() -> None:
    w = Wire(ctx("h2", "h2"), POLICY)
    cmds = w.inspector.client_data(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x01\x09" * 20)
    w._apply(cmds)
    assert w.closed_client and w.closed_upstream
    assert any(isinstance(c, ToClient) for c in cmds)  # the GOAWAY


def test_garbage_after_a_request_is_answered_after_its_response() -> None:
    w = Wire(ctx(), POLICY)
    w.client.request("GET", "/", [])
    w.client.send_raw(b"\x16\x03\x01 not http at all\r\n\r\n")
    w.pump()
    raw = b"".join(w.to_client_log)
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert b"HTTP/1.1 400 " in raw
    assert w.closed_client and w.closed_upstream and len(w.upstream.seen) == 1


@pytest.mark.parametrize("client", ["h1", "h2"])
def test_a_malformed_upstream_response_is_a_502(client: str) -> None:
    w = Wire(ctx(client, "h1"), POLICY, handler=None)
    got = w.client.request("GET", "/", [])
    w.pump()
    w.upstream.out += b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n"
    w.pump()
    assert got.status == 502 and got.json()["error"] == "upstream_failed"  # type: ignore[index]
    assert w.closed_upstream


def test_upstream_reset_mid_response_resets_the_h2_stream_only() -> None:
    w = Wire(ctx("h2", "h2"), POLICY, handler=None)
    first = w.client.request("GET", "/a", [])
    second = w.client.request("GET", "/b", [])
    w.pump()
    up = w.upstream
    assert isinstance(up, H2Upstream)
    up.start(200, [("content-type", "application/octet-stream")], up.sids[0])
    up.send(b"partial", up.sids[0])
    w.pump()
    up.conn.reset_stream(up.sids[0])
    up.respond(Resp(200, [("content-type", "text/plain")], b"fine"), up.sids[1])
    w.pump()
    assert first.reset and not first.ended
    assert second.ended and bytes(second.body) == b"fine"
    assert not w.closed_client


def test_sandbox_reset_cancels_the_upstream_stream() -> None:
    w = Wire(ctx("h2", "h2"), POLICY, handler=None)
    w.client.request("GET", "/slow", [])
    w.pump()
    assert isinstance(w.client, H2Sandbox)
    w.client.conn.reset_stream(1)
    resets: list[int] = []
    up = w.upstream
    assert isinstance(up, H2Upstream)
    orig = up.receive

    def spy(data: bytes) -> None:
        for ev in h2.connection.H2Connection.receive_data(up.conn, data):
            if isinstance(ev, h2.events.StreamReset):
                resets.append(ev.stream_id)

    up.receive = spy  # type: ignore[method-assign]
    w.pump()
    up.receive = orig  # type: ignore[method-assign]
    assert resets == [up.sids[0]]
    assert len(w.audits) == 1


# Connection lifetime -----------------------------------------------------------------------


def test_an_upstream_that_closes_after_a_response_makes_the_sandbox_reconnect() -> None:
    w = Wire(
        ctx(),
        POLICY,
        handler=lambda s: Resp(200, [("connection", "close"), ("content-length", "2")], b"ok"),
    )
    got = w.client.request("GET", "/", [])
    w.pump()
    assert got.ended and got.header("connection") == "close"
    assert w.closed_client and w.closed_upstream


def test_an_idle_upstream_close_closes_the_sandbox_connection() -> None:
    for client in ("h1", "h2"):
        w = Wire(ctx(client, "h1"), POLICY)
        got = w.client.request("GET", "/", [])
        w.pump()
        assert got.ended and not w.closed_client
        w.upstream_eof()
        assert w.closed_client and w.closed_upstream
        if isinstance(w.client, H2Sandbox):
            assert w.client.terminated == 1  # GOAWAY naming the last stream served


def test_sandbox_eof_closes_both_once_idle() -> None:
    w = Wire(ctx(), POLICY, handler=None)
    got = w.client.request("GET", "/", [])
    w.pump()
    w.client_eof()
    assert not w.closed_client  # the response is still due
    w.upstream.respond(Resp(200, [("content-length", "1")], b"k"))
    w.pump()
    assert got.ended and w.closed_client and w.closed_upstream


def test_queued_h2_streams_are_refused_when_the_h1_upstream_goes() -> None:
    w = Wire(ctx("h2", "h1"), POLICY, handler=None)
    first = w.client.request("GET", "/1", [])
    second = w.client.request("GET", "/2", [])
    w.pump()
    w.upstream.respond(Resp(200, [("connection", "close"), ("content-length", "1")], b"1"))
    w.pump()
    assert first.ended and second.reset  # REFUSED_STREAM: the client may retry it
    assert [a.record["url"] for a in w.audits] == ["https://api.example.com/1"]
    assert w.closed_client


# Special exchanges -------------------------------------------------------------------------


@pytest.mark.parametrize("client,upstream", PAIRS)
def test_head_and_no_content_responses(client: str, upstream: str) -> None:
    def answer(seen: Seen) -> Resp:
        if seen.method == "HEAD":
            return Resp(200, [("content-type", "text/plain"), ("content-length", "1234")])
        return Resp(204, [])

    w = Wire(ctx(client, upstream), POLICY, handler=answer)
    head = w.client.request("HEAD", "/", [])
    w.pump()
    assert head.ended and head.header("content-length") == "1234" and head.body == b""
    nothing = w.client.request("DELETE", "/x", [])
    w.pump()
    assert nothing.status == 204 and nothing.ended


def test_expect_100_continue_is_answered_here() -> None:
    w = Wire(ctx(), POLICY)
    assert isinstance(w.client, H1Sandbox)
    got = w.client.request(
        "POST",
        "/up",
        [("expect", "100-continue"), ("content-type", "text/plain"), ("content-length", "5")],
        end=False,
    )
    cmds = w.inspector.client_data(w.client.take())
    assert b"".join(c.data for c in cmds if isinstance(c, ToClient)).startswith(b"HTTP/1.1 100 ")
    w._apply(cmds)
    w.client.out += w.client.conn.send(h11.Data(data=b"alice"))
    w.client.out += w.client.conn.send(h11.EndOfMessage())
    w.pump()
    assert got.status == 200 and bytes(got.body) == b"bob"
    assert w.upstream.seen[0].header("expect") is None


def test_upgrade_becomes_a_raw_unscanned_tunnel() -> None:
    w = Wire(ctx(), POLICY, handler=None)
    assert isinstance(w.client, H1Sandbox)
    w.client.request(
        "GET",
        "/ws",
        [("connection", "upgrade"), ("upgrade", "websocket"), ("sec-websocket-key", "k")],
    )
    w.pump()
    seen = w.upstream.seen[0]
    assert seen.header("upgrade") == "websocket"
    w.upstream.out += (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\n\r\n\x81\x05alice"
    )
    cmds = w.inspector.upstream_data(w.upstream.take())
    to_client = b"".join(c.data for c in cmds if isinstance(c, ToClient))
    assert to_client.startswith(b"HTTP/1.1 101 ")
    assert to_client.endswith(b"\r\n\r\n\x81\x05alice")  # not rewritten
    assert b"upgrade: websocket" in to_client.lower()
    assert w.inspector.client_data(b"\x81\x05alice") == [ToUpstream(b"\x81\x05alice")]
    assert [a.record["status_code"] for a in cmds if isinstance(a, HttpAudit)] == [101]


def test_connect_over_h2_is_refused_with_501() -> None:
    w = Wire(ctx("h2", "h2"), POLICY)
    assert isinstance(w.client, H2Sandbox)
    sid = w.client.conn.get_next_available_stream_id()
    w.client.conn.send_headers(sid, [(":method", "CONNECT"), (":authority", "x:443")])
    w.client.responses[sid] = got = Got()
    w.pump()
    assert got.status == 501 and w.upstream.seen == []


def test_trailers_cross_h2_to_h2() -> None:
    w = Wire(
        ctx("h2", "h2"), InspectionPolicy(transformations=POLICY.transformations), handler=None
    )
    got = w.client.request(
        "POST",
        "/grpc.Svc/Call",
        [("content-type", "application/grpc"), ("te", "trailers")],
        b"\x00\x00\x00\x00\x00",
    )
    w.pump()
    up = w.upstream
    assert isinstance(up, H2Upstream)
    assert up.seen[0].header("te") == "trailers"
    sid = up.sids[0]
    up.start(200, [("content-type", "application/grpc")], sid)
    up.send(b"\x00\x00\x00\x00\x00", sid)
    up._flush()
    up.conn.send_headers(sid, [("grpc-status", "0")], end_stream=True)
    w.pump()
    assert got.ended and bytes(got.body) == b"\x00" * 5


def test_audit_disabled_means_no_request_events() -> None:
    w = Wire(ctx(), InspectionPolicy(transformations=POLICY.transformations, audit_enabled=False))
    json_post(w, ["alice"])
    w.pump()
    assert w.audits == []


def test_an_internal_error_is_a_reset_not_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    w = Wire(ctx(), POLICY)

    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("boom with secret sk-123")

    monkeypatch.setattr(w.inspector._pipeline, "request", boom)
    w.client.request("GET", "/", [])
    cmds = w.inspector.client_data(w.client.take())
    assert ResetBoth("internal error") in cmds
    assert w.inspector.client_data(b"more") == []


def test_an_early_h2_answer_stops_the_rest_of_the_upload() -> None:
    w = Wire(ctx("h2", "h2"), POLICY, handler=None)
    got = w.client.request(
        "POST", "/up", [("content-type", "application/octet-stream")], [b"x" * 1000], end=False
    )
    w.pump()
    up = w.upstream
    assert isinstance(up, H2Upstream)
    up.respond(Resp(413, [("content-length", "0")]), up.sids[0])
    up.conn.reset_stream(up.sids[0], 0)  # NO_ERROR: "keep the rest"
    w.pump()
    assert got.status == 413 and got.ended and got.reset  # RST_STREAM(NO_ERROR) passed on
    assert [a.record["status_code"] for a in w.audits] == [413]
    assert w.reset is None


def test_an_early_h1_answer_still_lets_the_upload_finish() -> None:
    w = Wire(ctx(), POLICY, handler=None)
    assert isinstance(w.client, H1Sandbox)
    got = w.client.request(
        "POST",
        "/up",
        [("content-type", "application/octet-stream"), ("content-length", "2000")],
        [b"x" * 1000],
        end=False,
    )
    w.pump()
    w.upstream.respond(Resp(413, [("content-length", "0"), ("connection", "close")]))
    w.pump()
    assert got.status == 413 and got.header("connection") == "close"
    w.client.out += w.client.conn.send(h11.Data(data=b"y" * 1000))
    w.client.out += w.client.conn.send(h11.EndOfMessage())
    w.pump()
    assert [a.record["status_code"] for a in w.audits] == [413]
    assert w.closed_client and w.closed_upstream and w.reset is None


def test_h2_sandbox_eof_cancels_what_is_in_flight() -> None:
    w = Wire(ctx("h2", "h2"), POLICY, handler=None)
    w.client.request("GET", "/slow", [])
    w.pump()
    w.client_eof()
    assert w.closed_client and w.closed_upstream
    assert len(w.audits) == 1


def test_sandbox_connection_close_closes_after_the_response() -> None:
    w = Wire(ctx(), POLICY)
    got = w.client.request("GET", "/", [("connection", "close")])
    w.pump()
    assert got.ended and w.closed_client and w.closed_upstream


def test_a_chunked_text_upload_is_rewritten_as_it_flows() -> None:
    w = Wire(ctx("h1", "h2"), POLICY, handler=None)
    assert isinstance(w.client, H1Sandbox)
    w.client.request(
        "POST",
        "/t",
        [("content-type", "text/plain")],
        [b"hello ali", b"ce " + b"z" * 20_000],
        end=False,
    )
    w.pump()
    seen = w.upstream.seen[0]
    assert bytes(seen.body).startswith(b"hello bob ") and not seen.ended  # before the end
    w.client.out += w.client.conn.send(h11.EndOfMessage())
    w.pump()
    assert seen.ended and bytes(seen.body) == b"hello bob " + b"z" * 20_000
    assert seen.header("content-length") is None


def test_connect_between_h1_ends_becomes_a_tunnel() -> None:
    w = Wire(ctx(), POLICY, handler=None)
    w.inspector.client_data(
        b"CONNECT db.example.com:5432 HTTP/1.1\r\nHost: db.example.com:5432\r\n\r\nalice-early"
    )
    cmds = w.inspector.upstream_data(b"HTTP/1.1 200 Connection established\r\n\r\nalice-up")
    assert ToClient(b"HTTP/1.1 200 OK\r\n\r\nalice-up") in cmds
    assert ToUpstream(b"alice-early") in cmds
    assert w.inspector.client_data(b"alice") == [ToUpstream(b"alice")]
    assert w.inspector.client_eof() == [CloseUpstream()]
    assert w.inspector.upstream_eof() == [CloseClient()]


def test_an_upgrade_towards_an_h2_upstream_is_a_plain_request() -> None:
    w = Wire(ctx("h1", "h2"), POLICY, handler=lambda s: Resp(426, [("content-length", "0")]))
    got = w.client.request("GET", "/ws", [("connection", "upgrade"), ("upgrade", "websocket")])
    w.pump()
    assert got.status == 426
    assert w.upstream.seen[0].header("upgrade") is None


def _head(ctype: str, length: int) -> bytes:
    return (
        f"POST /x HTTP/1.1\r\nHost: api.example.com\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def test_scanning_says_whether_a_body_is_going_through_the_pipeline() -> None:
    """The proxy moves a connection's events off the event loop while this is true."""
    scanned = HttpInspector(ctx(), POLICY, secrets=Secrets())
    scanned.client_data(_head("application/json", 100) + b'{"a": "')
    assert scanned.scanning  # a JSON body is being buffered for its rewrite
    passed = HttpInspector(ctx(), POLICY, secrets=Secrets())
    passed.client_data(_head("application/octet-stream", 100) + b"\0" * 10)
    assert not passed.scanning  # an opaque body passes as it is
    assert not HttpInspector(ctx(), POLICY, secrets=Secrets()).scanning
