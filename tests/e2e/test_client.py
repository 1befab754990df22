"""`declawd.client` (sync and async) and `declawd audit` against a real server.

The pure parts (base-URL rule, error mapping, SSE decoding) are checked without a server;
everything else drives the real routes: policy read/replace, paged and streamed audit,
templates, build contexts, filesystem watch, health, and the documented error classes.
"""

from __future__ import annotations

import asyncio
import io
import tarfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from declaw import ALL_TRAFFIC, NetworkPolicy, Sandbox, SecurityPolicy
from typer.testing import CliRunner

from declawd import cli as declawd_cli
from declawd.client import (
    AsyncDeclawdClient,
    AuditEvent,
    BadRequest,
    Conflict,
    DeclawdClient,
    DeclawdError,
    NotFound,
    ServerError,
    SseDecoder,
    TemplateInfo,
    TransportError,
    Unauthorized,
    base_url,
    error_for,
)

pytestmark = pytest.mark.e2e


# --- pure ---------------------------------------------------------------------------------


def test_base_url_rule_matches_the_sdk() -> None:
    assert base_url("api.declaw.ai") == "https://api.declaw.ai:443"
    assert base_url("localhost:8080") == "http://localhost:8080"
    assert base_url("example.com:443") == "https://example.com:443"
    assert base_url("host:abc") == "https://host:abc:443"  # non-numeric tail stays in the host


def test_error_mapping_by_status() -> None:
    e = error_for(400, b'{"message": "network.allow_out[0]: bad", "code": "x"}')
    assert isinstance(e, BadRequest) and e.status == 400 and e.code == "x"
    assert e.message == "network.allow_out[0]: bad"
    assert isinstance(error_for(404, b"{}"), NotFound)
    assert isinstance(error_for(403, b"no"), Unauthorized)
    assert isinstance(error_for(409, b"{}"), Conflict)
    assert isinstance(error_for(503, b"down"), ServerError)
    assert error_for(503, b"down").message == "down"
    assert type(error_for(418, b"{}")) is DeclawdError


def test_sse_decoder() -> None:
    d = SseDecoder()
    out = [d.feed(line) for line in ["event: audit", 'data: {"a":', "data: 1}", "", ": ping", ""]]
    assert out == [None, None, None, ("audit", '{"a":\n1}'), None, None]


# --- against the server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(server: dict[str, str]) -> Iterator[DeclawdClient]:
    with DeclawdClient(api_key=server["key"], domain=server["domain"]) as c:
        yield c


@pytest.fixture(scope="module")
def sbx(server: dict[str, str]) -> Iterator[Sandbox]:
    s = Sandbox.create(
        template="python",
        timeout=300,
        security=SecurityPolicy(
            network=NetworkPolicy(allow_out=["api.openai.com"], deny_out=[ALL_TRAFFIC])
        ),
    )
    try:
        yield s
    finally:
        s.kill(wait=True)


def _lookup(s: Sandbox, *names: str) -> None:
    script = "import socket, sys\nfor n in sys.argv[1:]:\n    try:\n        socket.gethostbyname(n)\n    except OSError:\n        pass\n"
    s.files.write("/tmp/lookup.py", script)
    r = s.commands.run("python3 /tmp/lookup.py " + " ".join(names), timeout=30)
    assert r.exit_code == 0, r.stderr


def _wait_events(
    client: DeclawdClient,
    sandbox_id: str,
    pred: Callable[[list[AuditEvent]], bool],
    timeout: float = 15,
) -> list[AuditEvent]:
    deadline = time.monotonic() + timeout
    while True:
        events = list(client.audit(sandbox_id, limit=1000))
        if pred(events) or time.monotonic() > deadline:
            return events
        time.sleep(0.3)


def test_health_and_env_config(client: DeclawdClient, server: dict[str, str]) -> None:
    assert client.health()["ok"] is True
    # no arguments: DECLAW_DOMAIN / DECLAW_API_KEY (set by the server fixture), like the SDK
    with DeclawdClient() as env_client:
        assert env_client.base_url == f"http://localhost:{server['url'].rsplit(':', 1)[1]}"
        assert env_client.list_templates()


def test_errors_are_typed(client: DeclawdClient, server: dict[str, str], sbx: Sandbox) -> None:
    with pytest.raises(NotFound) as nf:
        client.get_network("sbx-000000000000")
    assert nf.value.status == 404
    with pytest.raises(BadRequest) as bad:
        client.set_network(sbx.sandbox_id, ["not a domain"], [ALL_TRAFFIC])
    assert "allow_out" in bad.value.message
    with (
        DeclawdClient(api_key="wrong", domain=server["domain"]) as anon,
        pytest.raises(Unauthorized),
    ):
        anon.get_network(sbx.sandbox_id)
    with DeclawdClient(api_key="x", domain="127.0.0.1:1") as dead, pytest.raises(TransportError):
        dead.health()


def test_network_policy_roundtrip(client: DeclawdClient, sbx: Sandbox) -> None:
    before = client.get_network(sbx.sandbox_id)
    assert before.allow_out == ["api.openai.com"] and before.deny_out == [ALL_TRAFFIC]
    try:
        new = client.set_network(sbx.sandbox_id, ["api.openai.com", "evil.com"], [ALL_TRAFFIC])
        assert new.allow_out == ["api.openai.com", "evil.com"]
        assert client.get_network(sbx.sandbox_id) == new
    finally:
        client.set_network(sbx.sandbox_id, ["api.openai.com"], [ALL_TRAFFIC])


def test_audit_pages_and_filters(client: DeclawdClient, sbx: Sandbox) -> None:
    _lookup(sbx, "api.openai.com", "evil.com", "example.com")
    events = _wait_events(
        client,
        sbx.sandbox_id,
        lambda ev: {"evil.com", "example.com"} <= {e.name for e in ev if e.verdict == "deny"},
    )
    assert len(events) >= 3
    # limit=1: one event per page, the iterator follows next_token through all of them
    paged = list(client.audit(sbx.sandbox_id, limit=1))
    assert [(e.time, e.name, e.verdict) for e in paged[: len(events)]] == [
        (e.time, e.name, e.verdict) for e in events
    ]
    denied = list(client.audit(sbx.sandbox_id, verdict="deny", kind="dns"))
    assert denied and all(e.verdict == "deny" and e.kind == "dns" for e in denied)
    assert {"evil.com", "example.com"} <= {e.name for e in denied}
    assert "api.openai.com" not in {e.name for e in denied}
    # (a microsecond ISO time does not round-trip exactly through the stored float: step back)
    since = events[-1].time - timedelta(milliseconds=1)
    later = list(client.audit(sbx.sandbox_id, since=since))
    assert later and all(e.time >= since for e in later)
    assert len(later) < len(paged) or events[0].time >= since
    with pytest.raises(BadRequest):
        list(client.audit(sbx.sandbox_id, verdict="maybe"))


def test_audit_stream_delivers_live_events(client: DeclawdClient, sbx: Sandbox) -> None:
    got: list[AuditEvent] = []
    marker = "b.c.example.org"  # not allowed: a dns deny event only this test causes

    def consume() -> None:
        for event in client.audit_stream(sbx.sandbox_id):
            got.append(event)
            if event.name == marker:
                return

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    time.sleep(1.0)  # let the stream attach; it starts at the newest event
    _lookup(sbx, marker)
    t.join(30)
    assert not t.is_alive(), "no live event arrived"
    assert any(e.name == marker and e.verdict == "deny" and e.kind == "dns" for e in got)


def test_audit_stream_ends_with_the_sandbox_and_cli_follow(
    client: DeclawdClient, server: dict[str, str]
) -> None:
    s = Sandbox.create(
        template="python",
        timeout=120,
        security=SecurityPolicy(
            network=NetworkPolicy(allow_out=["api.openai.com"], deny_out=[ALL_TRAFFIC])
        ),
    )
    try:
        _lookup(s, "api.openai.com", "evil.com")
        _wait_events(client, s.sandbox_id, lambda ev: any(e.name == "evil.com" for e in ev))
        cli = declawd_cli.app  # the real `declawd` command, audit registered as it ships
        runner = CliRunner()
        plain = runner.invoke(cli, ["audit", s.sandbox_id, "--verdict", "deny"])
        assert plain.exit_code == 0, plain.output
        assert "evil.com" in plain.output and "api.openai.com" not in plain.output
        result: dict[str, object] = {}

        def follow() -> None:
            result["r"] = runner.invoke(cli, ["audit", s.sandbox_id, "--follow"])

        t = threading.Thread(target=follow, daemon=True)
        t.start()
        time.sleep(1.0)
        assert t.is_alive()  # following: it only ends with the sandbox
    finally:
        s.kill(wait=True)
    t.join(30)
    assert not t.is_alive(), "--follow did not end with the sandbox"
    r = result["r"]
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    lines = r.output.splitlines()  # type: ignore[attr-defined]
    assert any("evil.com" in line and "deny" in line for line in lines)
    assert any("api.openai.com" in line and "allow" in line for line in lines)
    missing = runner.invoke(cli, ["audit", "sbx-000000000000"])
    assert missing.exit_code == 1 and "404" in missing.output


def test_templates_and_contexts(client: DeclawdClient, tmp_path: Path) -> None:
    aliases = {t.alias: t for t in client.list_templates()}
    assert {"base", "python"} <= set(aliases)
    python = client.get_template("python")
    assert python.template_id == aliases["python"].template_id and python.state == "ready"
    with pytest.raises(NotFound):
        client.get_template("no-such-template")
    with pytest.raises(Conflict):
        client.delete_template("python")  # a built-in
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print('hi')\n")
    assert client.upload_context(tmp_path).startswith("ctx")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "app", arcname="app")
    assert client.upload_context(buf.getvalue())
    with pytest.raises(BadRequest):
        client.upload_context(b"not a tarball")


def test_watch_events(client: DeclawdClient, sbx: Sandbox) -> None:
    sbx.commands.run("mkdir -p /tmp/watched")
    watch_id = client.watch(sbx.sandbox_id, "/tmp/watched", recursive=True)
    got: list[dict[str, object]] = []

    def consume() -> None:
        for ev in client.watch_events(sbx.sandbox_id, watch_id):
            got.append(dict(ev))
            if str(ev["path"]).endswith("hello.txt"):
                return

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    time.sleep(0.5)
    sbx.files.write("/tmp/watched/hello.txt", "hi")
    t.join(30)
    client.unwatch(sbx.sandbox_id, watch_id)
    assert not t.is_alive(), got
    assert any(str(e["path"]).endswith("hello.txt") and e["type"] for e in got)


def test_async_client(server: dict[str, str], sbx: Sandbox) -> None:
    async def run() -> None:
        async with AsyncDeclawdClient(api_key=server["key"], domain=server["domain"]) as c:
            assert (await c.health())["ok"] is True
            policy = await c.get_network(sbx.sandbox_id)
            assert policy.allow_out == ["api.openai.com"]
            events = [e async for e in c.audit(sbx.sandbox_id, limit=2)]
            assert events and all(e.sandbox_id == sbx.sandbox_id for e in events)
            assert [t.alias async for t in _aiter(await c.list_templates())]
            with pytest.raises(NotFound):
                await c.get_network("sbx-000000000000")

    asyncio.run(run())


async def _aiter(items: list[TemplateInfo]) -> AsyncIterator[TemplateInfo]:
    for item in items:
        yield item
