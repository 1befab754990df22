"""Command, PTY and stdio routes (declaw-api.md §3 and §5), all served by the sandbox's envd.

A foreground command's `timeout` kills its whole process group and answers 408; background
commands are not limited by it. Streams are SSE in the exact shapes the SDK parses.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request

from declawd.api.access import envd_errors, sandbox_client, sse
from declawd.api.activity import CommandGate
from declawd.api.app import Team, current_team, services
from declawd.api.body import field, int_query, json_body, str_map
from declawd.errors import Forbidden, InvalidInput, NotFound, TimedOut
from declawd.node.envd_client import CommandTimeout, EnvdClient, EnvdError, EnvdNotFound
from declawd.store import SandboxRecord

router = APIRouter()

PTY_SHELL = "exec /bin/bash -i 2>/dev/null || exec /bin/sh -i"
# What the custom policy's cmd package sees of a PTY: the interactive shell it spawns (what
# is typed into it later is keystrokes, not spawns the API can check).
PTY_ARGV = ("/bin/bash", "-i")


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _pid(value: str) -> int:
    try:
        pid = int(value)
    except ValueError as exc:
        raise InvalidInput("pid", f"must be an integer, got {value!r}") from exc
    if pid <= 0:
        raise InvalidInput("pid", "must be positive")
    return pid


def _timeout(body: dict[str, Any], default: float | None) -> float | None:
    value = field(body, "timeout", (int, float))
    if value is None:
        return default
    if value < 0:
        raise InvalidInput("timeout", "must not be negative")
    return float(value) or None  # 0 = no limit


def _start_args(request: Request, rec: SandboxRecord, body: dict[str, Any]) -> dict[str, Any]:
    user = field(body, "user", str, default="user") or "user"
    cwd = field(body, "cwd", str)
    if cwd is not None and not cwd.startswith("/"):
        raise InvalidInput("cwd", f"must be an absolute path, got {cwd!r}")
    envs = services(request).node.envs(rec)
    envs.update(str_map(body, "envs"))
    return {"user": user, "envs": envs, "cwd": cwd or None}


# --- commands -------------------------------------------------------------------------
@router.post("/sandboxes/{sandbox_id}/commands")
async def run_command(sandbox_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    rec, client = await sandbox_client(request, team, sandbox_id)
    body = await json_body(request)
    cmd = field(body, "cmd", str, required=True)
    background = field(body, "background", bool, default=False)
    stdin = field(body, "stdin", str)
    args = _start_args(request, rec, body)
    timeout = _timeout(body, 60.0)
    gate = CommandGate(request, rec, line=cmd, user=args["user"], envs=args["envs"], kind="command")
    await gate.check()
    with envd_errors():
        if background:
            pid = await client.start(
                cmd,
                **args,
                stdin=stdin.encode() if stdin is not None else None,
                keep_stdin=stdin is None,
                tag="command",
            )
            await gate.done(None, pid=pid, background=True)
            return {"pid": pid}
        try:
            result = await client.run(
                cmd,
                timeout=timeout,
                **args,
                stdin=stdin.encode() if stdin is not None else None,
            )
        except CommandTimeout as exc:
            await gate.done(None, pid=exc.pid, timed_out=True)
            raise TimedOut(
                f"command timed out after {timeout:g}s and was killed (pid {exc.pid})"
            ) from exc
    await gate.done(result.exit_code)
    return {
        "stdout": _text(result.stdout),
        "stderr": _text(result.stderr),
        "exit_code": result.exit_code,
    }


@router.get("/sandboxes/{sandbox_id}/commands")
async def list_commands(
    sandbox_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    _, client = await sandbox_client(request, team, sandbox_id)
    with envd_errors():
        procs = await client.list()
    return [
        {"pid": p.pid, "cmd": p.cmd, "is_pty": p.is_pty, "envs": p.envs or {}, "tag": p.tag}
        for p in procs
        if p.running and p.tag != "start_cmd"
    ]


@router.delete("/sandboxes/{sandbox_id}/commands/{pid}")
@router.delete("/sandboxes/{sandbox_id}/pty/{pid}")
@router.delete("/sandboxes/{sandbox_id}/stdio/{pid}")  # pid is the stdio cmd_id
async def kill_command(
    sandbox_id: str, pid: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    _, client = await sandbox_client(request, team, sandbox_id)
    with envd_errors():
        try:
            return {"killed": await client.signal(_pid(pid), 9)}
        except EnvdNotFound:
            return {"killed": False}


@router.post("/sandboxes/{sandbox_id}/commands/{pid}/stdin")
@router.post("/sandboxes/{sandbox_id}/pty/{pid}/stdin")
async def text_stdin(
    sandbox_id: str, pid: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    _, client = await sandbox_client(request, team, sandbox_id)
    body = await json_body(request)
    data = field(body, "data", str, required=True)
    # Plain text for commands and PTYs alike (stdio's stdin is base64, below).
    with envd_errors(f"process {pid}"):
        await client.send_stdin(_pid(pid), data.encode())
    return {"ok": True}


@router.get("/sandboxes/{sandbox_id}/commands/{pid}/wait")
async def wait_command(
    sandbox_id: str, pid: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    _, client = await sandbox_client(request, team, sandbox_id)
    with envd_errors(f"process {pid}"):
        result = await client.wait(_pid(pid))
    return {
        "stdout": _text(result.stdout),
        "stderr": _text(result.stderr),
        "exit_code": result.exit_code,
    }


@router.post("/sandboxes/{sandbox_id}/commands/stream")
async def stream_command(
    sandbox_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    rec, client = await sandbox_client(request, team, sandbox_id)
    body = await json_body(request)
    cmd = field(body, "cmd", str, required=True)
    args = _start_args(request, rec, body)
    timeout = _timeout(body, 60.0)
    gate = CommandGate(request, rec, line=cmd, user=args["user"], envs=args["envs"], kind="command")
    try:
        await gate.check()
    except Forbidden as exc:
        # The SDK reads run_stream's events, not its status: the deny is an error event
        # and a non-zero exit (126: "cannot execute", as a shell says of a refused command).
        return sse(_refused(exc.message), status=403)
    with envd_errors():
        pid = await client.start(cmd, **args, tag="command")

    async def events() -> AsyncIterator[tuple[str | None, dict[str, Any]]]:
        queue: asyncio.Queue[tuple[str | None, dict[str, Any]] | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for ev in client.events(pid, since=0):
                    if ev.type == "exit":
                        await queue.put(("exit", {"exit_code": ev.exit_code}))
                        await gate.done(ev.exit_code, pid=pid, stream=True)
                        break
                    await queue.put((ev.type, {"type": ev.type, "data": _text(ev.data)}))
            except Exception as exc:
                await queue.put(("error", {"error": f"stream failed: {exc}"}))
            finally:
                await queue.put(None)

        task = asyncio.get_running_loop().create_task(pump())
        try:
            deadline = asyncio.get_running_loop().time() + timeout if timeout else None
            while True:
                remaining = (
                    None if deadline is None else deadline - asyncio.get_running_loop().time()
                )
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    # the process may have exited meanwhile, or the sandbox gone: both fine
                    with contextlib.suppress(EnvdError, OSError):
                        await client.signal(pid, 9)
                    yield (
                        "error",
                        {"error": f"command timed out after {timeout:g}s and was killed"},
                    )
                    yield ("exit", {"exit_code": 124})
                    await gate.done(None, pid=pid, stream=True, timed_out=True)
                    return
                if item is None:
                    return
                yield item
        finally:
            task.cancel()

    return sse(events())


async def _refused(message: str) -> AsyncIterator[tuple[str | None, dict[str, Any]]]:
    yield ("error", {"error": message})
    yield ("exit", {"exit_code": 126})


# --- PTY ------------------------------------------------------------------------------
def _size(body: dict[str, Any], label: str = "size") -> tuple[int, int]:
    size = field(body, "size", dict, default={})
    cols = field(size, "cols", int, default=80, prefix=label + ".")
    rows = field(size, "rows", int, default=24, prefix=label + ".")
    if not (1 <= cols <= 1000 and 1 <= rows <= 1000):
        raise InvalidInput(label, "cols and rows must be between 1 and 1000")
    return cols, rows


@router.post("/sandboxes/{sandbox_id}/pty")
async def create_pty(sandbox_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    rec, client = await sandbox_client(request, team, sandbox_id)
    body = await json_body(request)
    cols, rows = _size(body)
    args = _start_args(request, rec, body)
    args["envs"].setdefault("TERM", "xterm-256color")
    timeout = _timeout(body, 3600.0)
    gate = CommandGate(
        request, rec, argv=PTY_ARGV, user=args["user"], envs=args["envs"], kind="pty"
    )
    await gate.check()
    with envd_errors():
        pid = await client.start(PTY_SHELL, **args, pty=(cols, rows), keep_stdin=True, tag="pty")
    await gate.done(None, pid=pid)
    if timeout:
        services(request).node.background(_kill_later(client, pid, timeout))
    return {"pid": pid}


async def _kill_later(client: EnvdClient, pid: int, delay: float) -> None:
    await asyncio.sleep(delay)
    # the PTY may have exited meanwhile, or the sandbox gone (its client closed): both fine
    with contextlib.suppress(EnvdError, OSError, RuntimeError):
        await client.signal(pid, 9)


@router.get("/sandboxes/{sandbox_id}/pty/{pid}/stream")
async def pty_stream(
    sandbox_id: str, pid: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    rec, client = await sandbox_client(request, team, sandbox_id)
    n = _pid(pid)
    # The first subscriber sees the output from the start (the prompt printed before it
    # connected); later subscribers see output from when they connect.
    since = services(request).node.pty_since(rec, n)
    with envd_errors(f"pty {pid}"):
        procs = {p.pid: p for p in await client.list()}
    if n not in procs or not procs[n].is_pty:
        raise NotFound(f"pty {pid} not found")

    async def events() -> AsyncIterator[tuple[str | None, dict[str, Any]]]:
        async for ev in client.events(n, since=since):
            if ev.type == "exit":
                yield ("exit", {"exit_code": ev.exit_code})
                return
            yield ("data", {"data": base64.b64encode(ev.data).decode()})

    return sse(events())


@router.patch("/sandboxes/{sandbox_id}/pty/{pid}")
async def pty_resize(
    sandbox_id: str, pid: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    _, client = await sandbox_client(request, team, sandbox_id)
    body = await json_body(request)
    cols, rows = _size(body)
    with envd_errors(f"pty {pid}"):
        await client.resize(_pid(pid), cols, rows)
    return {"ok": True}


# --- stdio ----------------------------------------------------------------------------
@router.post("/sandboxes/{sandbox_id}/stdio")
async def stdio_start(sandbox_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    rec, client = await sandbox_client(request, team, sandbox_id)
    body = await json_body(request)
    cmd = field(body, "cmd", str, required=True)
    args = _start_args(request, rec, body)
    gate = CommandGate(request, rec, line=cmd, user=args["user"], envs=args["envs"], kind="stdio")
    await gate.check()
    with envd_errors():
        pid = await client.start(cmd, **args, keep_stdin=True, tag="stdio")
    await gate.done(None, pid=pid)
    return {"cmd_id": str(pid)}


@router.post("/sandboxes/{sandbox_id}/stdio/{cmd_id}/stdin")
async def stdio_stdin(
    sandbox_id: str, cmd_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    _, client = await sandbox_client(request, team, sandbox_id)
    body = await json_body(request)
    raw = field(body, "data", str, required=True)
    try:
        data = base64.b64decode(raw, validate=True)
    except ValueError as exc:
        raise InvalidInput("data", "must be base64") from exc
    with envd_errors(f"stdio {cmd_id}"):
        await client.send_stdin(_pid(cmd_id), data)
    return {"ok": True}


@router.post("/sandboxes/{sandbox_id}/stdio/{cmd_id}/stdin/close")
async def stdio_close(
    sandbox_id: str, cmd_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    _, client = await sandbox_client(request, team, sandbox_id)
    with envd_errors(f"stdio {cmd_id}"):
        await client.close_stdin(_pid(cmd_id))
    return {"ok": True}


@router.get("/sandboxes/{sandbox_id}/stdio/{cmd_id}/stream")
async def stdio_stream(
    sandbox_id: str, cmd_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    _, client = await sandbox_client(request, team, sandbox_id)
    n = _pid(cmd_id)
    since = int_query(request.query_params.get("last_entry_id"), "last_entry_id", minimum=0) or 0
    with envd_errors(f"stdio {cmd_id}"):
        if n not in {p.pid for p in await client.list()}:
            raise NotFound(f"stdio {cmd_id} not found")

    async def events() -> AsyncIterator[tuple[str | None, dict[str, Any]]]:
        async for ev in client.events(n, since=since):
            if ev.type == "exit":
                yield ("exit", {"exit_code": ev.exit_code})
                return
            yield (ev.type, {"entry_id": ev.seq, "data": base64.b64encode(ev.data).decode()})

    return sse(events())
