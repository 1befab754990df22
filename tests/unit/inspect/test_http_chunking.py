"""However the sandbox's and the upstream's bytes are cut into reads, the inspected result is
the same as with each side's bytes in one piece (hypothesis)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from declawd.inspect.model import InspectionPolicy, TransformRule, VaultBinding, VaultScope
from tests.unit.inspect.httpwire import Resp, Secrets, Seen, Wire, ctx

SECRET = "tok-9f8e7d6c5b4a"
POLICY = InspectionPolicy(
    transformations=(
        TransformRule("alice", "bob", "both"),
        TransformRule(r"\d{4}-\d{4}", "####", "inbound"),
    ),
    vault=(VaultBinding("TOKEN", "s1", "vault://t/prod/tok", (VaultScope(r"api\.example\.com"),)),),
)


def answer(seen: Seen) -> Resp:
    if seen.target == "/sse":
        events = [f'data: {{"n": {i}, "text": "alice 1234-5678 {SECRET}"}}\n\n' for i in range(4)]
        raw = ("".join(events) + "data: alice\r\ndata: 1234-\r\n\r\n: x\r\r").encode()
        return Resp(
            200,
            [("content-type", "text/event-stream")],
            [raw[i : i + 7] for i in range(0, len(raw), 7)],
        )
    if seen.target == "/text":
        raw = f"alice {SECRET} 1234-5678 ".encode() * 400  # past the rules' hold-back
        return Resp(200, [("content-type", "text/plain")], [raw])
    if seen.target == "/gz":
        body = gzip.compress(f"alice says {SECRET}".encode() * 20, mtime=0)
        return Resp(
            200,
            [
                ("content-type", "text/plain"),
                ("content-encoding", "gzip"),
                ("content-length", str(len(body))),
            ],
            body,
        )
    body = json.dumps({"echo": bytes(seen.body).decode(), "auth": seen.header("authorization")})
    return Resp(
        200, [("content-type", "application/json")], [body.encode()[:10], body.encode()[10:]]
    )


def chunker(sizes: list[int]):
    def cut(data: bytes) -> Iterable[bytes]:
        i = k = 0
        while i < len(data):
            n = sizes[k % len(sizes)]
            yield data[i : i + n]
            i, k = i + n, k + 1

    return cut


def scenario(client: str, upstream: str, sizes: list[int] | None) -> object:
    w = Wire(
        ctx(client, upstream),
        POLICY,
        secrets=Secrets({"s1": SECRET}),
        handler=answer,
        chunker=chunker(sizes) if sizes else None,
    )
    body = json.dumps({"msg": "hi alice", "list": ["alice"] * 3}).encode()
    gots = [
        w.client.request(
            "POST",
            "/json?u=alice",
            [
                ("content-type", "application/json"),
                ("authorization", "Bearer x"),
                ("content-length", str(len(body))),
            ],
            body,
        ),
    ]
    w.pump()
    gots.append(w.client.request("GET", "/sse", []))
    w.pump()
    gots.append(w.client.request("GET", "/gz", [("accept-encoding", "gzip")]))
    w.pump()
    gots.append(w.client.request("GET", "/text", []))
    w.pump()
    out = []
    for g in gots:
        raw = bytes(g.body)
        if g.header("content-encoding") == "gzip":
            raw = gzip.decompress(raw)
        out.append((g.status, g.ended, raw, g.header("content-type")))
    seen = [(s.method, s.target, s.header("authorization"), bytes(s.body)) for s in w.upstream.seen]
    audits = [(a.verdict, dict(a.record)) for a in w.audits]
    return out, seen, audits, w.reset


PAIRS = [("h1", "h1"), ("h2", "h2"), ("h2", "h1"), ("h1", "h2")]
EXPECTED = {pair: scenario(*pair, None) for pair in PAIRS}


def test_the_one_piece_run_is_itself_right() -> None:
    out, seen, audits, reset = EXPECTED[("h1", "h1")]  # type: ignore[misc]
    assert reset is None
    assert seen[0][1:3] == ("/json?u=bob", f"Bearer {SECRET}")
    assert json.loads(out[0][2]) == {
        "echo": '{"msg": "hi bob", "list": ["bob", "bob", "bob"]}',
        "auth": "Bearer declaw:vault-managed",
    }
    assert out[1][2].count(b'"text": "bob #### declaw:vault-managed"') == 4
    assert out[1][2].endswith(b"data: bob\r\ndata: 1234-\r\n\r\n: x\r\r")
    assert out[2][2] == b"bob says declaw:vault-managed" * 20
    assert out[3][2] == b"bob declaw:vault-managed #### " * 400
    assert [a[1]["transformations_applied"] for a in audits] == [5, 9, 20, 800]


@pytest.mark.parametrize("pair", PAIRS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(min_value=1, max_value=97), min_size=1, max_size=8))
def test_any_chunking_gives_the_same_result(pair: tuple[str, str], sizes: list[int]) -> None:
    assert scenario(*pair, sizes) == EXPECTED[pair]
