"""Content inspection through the official SDK: a client matrix inside real sandboxes.

Every client runs with NO configuration (no verify flags, no CA paths) under a policy with
one outbound and one inbound transformation, and POSTs a JSON body to the lab's request echo
(`/anything`) on an HTTP/1.1-only upstream (api.openai.com) and an HTTP/2 upstream
(api.anthropic.com), so the proxy translates h1<->h2 both ways. Three witnesses per request:
the echo (what the upstream received, rewritten again on the way back), the lab's request
log (what actually left the node) and the client's own view. The whole matrix runs on runc;
a subset on runsc (all of it with DECLAWD_TEST_FULL=1). The helpers here are shared by the
other test_inspection_*.py modules.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from declaw import ALL_TRAFFIC, NetworkPolicy, Sandbox, SecurityPolicy, TransformationRule

from declawd.config import Settings
from tests.e2e import conftest as c
from tests.e2e.inspect_probes import NODE_FETCH, PROBE

pytestmark = pytest.mark.e2e

FULL = os.environ.get("DECLAWD_TEST_FULL") == "1"
H1_HOST = "api.openai.com"  # the lab serves it over HTTP/1.1 only
H2_HOST = "api.anthropic.com"  # the lab offers h2 by ALPN
HOSTS = (H1_HOST, H2_HOST)
ALLOWED = ["api.openai.com", "example.com", "api.anthropic.com"]
RULES = [
    TransformationRule(match="hello-out", replace="rewritten-out", direction="outbound"),
    TransformationRule(match="pong-in", replace="rewritten-in", direction="inbound"),
]
SENT = {"msg": "hello-out", "ask": "pong-in"}  # what every client POSTs
# What the upstream receives, and what the echo of it looks like once back in the sandbox.
UPSTREAM_SAW = {"msg": "rewritten-out", "ask": "pong-in"}
CLIENT_SAW = {"msg": "rewritten-out", "ask": "rewritten-in"}
PROMPT = "say hello-out and pong-in"

# --- shared helpers ------------------------------------------------------------------------


def settings() -> Settings:
    """The session server's settings (its lab's state dir holds the request log)."""
    from tests.e2e.leaks import settings_for

    return settings_for(
        c.INSTANCE, c.STATE_DIR, os.environ.get("DECLAWD_TEST_POOL", "10.78.0.0/16")
    )


def marker() -> str:
    """A unique query value that finds one request in the lab's request log."""
    return "m" + uuid.uuid4().hex[:12]


def inspecting(
    allow: list[str] | None = None, rules: list[TransformationRule] | None = None, **kw: Any
) -> SecurityPolicy:
    """The transformation policy of the matrix; allow=None: an open network policy."""
    network = None if allow is None else NetworkPolicy(allow_out=allow, deny_out=[ALL_TRAFFIC])
    return SecurityPolicy(
        transformations=list(RULES if rules is None else rules), network=network, **kw
    )


def create(
    runtime: str = "runc",
    template: str = "python",
    security: SecurityPolicy | None = None,
    **kw: Any,
) -> Sandbox:
    s = Sandbox.create(
        template=template,
        timeout=900,
        metadata={"declaw.runtime": runtime},
        security=security,
        **kw,
    )
    if template != "node":
        s.files.write("/tmp/insp.py", PROBE)
    return s


def probe(
    s: Sandbox,
    expr: str,
    user: str = "user",
    timeout: int = 120,
    envs: dict[str, str] | None = None,
) -> Any:
    r = s.commands.run(
        f"python3 /tmp/insp.py {shlex.quote(expr)}", timeout=timeout, user=user, envs=envs or None
    )
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def eventually(cond: Callable[[], Any], limit: float = 30.0) -> Any:
    """Poll until `cond()` is truthy (audit events and log lines are written in batches)."""
    deadline = time.monotonic() + limit
    while True:
        got = cond()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


def lab_requests(host: str, since: float) -> list[dict[str, Any]]:
    """Every request the lab host received since `since` (p6's request log reader)."""
    from declawd.lab.requestlog import read_requests

    return list(read_requests(settings(), host=host, since=since))


def seen_upstream(host: str, needle: str, since: float, want: int = 1) -> list[dict[str, Any]]:
    """The lab log entries of `host` that contain `needle` anywhere (path, headers, body),
    polled until `want` of them arrived."""

    def found() -> list[dict[str, Any]]:
        return [r for r in lab_requests(host, since) if needle in json.dumps(r)]

    # The lab logs a request before it answers; the poll only covers the file write.
    eventually(lambda: len(found()) >= want, 15)
    return found()


def record_headers(rec: dict[str, Any]) -> dict[str, list[str]]:
    """A lab log entry's headers as name -> every value (the log keeps one string, or a
    list for a header sent more than once)."""
    return {
        name: list(value) if isinstance(value, list) else [value]
        for name, value in rec["headers"].items()
    }


def echo(result: dict[str, Any]) -> dict[str, Any]:
    """The lab's /anything answer from a client result, checked to be a 200."""
    assert "error" not in result, result
    assert result["status"] == 200, result
    doc: dict[str, Any] = json.loads(result["text"])
    return doc


def install_h2(s: Sandbox) -> dict[str, str]:
    """Make `httpx` HTTP/2-capable inside `s`: the template's `h2` if it has one, else the
    pure-python h2/hpack/hyperframe of this venv unpacked under /tmp/pylib. Returns the
    envs the probe needs."""
    if s.commands.run("python3 -c 'import h2'", timeout=30).exit_code == 0:
        return {}
    import h2
    import hpack
    import hyperframe

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for mod in (h2, hpack, hyperframe):
            root = Path(str(mod.__file__)).parent
            tar.add(
                root, arcname=root.name, filter=lambda t: None if "__pycache__" in t.name else t
            )
    s.files.write("/tmp/pylib.tgz", buf.getvalue())
    r = s.commands.run("mkdir -p /tmp/pylib && tar xzf /tmp/pylib.tgz -C /tmp/pylib", timeout=30)
    assert r.exit_code == 0, r.stderr
    return {"PYTHONPATH": "/tmp/pylib"}


def assert_rewritten_both_ways(
    result: dict[str, Any], host: str, m: str, t0: float
) -> dict[str, Any]:
    """The echo shows the outbound rewrite and came back through the inbound one; the lab log
    shows the upstream got the rewritten body and never the original token."""
    doc = echo(result)
    assert doc["json"] == CLIENT_SAW, doc
    assert "hello-out" not in result["text"] and "pong-in" not in result["text"]
    (rec,) = seen_upstream(host, m, t0)
    logged = json.dumps(rec)
    assert "rewritten-out" in logged and "pong-in" in logged, rec
    assert "hello-out" not in logged and "rewritten-in" not in logged, rec
    assert json.loads(rec["body"]) == UPSTREAM_SAW, rec  # still valid JSON, value by value
    return doc


# --- the matrix ----------------------------------------------------------------------------

CLIENTS = ["curl-h1", "curl-h2", "urllib", "requests", "httpx", "httpx-h2", "node"]
RUNSC_CLIENTS = CLIENTS if FULL else ["curl-h1", "urllib"]
MATRIX = [
    pytest.param(rt, client, host, id=f"{rt}-{client}-{host}")
    for rt in c.RUNTIMES
    for client in (CLIENTS if rt == "runc" else RUNSC_CLIENTS)
    for host in HOSTS
]
# The HTTP version the client must have negotiated with the proxy ("" = not observable).
CLIENT_VERSION = {"curl-h1": "1.1", "curl-h2": "2", "urllib": "1.1", "requests": "1.1"}
CLIENT_VERSION.update({"httpx": "1.1", "httpx-h2": "2", "node": ""})


@pytest.fixture(scope="module")
def sandboxes(server: dict[str, str]) -> Iterator[Callable[[str, str], Sandbox]]:
    """One inspecting sandbox per (runtime, template), made on first use."""
    made: dict[tuple[str, str], Sandbox] = {}

    def get(runtime: str, template: str) -> Sandbox:
        if (runtime, template) not in made:
            made[(runtime, template)] = create(runtime, template, inspecting(ALLOWED))
        return made[(runtime, template)]

    try:
        yield get
    finally:
        for s in made.values():
            s.kill(wait=True)


def _run_client(s: Sandbox, client: str, url: str) -> dict[str, Any]:
    if client == "node":
        s.files.write("/tmp/fetch.mjs", NODE_FETCH)
        r = s.commands.run(f"node /tmp/fetch.mjs {shlex.quote(url)}", timeout=120)
        assert r.exit_code == 0, r.stderr
        doc: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
        return doc
    envs = install_h2(s) if client == "httpx-h2" else {}
    return dict(probe(s, f"post({client!r}, {url!r})", envs=envs))


@pytest.mark.parametrize(("runtime", "client", "host"), MATRIX)
def test_client_request_rewritten_both_ways(
    sandboxes: Callable[[str, str], Sandbox], runtime: str, client: str, host: str
) -> None:
    s = sandboxes(runtime, "node" if client == "node" else "python")
    m, t0 = marker(), time.time()
    result = _run_client(s, client, f"https://{host}/anything?case={m}")
    doc = assert_rewritten_both_ways(result, host, m, t0)
    if CLIENT_VERSION[client]:
        assert result["version"] == CLIENT_VERSION[client], result
    # The proxy speaks to each upstream what it offers, whatever the client speaks.
    upstream_version = str(doc["http_version"])
    if host == H2_HOST:
        assert "2" in upstream_version and "1.1" not in upstream_version, doc
    else:
        assert "1.1" in upstream_version, doc
    assert doc["tls"] is True and doc["method"] == "POST"


def test_plain_http_request_rewritten_both_ways(sandboxes: Callable[[str, str], Sandbox]) -> None:
    s = sandboxes("runc", "python")
    m, t0 = marker(), time.time()
    result = probe(s, f"curl('http://{H1_HOST}/anything?case={m}')")
    doc = assert_rewritten_both_ways(result, H1_HOST, m, t0)
    assert doc["tls"] is False


@pytest.mark.parametrize("host", HOSTS)
def test_concurrent_h2_streams_each_rewritten(
    sandboxes: Callable[[str, str], Sandbox], host: str
) -> None:
    s = sandboxes("runc", "python")
    envs = install_h2(s)
    m, t0 = marker(), time.time()
    results = probe(s, f"httpx_h2_concurrent('https://{host}/anything?case={m}', 6)", envs=envs)
    assert isinstance(results, list) and len(results) == 6, results
    for i, result in enumerate(results):
        assert result["version"] == "HTTP/2", result
        assert echo(result)["json"] == CLIENT_SAW, result
        assert echo(result)["query"]["i"] == [str(i)], result
    logged = seen_upstream(host, m, t0, want=7)  # the warm-up request + 6
    assert len(logged) == 7
    assert all("hello-out" not in json.dumps(r) for r in logged)


def test_openai_package_chat_completion(sandboxes: Callable[[str, str], Sandbox]) -> None:
    s = sandboxes("runc", "python")
    m, t0 = marker(), time.time()
    got = probe(s, f"openai_chat(False, {PROMPT + ' ' + m!r})")
    assert got == {
        "role": "assistant",
        "content": f"say rewritten-out and rewritten-in {m}",
        "object": "chat.completion",
    }, got
    (rec,) = seen_upstream(H1_HOST, m, t0)
    assert "say rewritten-out and pong-in" in json.dumps(rec), rec
    assert "hello-out" not in json.dumps(rec)
    assert rec["target"].startswith("/v1/chat/completions"), rec


def test_openai_package_streamed_chat_completion(sandboxes: Callable[[str, str], Sandbox]) -> None:
    s = sandboxes("runc", "python")
    m, t0 = marker(), time.time()
    got = probe(s, f"openai_chat(True, {PROMPT + ' ' + m!r})")
    assert "error" not in got, got
    pieces = got["pieces"]
    assert len(pieces) >= 2, pieces  # streamed as several chunks, not one buffered answer
    # The echo shows the outbound rewrite. The lab cuts the answer every few characters,
    # so "pong-in" straddles two events; the proxy rewrites an SSE stream event by event
    # (each event's JSON), so a token cut between two events' values may stay as it is.
    # Whole-token inbound rewrites of SSE: test_inspection_bodies.
    text = "".join(pieces)
    assert text.replace("rewritten-in", "pong-in") == f"say rewritten-out and pong-in {m}", pieces
    (rec,) = seen_upstream(H1_HOST, m, t0)
    assert "hello-out" not in json.dumps(rec)
