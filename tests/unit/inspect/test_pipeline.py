"""The body pipeline (declaw-api.md §12.1): JSON value by value, text, codecs, streaming with
hold-back, the buffer limit, and the seam for issue 10's stages."""

from __future__ import annotations

import gzip
import json
import zlib

import brotli
import pytest

from declawd.inspect import pipeline
from declawd.inspect.bodies import SseRewriter, body_kind, coding_of, rewrite_json
from declawd.inspect.model import InspectionPolicy, TransformRule
from declawd.inspect.pipeline import Blocked, ExchangeState, TextPass
from declawd.inspect.rules import RuleSet, RuleTimeout
from tests.unit.inspect.httpwire import H2Upstream, Resp, Seen, Wire, ctx

RULES = (
    TransformRule("alice", "[NAME]", "both"),
    TransformRule(r"sk-[a-z0-9]{8}", "[KEY]", "inbound"),
)
POLICY = InspectionPolicy(transformations=RULES)


def reply(ctype: str, body: bytes, *extra: tuple[str, str], length: bool = True) -> Resp:
    headers = [("content-type", ctype), *extra]
    if length:
        headers.append(("content-length", str(len(body))))
    return Resp(200, headers, body)


def fetch(resp: Resp, policy: InspectionPolicy = POLICY, proto: str = "h1"):
    w = Wire(ctx(proto, proto), policy, handler=lambda _: resp)
    got = w.client.request("GET", "/", [])
    w.pump()
    assert got.ended
    return w, got


# JSON -------------------------------------------------------------------------------------


def test_json_string_values_rewritten_keys_and_numbers_untouched() -> None:
    body = b'{"alice": "hi alice", "list": ["alice", 1.10, {"k": "sk-abcdefgh"}], "n": 1e5}'
    _, got = fetch(reply("application/json; charset=utf-8", body))
    assert bytes(got.body) == (
        b'{"alice": "hi [NAME]", "list": ["[NAME]", 1.10, {"k": "[KEY]"}], "n": 1e5}'
    )
    assert got.header("content-length") == str(len(got.body))


def test_json_stays_valid_when_a_replacement_has_quotes() -> None:
    rules = (TransformRule("alice", 'a "quoted"\\\\ name', "inbound"),)
    _, got = fetch(
        reply("application/vnd.api+json", b'["alice\\n", "\\u0061lice"]'),
        InspectionPolicy(transformations=rules),
    )
    assert json.loads(bytes(got.body)) == ['a "quoted"\\ name\n', 'a "quoted"\\ name']


def test_invalid_json_is_scanned_as_text() -> None:
    assert rewrite_json('{"a": "alice"', lambda s: s.upper()) is None
    _, got = fetch(reply("application/json", b'{"a": "alice"'))
    assert bytes(got.body) == b'{"a": "[NAME]"'


def test_text_types_are_rewritten_and_opaque_ones_pass() -> None:
    for ctype in (
        "text/plain",
        "application/xml",
        "application/javascript",
        "application/x-www-form-urlencoded",
        "text/html; charset=latin-1",
    ):
        _, got = fetch(reply(ctype, b"to alice"))
        assert bytes(got.body) == b"to [NAME]", ctype
    _, got = fetch(reply("application/octet-stream", b"to alice"))
    assert bytes(got.body) == b"to alice"
    assert body_kind(None) == "opaque"


# Codecs -----------------------------------------------------------------------------------


def _deflate_raw(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize(
    "coding,encode,decode",
    [
        ("gzip", gzip.compress, gzip.decompress),
        ("br", brotli.compress, brotli.decompress),
        ("deflate", zlib.compress, zlib.decompress),
        ("deflate", _deflate_raw, zlib.decompress),
    ],
)
@pytest.mark.parametrize("proto", ["h1", "h2"])
def test_compressed_bodies_are_decoded_rewritten_and_re_encoded(
    coding: str, encode, decode, proto: str
) -> None:
    body = json.dumps({"msg": "hello alice " * 50}).encode()
    w, got = fetch(
        reply("application/json", encode(body), ("content-encoding", coding)), proto=proto
    )
    assert got.header("content-encoding") == coding
    assert got.header("content-length") == str(len(got.body))
    assert json.loads(decode(bytes(got.body))) == {"msg": "hello [NAME] " * 50}
    assert w.audits[0].record["transformations_applied"] == 50


def test_request_bodies_are_decoded_too() -> None:
    w = Wire(ctx(), POLICY)
    body = gzip.compress(b"from alice")
    w.client.request(
        "POST",
        "/",
        [
            ("content-type", "text/plain"),
            ("content-encoding", "gzip"),
            ("content-length", str(len(body))),
        ],
        body,
    )
    w.pump()
    assert gzip.decompress(bytes(w.upstream.seen[0].body)) == b"from [NAME]"


def test_an_empty_compressed_body_is_just_empty() -> None:
    w, got = fetch(reply("application/json", b"", ("content-encoding", "br")))
    assert bytes(got.body) == b"" and "unscanned" not in w.audits[0].record


def test_unknown_or_stacked_encodings_pass_with_a_note() -> None:
    assert coding_of("gzip, br") is None and coding_of("zstd") is None
    assert coding_of(None) == "identity" and coding_of("x-gzip") == "gzip"
    w, got = fetch(reply("text/plain", b"alice", ("content-encoding", "zstd")))
    assert bytes(got.body) == b"alice"
    assert w.audits[0].record["unscanned"] == "content_encoding"


def test_a_broken_gzip_body_passes_as_it_came_with_a_note() -> None:
    broken = gzip.compress(b"alice" * 100)[:-12]
    w, got = fetch(reply("text/plain", broken, ("content-encoding", "gzip")))
    assert bytes(got.body) == broken
    assert w.audits[0].record["unscanned"] == "undecodable"


def test_accept_encoding_is_narrowed_to_what_can_be_decoded() -> None:
    w = Wire(ctx(), POLICY)
    w.client.request("GET", "/", [("accept-encoding", "zstd, br;q=0.9, gzip")])
    w.pump()
    assert w.upstream.seen[0].header("accept-encoding") == "br;q=0.9, gzip"


# The buffer limit -------------------------------------------------------------------------


def test_a_known_length_over_the_limit_passes_unscanned_with_a_note() -> None:
    policy = InspectionPolicy(transformations=RULES, buffer_limit=64)
    w, got = fetch(reply("application/json", json.dumps(["alice"] * 30).encode()), policy)
    assert b"[NAME]" not in got.body
    assert json.loads(bytes(got.body)) == ["alice"] * 30
    assert w.audits[0].record["unscanned"] == "over_buffer_limit"


def test_a_body_that_outgrows_the_limit_while_buffering_passes_from_there() -> None:
    policy = InspectionPolicy(transformations=RULES, buffer_limit=64)
    chunks = [json.dumps(["alice"] * 5).encode()[:-1] + b",", b'"alice",' * 10, b'"x"]']
    w, got = fetch(Resp(200, [("content-type", "application/json")], chunks), policy)
    assert bytes(got.body) == b"".join(chunks)
    assert w.audits[0].record["unscanned"] == "over_buffer_limit"


def test_a_gzip_bomb_is_bounded_by_the_limit() -> None:
    policy = InspectionPolicy(transformations=RULES, buffer_limit=4096)
    bomb = gzip.compress(b"a" * 10_000_000)
    w, got = fetch(reply("text/plain", bomb, ("content-encoding", "gzip")), policy)
    assert bytes(got.body) == bomb
    assert w.audits[0].record["unscanned"] == "over_buffer_limit"


def test_text_that_is_not_in_its_charset_passes_with_a_note() -> None:
    w, got = fetch(reply("text/plain; charset=utf-8", b"alice \xff\xfe"))
    assert bytes(got.body) == b"alice \xff\xfe"
    assert w.audits[0].record["unscanned"] == "undecodable"


# Streaming ---------------------------------------------------------------------------------


def streaming_wire(ctype: str, policy: InspectionPolicy = POLICY, proto: str = "h1"):
    w = Wire(ctx(proto, proto), policy, handler=None)
    got = w.client.request("GET", "/stream", [])
    w.pump()
    up = w.upstream
    sid = up.sids[0] if isinstance(up, H2Upstream) else 0
    up.start(200, [("content-type", ctype)], sid)
    w.pump()
    return w, got, sid


@pytest.mark.parametrize("proto", ["h1", "h2"])
def test_sse_is_rewritten_per_event_and_streams(proto: str) -> None:
    w, got, sid = streaming_wire("text/event-stream", proto=proto)
    up = w.upstream
    ev1 = 'data: {"delta": "hi ali'
    up.send(ev1.encode(), sid)
    w.pump()
    assert bytes(got.body) == b""  # held until the event is complete
    up.send(b'ce"}\n\n: keep-alive\n\ndata: plain sk-abc', sid)
    w.pump()
    assert bytes(got.body) == b'data: {"delta": "hi [NAME]"}\n\n: keep-alive\n\n'
    assert not got.ended  # delivered before the stream ends
    up.send(b"defgh\r\ndata: second line alice\r\n\r\n", sid)
    up.end(sid)
    w.pump()
    assert bytes(got.body).endswith(b"data: plain [KEY]\r\ndata: second line [NAME]\r\n\r\n")
    assert got.ended
    assert w.audits[0].record["transformations_applied"] == 3


def test_sse_event_rewrite_keeps_fields_and_multiline_data() -> None:
    sse = SseRewriter(lambda s: s.replace("x", "y\nz"), limit=1000)
    out = sse.feed("event: a\r\nid: 7\r\ndata: 1x\r\ndata: 2\r\n\r\nretry: 5\n\n")
    assert out == "event: a\r\nid: 7\r\ndata: 1y\r\ndata: z\r\ndata: 2\r\n\r\nretry: 5\n\n"


@pytest.mark.parametrize("proto", ["h1", "h2"])
def test_unknown_length_text_streams_with_a_bounded_hold_back(proto: str) -> None:
    w, got, sid = streaming_wire("text/plain", proto=proto)
    up = w.upstream
    filler = b"y" * (4 * RuleSet.HOLD_BACK)
    up.send(filler + b" ali", sid)
    w.pump()
    # Each of the two rules holds back at most HOLD_BACK; the rest flows before the end.
    assert len(got.body) >= len(filler) - 2 * RuleSet.HOLD_BACK
    up.send(b"ce and sk-0123", sid)
    up.send(b"4567 done", sid)
    up.end(sid)
    w.pump()
    assert bytes(got.body) == filler + b" [NAME] and [KEY] done"


def test_streamed_gzip_is_re_encoded_as_it_flows() -> None:
    c = zlib.compressobj(wbits=31)
    w2 = Wire(ctx(), POLICY, handler=None)
    got = w2.client.request("GET", "/", [])
    w2.pump()
    up2 = w2.upstream
    up2.start(200, [("content-type", "text/plain"), ("content-encoding", "gzip")])
    part = c.compress(b"x" * 20000 + b" alice ") + c.flush(zlib.Z_SYNC_FLUSH)
    up2.send(part)
    w2.pump()
    d = zlib.decompressobj(wbits=31)
    assert d.decompress(bytes(got.body)).startswith(b"x" * 10000)
    up2.send(c.compress(b"alice") + c.flush())
    up2.end()
    w2.pump()
    assert gzip.decompress(bytes(got.body)) == b"x" * 20000 + b" [NAME] [NAME]"


# The seam for issue 10 and failures ------------------------------------------------------------


class _Refuse:
    def start(self, x: ExchangeState, way: str) -> TextPass | None:
        return self if way == "outbound" else None

    def apply(self, text: str) -> str:
        if "forbidden" in text:
            raise Blocked("prompt injection", error="injection_detected")
        return text

    def stream(self):  # pragma: no cover - not streamed in this test
        raise NotImplementedError


def test_a_stage_that_blocks_answers_403_and_sends_nothing_upstream() -> None:
    w = Wire(ctx(), POLICY)
    w.inspector.pipeline.outbound.append(_Refuse())  # type: ignore[arg-type]
    body = b'{"prompt": "forbidden"}'
    got = w.client.request(
        "POST",
        "/",
        [("content-type", "application/json"), ("content-length", str(len(body)))],
        body,
    )
    w.pump()
    assert got.status == 403
    assert got.json() == {"error": "injection_detected", "reason": "prompt injection"}
    assert w.upstream.seen == []
    audit = w.audits[0]
    assert (audit.verdict, audit.reason, audit.record["status_code"]) == (
        "deny",
        "injection_detected",
        403,
    )


def test_a_rule_that_runs_out_of_time_fails_the_request(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow(self: RuleSet, text: str) -> tuple[str, int]:
        raise RuleTimeout("transformations: too slow")

    monkeypatch.setattr(RuleSet, "apply", slow)
    w = Wire(ctx(), POLICY)
    body = b"alice"
    got = w.client.request(
        "POST", "/", [("content-type", "text/plain"), ("content-length", "5")], body
    )
    w.pump()
    assert got.status == 502
    assert got.json() == {"error": "inspection_failed", "reason": "transformations: too slow"}
    assert w.upstream.seen == []


def test_no_rules_and_no_vault_means_bodies_pass_byte_for_byte() -> None:
    body = b'{"a":  "alice"}'
    w, got = fetch(reply("application/json", body), InspectionPolicy())
    assert bytes(got.body) == body
    assert "unscanned" not in w.audits[0].record


def _seen(w: Wire) -> Seen:
    return w.upstream.seen[0]


def test_outbound_only_rules_leave_responses_alone() -> None:
    rules = (TransformRule("alice", "[N]", "outbound"),)
    w = Wire(ctx(), InspectionPolicy(transformations=rules))
    got = w.client.request(
        "POST", "/?who=alice", [("content-type", "text/plain"), ("content-length", "5")], b"alice"
    )
    w.pump()
    assert _seen(w).target == "/?who=%5BN%5D" and bytes(_seen(w).body) == b"[N]"
    assert bytes(got.body) == b"[N]"  # the echo, not rewritten back


def test_bodies_past_the_process_budget_pass_unscanned_and_give_it_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many bodies at once cannot make the gateway buffer without bound: past the shared
    budget a body passes unscanned with a note, and every body gives its share back."""
    budget = pipeline.BufferBudget(100)
    monkeypatch.setattr(pipeline, "SHARED_BUDGET", budget)
    small = json.dumps(["alice"] * 5).encode()  # 45 bytes: within the budget
    _, got = fetch(reply("application/json", small), POLICY)
    assert b"alice" not in got.body and budget.held == 0
    big = json.dumps(["alice"] * 30).encode()  # over the budget, under the buffer limit
    w, got = fetch(reply("application/json", big), POLICY)
    assert bytes(got.body) == big
    assert w.audits[0].record["unscanned"] == "over_memory_budget"
    assert budget.held == 0
