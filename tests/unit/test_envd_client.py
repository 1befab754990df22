"""EnvdClient without envd: request shapes, response decoding and error mapping."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest

from declawd.node.envd_client import (
    CommandTimeout,
    EnvdClient,
    EnvdError,
    EnvdInvalid,
    EnvdNotFound,
    EnvdPermissionDenied,
    EnvdUnavailable,
    error_from_response,
    parse_event,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def client_for(handler) -> EnvdClient:  # type: ignore[no-untyped-def]
    return EnvdClient("/nonexistent.sock", transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (404, "not_found", EnvdNotFound),
        (400, "permission_denied", EnvdPermissionDenied),
        (400, "is_directory", EnvdInvalid),
        (409, "exists", EnvdInvalid),
        (500, "internal", EnvdError),
    ],
)
def test_error_responses_map_to_exception_classes(status: int, code: str, cls: type) -> None:
    err = error_from_response(status, json.dumps({"message": "m: /p", "code": code}).encode())
    assert type(err) is cls
    assert (err.status, err.code, err.message) == (status, code, "m: /p")


def test_non_json_error_body_keeps_its_text() -> None:
    err = error_from_response(502, b"bad gateway")
    assert (type(err), err.message) == (EnvdError, "bad gateway")


def test_parse_event_decodes_data_and_exit() -> None:
    e = parse_event(json.dumps({"seq": 3, "type": "stdout", "data": b64(b"\0\xff")}))
    assert (e.seq, e.type, e.data, e.exit_code) == (3, "stdout", b"\0\xff", None)
    x = parse_event('{"seq": 4, "type": "exit", "exit_code": 137, "signal": 9}')
    assert (x.type, x.data, x.exit_code, x.signal) == ("exit", b"", 137, 9)


async def test_start_sends_only_given_fields() -> None:
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"pid": 42})

    c = client_for(handler)
    assert await c.start("ls", user="root", stdin=b"in", pty=(100, 30), tag="t") == 42
    assert await c.start("ls") == 42
    await c.aclose()
    assert seen[0] == {
        "cmd": "ls",
        "user": "root",
        "envs": {},
        "stdin": b64(b"in"),
        "pty": {"cols": 100, "rows": 30},
        "tag": "t",
    }
    assert seen[1] == {"cmd": "ls", "user": "user", "envs": {}}


async def test_events_stream_is_parsed_line_by_line() -> None:
    body = (
        json.dumps({"seq": 1, "type": "pty", "data": b64(b"hi")})
        + "\n"
        + json.dumps({"seq": 2, "type": "exit", "exit_code": 0})
        + "\n"
    )

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/processes/7/events"
        assert request.url.params["since"] == "-1"
        return httpx.Response(200, content=body.encode())

    c = client_for(handler)
    events = [e async for e in c.events(7, since=-1)]
    await c.aclose()
    assert [(e.type, e.data) for e in events] == [("pty", b"hi"), ("exit", b"")]


async def test_errors_in_streams_raise_before_the_first_event() -> None:
    c = client_for(lambda r: httpx.Response(404, json={"message": "process 9 not found"}))
    with pytest.raises(EnvdNotFound, match="process 9"):
        [e async for e in c.events(9)]
    await c.aclose()


async def test_run_timeout_kills_and_returns_partial_output() -> None:
    calls: list[str] = []
    waits = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal waits
        calls.append(f"{request.method} {request.url.path}")
        if request.url.path == "/processes":
            return httpx.Response(200, json={"pid": 5})
        if request.url.path.endswith("/signal"):
            assert json.loads(request.content) == {"signal": 9}
            return httpx.Response(200, json={"ok": True})
        waits += 1
        if waits == 1:
            await asyncio.sleep(3600)
        return httpx.Response(
            200, json={"stdout": b64(b"so far"), "stderr": "", "exit_code": 137, "signal": 9}
        )

    c = client_for(handler)
    with pytest.raises(CommandTimeout) as exc:
        await c.run("sleep 1000", timeout=0.05)
    await c.aclose()
    assert (exc.value.pid, exc.value.stdout, exc.value.stderr) == (5, b"so far", b"")
    assert calls == [
        "POST /processes",
        "GET /processes/5/wait",
        "POST /processes/5/signal",
        "GET /processes/5/wait",
    ]


async def test_unreachable_socket_is_unavailable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    c = EnvdClient(str(tmp_path / "missing.sock"))
    with pytest.raises(EnvdUnavailable):
        await c.list()
    assert await c.health() is False
    await c.aclose()


async def test_file_entries_are_decoded() -> None:
    entry = {"name": "l", "path": "/l", "type": "file", "size": 3, "mode": 420, "mtime": 1.5}

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.params["depth"] == "2"
        return httpx.Response(200, json=[entry, {**entry, "symlink_target": "x"}])

    c = client_for(handler)
    got = await c.list_dir("/", "root", depth=2)
    await c.aclose()
    assert got[0].symlink_target is None and got[1].symlink_target == "x"
    assert (got[0].mode, got[0].mtime) == (0o644, 1.5)
