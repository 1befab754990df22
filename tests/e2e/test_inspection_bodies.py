"""Bodies as a user sends and receives them: compressed, streamed, split, escaped, huge.

Through one inspecting sandbox (the matrix's rules: `hello-out` rewritten outbound,
`pong-in` inbound): gzip and br responses decoded, rewritten and delivered decodable; a
gzip request body rewritten; SSE and chunked JSON-lines streams rewritten while they still
flow (the client holds the first piece long before the last exists); a token split across
chunks of a request body still caught; JSON keys left alone and escaped values matched;
query values rewritten; a body over the buffer limit passes unscanned with the audit note.
ReDoS: the SDK's client-side refusal, the server's refusal of what RE2 cannot run, and a
backtracking-catastrophic pattern over a 1 MB body that neither stalls the proxy nor others.
"""

from __future__ import annotations

import base64
import gzip
import json
import shlex
import time
from collections.abc import Iterator
from typing import Any

import brotli
import httpx
import pytest
from declaw import Sandbox, TransformationRule

from declawd.client import DeclawdClient
from tests.e2e.test_inspection import (
    ALLOWED,
    CLIENT_SAW,
    H1_HOST,
    H2_HOST,
    SENT,
    UPSTREAM_SAW,
    create,
    echo,
    eventually,
    inspecting,
    marker,
    probe,
    seen_upstream,
)

pytestmark = pytest.mark.e2e

BUFFER_LIMIT = 8 << 20  # Settings.inspect_buffer_limit_mb default

BODIES = r"""
import base64, http.client, json, sys, time, urllib.parse, urllib.request

def raw_post(url, data_b64, headers):
    # urllib never decodes Content-Encoding: the raw body comes back base64
    req = urllib.request.Request(url, data=base64.b64decode(data_b64), method="POST",
                                 headers=headers)
    with urllib.request.urlopen(req, timeout=60) as r:
        return {"status": r.status, "headers": {k.lower(): v for k, v in r.getheaders()},
                "body": base64.b64encode(r.read()).decode()}

def chunked_post(host, path, pieces, pause=0.3):
    conn = http.client.HTTPSConnection(host, timeout=60)
    def gen():
        for i, piece in enumerate(pieces):
            if i:
                # not synchronisation: the pause makes each piece leave in its own TLS
                # record / TCP segment, so the token really straddles two chunks
                time.sleep(pause)
            yield piece.encode()
    conn.request("POST", path, body=gen(), headers={"Content-Type": "text/plain"},
                 encode_chunked=True)
    r = conn.getresponse()
    return {"status": r.status, "text": r.read().decode()}

def stream_read(url):
    # the body piece by piece as it arrives, with the gap between the first and last piece
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPSConnection(u.netloc, timeout=60)
    conn.request("GET", u.path + "?" + u.query)
    r = conn.getresponse()
    pieces, times = [], []
    while True:
        data = r.read1(65536)
        if not data:
            break
        pieces.append(data.decode())
        times.append(time.monotonic())
    return {"status": r.status, "type": r.getheader("content-type"), "text": "".join(pieces),
            "gap": times[-1] - times[0] if times else 0}

def redos_post(url, n):
    doc = {"s": "a" * n, "t": "a" * n + "!"}
    req = urllib.request.Request(url, data=json.dumps(doc).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        echoed = json.loads(r.read())["json"]
        return {"status": r.status, "s": echoed["s"], "t_intact": echoed["t"] == doc["t"]}

def big_post(url, size):
    body = b"hello-out " + b"x" * (size - 10)
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(req, timeout=300) as r:
        back = r.read()
        return {"status": r.status, "same": back == body, "size": len(back)}

print(json.dumps(eval(sys.argv[1])))
"""


@pytest.fixture(scope="module")
def sbx(server: dict[str, str]) -> Iterator[Sandbox]:
    s = create(security=inspecting(ALLOWED))
    s.files.write("/tmp/bodies.py", BODIES)
    try:
        yield s
    finally:
        s.kill(wait=True)


@pytest.fixture(scope="module")
def client(server: dict[str, str]) -> Iterator[DeclawdClient]:
    with DeclawdClient(api_key=server["key"], domain=server["domain"]) as cl:
        yield cl


def body_probe(s: Sandbox, expr: str, timeout: int = 300) -> Any:
    r = s.commands.run(f"python3 /tmp/bodies.py {shlex.quote(expr)}", timeout=timeout)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def _decode(encoding: str | None, data: bytes) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "br":
        return bytes(brotli.decompress(data))
    assert encoding in (None, "identity"), encoding
    return data


# --- compressed ----------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "br"])
@pytest.mark.parametrize("host", [H1_HOST, H2_HOST])
def test_compressed_response_rewritten_and_decodable(
    sbx: Sandbox, encoding: str, host: str
) -> None:
    m, t0 = marker(), time.time()
    data = base64.b64encode(json.dumps(SENT).encode()).decode()
    headers = {"Content-Type": "application/json", "Accept-Encoding": "gzip, br"}
    url = f"https://{host}/anything?{encoding}=1&case={m}"
    got = body_probe(sbx, f"raw_post({url!r}, {data!r}, {headers!r})")
    assert got["status"] == 200, got
    # Re-encoded as the header says, or sent identity with the header dropped: either
    # way the body must decode by its own header and carry both rewrites.
    plain = _decode(got["headers"].get("content-encoding"), base64.b64decode(got["body"]))
    assert json.loads(plain)["json"] == CLIENT_SAW
    (rec,) = seen_upstream(host, m, t0)
    assert "rewritten-out" in json.dumps(rec) and "hello-out" not in json.dumps(rec)


def test_gzip_request_body_rewritten(sbx: Sandbox) -> None:
    m = marker()
    data = base64.b64encode(gzip.compress(json.dumps(SENT).encode())).decode()
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    got = body_probe(sbx, f"raw_post('https://{H1_HOST}/anything?case={m}', {data!r}, {headers!r})")
    doc = json.loads(_decode(got["headers"].get("content-encoding"), base64.b64decode(got["body"])))
    if doc["body_base64"]:  # re-encoded upstream: the lab echoes the gzip bytes as base64
        assert doc["headers"]["content-encoding"] == "gzip"
        upstream = json.loads(gzip.decompress(base64.b64decode(doc["body"])))
        assert upstream == UPSTREAM_SAW
    else:  # sent identity, the header dropped: the echo's JSON came back rewritten too
        assert "content-encoding" not in doc["headers"]
        assert doc["json"] == CLIENT_SAW


# --- streamed ------------------------------------------------------------------------------

PIECES, DELAY_MS = 4, 700


@pytest.mark.parametrize("kind", ["sse", "stream"])
@pytest.mark.parametrize("host", [H1_HOST, H2_HOST])
def test_streamed_response_rewritten_while_it_flows(sbx: Sandbox, kind: str, host: str) -> None:
    url = f"https://{host}/{kind}/{PIECES}?text=pong-in&delay_ms={DELAY_MS}"
    got = body_probe(sbx, f"stream_read({url!r})")
    assert got["status"] == 200, got
    if kind == "sse":
        assert got["type"].startswith("text/event-stream")
        lines = [
            ln.removeprefix("data: ") for ln in got["text"].split("\n") if ln.startswith("data: ")
        ]
    else:
        lines = [ln for ln in got["text"].split("\n") if ln]
    assert [json.loads(ln) for ln in lines] == [
        {"id": i, "text": "rewritten-in"} for i in range(PIECES)
    ], got["text"]
    # The lab waits DELAY_MS between pieces: had the proxy held the stream until its end,
    # every piece would arrive at once. Slowness only widens this gap; only buffering the
    # stream can shrink it below half of what the lab waits.
    assert got["gap"] > (PIECES - 1) * DELAY_MS / 1000 / 2, got


def test_token_split_across_request_chunks_rewritten(sbx: Sandbox) -> None:
    m, t0 = marker(), time.time()
    pieces = ["say hel", "lo-out twice: hello", "-out."]
    got = body_probe(sbx, f"chunked_post({H1_HOST!r}, '/anything?case={m}', {pieces!r})")
    assert echo(got)["body"] == "say rewritten-out twice: rewritten-out."
    (rec,) = seen_upstream(H1_HOST, m, t0)
    assert rec["body"] == "say rewritten-out twice: rewritten-out.", rec


# --- JSON, query, limits -------------------------------------------------------------------


def test_json_keys_untouched_and_escaped_values_matched(sbx: Sandbox) -> None:
    m = marker()
    # `\u002d` is "-": the value is "hello-out" once decoded, the key must stay as it is
    body = '{"msg": "hello\\u002dout", "hello-out": "key stays", "n": [1, "hello-out"]}'
    got = probe(sbx, f"urllib_post('https://{H1_HOST}/anything?case={m}', data={body!r})")
    assert echo(got)["json"] == {
        "msg": "rewritten-out",
        "hello-out": "key stays",
        "n": [1, "rewritten-out"],
    }


def test_query_values_rewritten_names_untouched(sbx: Sandbox) -> None:
    m, t0 = marker(), time.time()
    got = probe(
        sbx, f"curl('https://{H1_HOST}/anything?case={m}&q=hello-out&hello-out=k', data=None)"
    )
    assert echo(got)["query"] == {"case": [m], "q": ["rewritten-out"], "hello-out": ["k"]}
    (rec,) = seen_upstream(H1_HOST, m, t0)
    assert "q=rewritten-out" in rec["target"], rec


def test_body_over_buffer_limit_passes_unscanned_with_note(
    sbx: Sandbox, client: DeclawdClient
) -> None:
    m, t0 = marker(), time.time()
    size = BUFFER_LIMIT + (1 << 20)
    got = body_probe(sbx, f"big_post('https://{H1_HOST}/echo?case={m}', {size})")
    assert got == {"status": 200, "same": True, "size": size}, got  # untouched both ways
    (rec,) = seen_upstream(H1_HOST, m, t0)
    assert rec["body"].startswith("hello-out ") and rec["body_size"] == size, rec

    def noted() -> list[dict[str, Any]]:
        events = [e.model_dump() for e in client.audit(sbx.sandbox_id, kind="http")]
        return [e for e in events if m in str(e.get("url"))]

    (event,) = eventually(noted)
    assert event["unscanned"] == "over_buffer_limit", event
    assert event["transformations_applied"] == 0, event


# --- ReDoS ---------------------------------------------------------------------------------


def test_sdk_refuses_nested_quantifier_client_side() -> None:
    with pytest.raises(ValueError, match="nested quantifiers"):
        TransformationRule(match="(a+)+$", replace="x")


def _raw_create(api: httpx.Client, rules: list[dict[str, str]]) -> httpx.Response:
    policy = {"transformations": rules}
    return api.post(
        "/sandboxes",
        json={
            "template": "python",
            "timeout": 600,
            "security": {"policy_json": json.dumps(policy)},
        },
    )


@pytest.mark.parametrize(
    ("pattern", "why"),
    [("(?<=a)b", "lookbehind"), ("a(?=b)", "lookahead"), (r"(a)\1", "backreference")],
)
def test_server_refuses_patterns_re2_cannot_run(api: httpx.Client, pattern: str, why: str) -> None:
    ok = {"match": "fine", "replace": "x", "direction": "outbound"}
    r = _raw_create(api, [ok, {"match": pattern, "replace": "x", "direction": "outbound"}])
    assert r.status_code == 400, (why, r.text)
    assert r.json()["message"].startswith("security.policy_json.transformations[1].match: "), r.text


def test_backtracking_catastrophe_runs_linearly_and_others_proceed(
    api: httpx.Client, sbx: Sandbox
) -> None:
    rules = [
        {"match": "(a|aa)+$", "replace": "x", "direction": "outbound"},
        {"match": "(a+)+$", "replace": "y", "direction": "outbound"},
    ]
    r = _raw_create(api, rules)  # RE2 runs these in linear time: accepted
    assert r.status_code == 201, r.text
    hostile = Sandbox.connect(r.json()["sandbox_id"])
    try:
        hostile.files.write("/tmp/bodies.py", BODIES)
        n = 500_000  # two values of n characters: a 1 MB body
        job = f"redos_post('https://{H1_HOST}/anything', {n})"
        hostile.commands.run(
            f"python3 /tmp/bodies.py {shlex.quote(job)} > /tmp/redos.tmp && mv /tmp/redos.tmp /tmp/redos.json",
            background=True,
        )
        # Another sandbox is served while the hostile body is in the proxy.
        m = marker()
        assert (
            echo(probe(sbx, f"curl('https://{H1_HOST}/anything?case={m}')"))["json"] == CLIENT_SAW
        )
        assert eventually(lambda: hostile.files.exists("/tmp/redos.json"), 240)
        got = json.loads(hostile.files.read("/tmp/redos.json"))
        # "a"*n matched whole by the first rule; "a"*n + "!" never matches either rule
        assert got == {"status": 200, "s": "x", "t_intact": True}, got
    finally:
        hostile.kill(wait=True)
