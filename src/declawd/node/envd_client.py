"""Async client for envd, the agent inside every sandbox, over its unix socket.

The node's only way into a sandbox: processes and files go through here (protocol in
declawd/envd/PROTOCOL.md). Every envd error becomes an `EnvdError` subclass carrying
envd's status, code and message; a socket that cannot be reached is `EnvdUnavailable`.
Streams (events, wait, file transfers) run without timeouts.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import functools
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpcore
import httpx

__all__ = [
    "CommandTimeout",
    "EntryInfo",
    "EnvdClient",
    "EnvdError",
    "EnvdInvalid",
    "EnvdNotFound",
    "EnvdPermissionDenied",
    "EnvdUnavailable",
    "ProcessEvent",
    "ProcessInfo",
    "ProcessResult",
]

REQUEST_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
NO_TIMEOUT = httpx.Timeout(None, connect=5.0)
_CHUNK = 64 * 1024


class EnvdError(Exception):
    """An error answered by envd: HTTP status, machine code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.code!r}, {self.message!r})"


class EnvdNotFound(EnvdError):
    pass


class EnvdPermissionDenied(EnvdError):
    pass


class EnvdInvalid(EnvdError):
    pass


class EnvdUnavailable(EnvdError):
    """The socket is missing or refuses connections (envd not up, or gone)."""

    def __init__(self, message: str) -> None:
        super().__init__(503, "unavailable", message)


class CommandTimeout(TimeoutError):
    """`run` hit its timeout; the process group was killed. Carries the output so far."""

    def __init__(self, pid: int, stdout: bytes, stderr: bytes) -> None:
        super().__init__(f"process {pid} timed out")
        self.pid = pid
        self.stdout = stdout
        self.stderr = stderr


@dataclass(frozen=True)
class ProcessEvent:
    seq: int
    type: Literal["stdout", "stderr", "pty", "exit"] | str
    data: bytes = b""
    exit_code: int | None = None
    signal: int | None = None


@dataclass(frozen=True)
class ProcessResult:
    stdout: bytes
    stderr: bytes
    exit_code: int
    signal: int | None = None
    truncated: bool = False


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    cmd: str
    tag: str | None
    is_pty: bool
    envs: dict[str, str] = field(default_factory=dict)
    running: bool = True
    exit_code: int | None = None


@dataclass(frozen=True)
class EntryInfo:
    name: str
    path: str
    type: str
    size: int
    mode: int
    mtime: float
    symlink_target: str | None = None


def error_from_response(status: int, body: bytes) -> EnvdError:
    """Map an envd error response onto the exception hierarchy (pure)."""
    code, message = "", body.decode(errors="replace")[:500] or f"HTTP {status}"
    try:
        doc = json.loads(body)
        if isinstance(doc, dict):
            code = str(doc.get("code") or "")
            message = str(doc.get("message") or message)
    except ValueError:
        pass
    if status == 404:
        return EnvdNotFound(status, code or "not_found", message)
    if code == "permission_denied":
        return EnvdPermissionDenied(status, code, message)
    if 400 <= status < 500:
        return EnvdInvalid(status, code or "invalid", message)
    return EnvdError(status, code or "internal", message)


def parse_event(line: bytes | str) -> ProcessEvent:
    """Decode one NDJSON line of a process event stream (pure)."""
    doc = json.loads(line)
    return ProcessEvent(
        seq=int(doc.get("seq", 0)),
        type=str(doc["type"]),
        data=base64.b64decode(doc["data"]) if doc.get("data") else b"",
        exit_code=doc.get("exit_code"),
        signal=doc.get("signal"),
    )


def parse_entry(doc: Mapping[str, Any]) -> EntryInfo:
    return EntryInfo(
        name=str(doc["name"]),
        path=str(doc["path"]),
        type=str(doc["type"]),
        size=int(doc["size"]),
        mode=int(doc["mode"]),
        mtime=float(doc["mtime"]),
        symlink_target=doc.get("symlink_target"),
    )


def parse_process_info(doc: Mapping[str, Any]) -> ProcessInfo:
    return ProcessInfo(
        pid=int(doc["pid"]),
        cmd=str(doc.get("cmd", "")),
        tag=doc.get("tag") or None,
        is_pty=bool(doc.get("is_pty", False)),
        envs=dict(doc.get("envs") or {}),
        running=bool(doc.get("running", False)),
        exit_code=doc.get("exit_code"),
    )


def parse_result(doc: Mapping[str, Any]) -> ProcessResult:
    return ProcessResult(
        stdout=base64.b64decode(doc.get("stdout") or ""),
        stderr=base64.b64decode(doc.get("stderr") or ""),
        exit_code=int(doc["exit_code"]),
        signal=doc.get("signal"),
        truncated=bool(doc.get("truncated", False)),
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class BackendTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (request mapping, errors) over one of our httpcore network
    backends: envd's unix socket never through a symlink (`host/unixsock.py`), or a
    cluster tunnel to a node's envd (`cluster/tunnel.py`). httpx has no argument for a
    backend: its pool is replaced by one with ours, with httpx's default limits."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend, *, uds: str | None = None):
        # httpx builds and loads a CA store into a fresh SSL context for every transport
        # (~30 ms on the event loop, per create); envd speaks plain HTTP, so share one.
        tls = _unused_tls_context()
        super().__init__(uds=uds, verify=tls)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=tls,
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            uds=uds,
            network_backend=backend,
        )


@functools.cache
def _unused_tls_context() -> ssl.SSLContext:
    """A client TLS context with no CA loaded: fails closed if ever used for https."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class EnvdClient:
    """One sandbox's envd. Cheap to keep; `aclose()` releases the connection pool."""

    def __init__(self, socket_path: str, *, transport: httpx.AsyncBaseTransport | None = None):
        self.socket_path = socket_path
        self._http = httpx.AsyncClient(
            transport=transport or httpx.AsyncHTTPTransport(uds=socket_path),
            base_url="http://envd",
            timeout=REQUEST_TIMEOUT,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> EnvdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- transport -----------------------------------------------------------------

    async def _request(
        self, method: str, url: str, *, timeout: httpx.Timeout = REQUEST_TIMEOUT, **kw: Any
    ) -> httpx.Response:
        try:
            resp = await self._http.request(method, url, timeout=timeout, **kw)
        except (httpx.ConnectError, httpx.RemoteProtocolError, FileNotFoundError) as e:
            raise EnvdUnavailable(f"envd at {self.socket_path} unreachable: {e}") from e
        if resp.status_code >= 400:
            raise error_from_response(resp.status_code, resp.content)
        return resp

    async def _json(self, method: str, url: str, **kw: Any) -> Any:
        return (await self._request(method, url, **kw)).json()

    async def _stream_lines(self, url: str, params: dict[str, Any]) -> AsyncIterator[bytes]:
        try:
            async with self._http.stream("GET", url, params=params, timeout=NO_TIMEOUT) as resp:
                if resp.status_code >= 400:
                    raise error_from_response(resp.status_code, await resp.aread())
                async for line in resp.aiter_lines():
                    if line:
                        yield line.encode()
        except (httpx.ConnectError, FileNotFoundError) as e:
            raise EnvdUnavailable(f"envd at {self.socket_path} unreachable: {e}") from e

    # -- processes -----------------------------------------------------------------

    async def health(self) -> bool:
        try:
            doc = await self._json("GET", "/health", timeout=httpx.Timeout(5.0))
        except EnvdError:
            return False
        return bool(doc.get("ok"))

    async def start(
        self,
        cmd: str,
        *,
        user: str = "user",
        envs: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
        keep_stdin: bool = False,
        pty: tuple[int, int] | None = None,
        tag: str | None = None,
    ) -> int:
        """Start `cmd` under a login shell; `pty` is (cols, rows). Returns the pid."""
        body: dict[str, Any] = {"cmd": cmd, "user": user, "envs": dict(envs or {})}
        if cwd:
            body["cwd"] = cwd
        if stdin is not None:
            body["stdin"] = _b64(stdin)
        if keep_stdin:
            body["keep_stdin"] = True
        if pty is not None:
            body["pty"] = {"cols": pty[0], "rows": pty[1]}
        if tag:
            body["tag"] = tag
        doc = await self._json("POST", "/processes", json=body)
        return int(doc["pid"])

    async def events(self, pid: int, since: int = 0) -> AsyncIterator[ProcessEvent]:
        """Output events with seq > since (since=-1: only new ones), ending with "exit"."""
        async for line in self._stream_lines(f"/processes/{pid}/events", {"since": since}):
            yield parse_event(line)

    async def wait(self, pid: int) -> ProcessResult:
        doc = await self._json("GET", f"/processes/{pid}/wait", timeout=NO_TIMEOUT)
        return parse_result(doc)

    async def run(
        self, cmd: str, *, timeout: float | None = None, **start_kwargs: Any
    ) -> ProcessResult:
        """Start and wait; on timeout kill the process group and raise CommandTimeout."""
        pid = await self.start(cmd, **start_kwargs)
        try:
            # Not `wait_for`: on Python 3.11 it makes a task per call.
            async with asyncio.timeout(timeout):
                return await self.wait(pid)
        except TimeoutError:
            await self.signal(pid, 9)
            partial = await self.wait(pid)
            raise CommandTimeout(pid, partial.stdout, partial.stderr) from None

    async def list(self) -> list[ProcessInfo]:
        docs = await self._json("GET", "/processes")
        return [parse_process_info(d) for d in docs or []]

    async def info(self, pid: int) -> ProcessInfo:
        return parse_process_info(await self._json("GET", f"/processes/{pid}"))

    async def send_stdin(self, pid: int, data: bytes) -> None:
        await self._request("POST", f"/processes/{pid}/stdin", json={"data": _b64(data)})

    async def close_stdin(self, pid: int) -> None:
        await self._request("POST", f"/processes/{pid}/stdin/close")

    async def signal(self, pid: int, sig: int = 9) -> bool:
        doc = await self._json("POST", f"/processes/{pid}/signal", json={"signal": sig})
        return bool(doc.get("ok"))

    async def resize(self, pid: int, cols: int, rows: int) -> None:
        await self._request("POST", f"/processes/{pid}/resize", json={"cols": cols, "rows": rows})

    # -- files ---------------------------------------------------------------------

    async def read_file(self, path: str, user: str) -> bytes:
        resp = await self._request(
            "GET", "/files", params={"path": path, "user": user}, timeout=NO_TIMEOUT
        )
        return resp.content

    async def read_file_stream(self, path: str, user: str) -> AsyncIterator[bytes]:
        params = {"path": path, "user": user}
        try:
            async with self._http.stream("GET", "/files", params=params, timeout=NO_TIMEOUT) as r:
                if r.status_code >= 400:
                    raise error_from_response(r.status_code, await r.aread())
                async for chunk in r.aiter_bytes(_CHUNK):
                    yield chunk
        except (httpx.ConnectError, FileNotFoundError) as e:
            raise EnvdUnavailable(f"envd at {self.socket_path} unreachable: {e}") from e

    async def write_file(self, path: str, data: bytes | AsyncIterator[bytes], user: str) -> int:
        """Create or truncate `path` (parents created as `user`); returns bytes written."""
        doc = await self._json(
            "PUT",
            "/files",
            params={"path": path, "user": user},
            content=data,
            headers={"Content-Type": "application/octet-stream"},
            timeout=NO_TIMEOUT,
        )
        return int(doc["size"])

    async def list_dir(self, path: str, user: str, depth: int = 1) -> builtins.list[EntryInfo]:
        docs = await self._json(
            "GET", "/files/list", params={"path": path, "user": user, "depth": depth}
        )
        return [parse_entry(d) for d in docs]

    async def stat(self, path: str, user: str) -> EntryInfo:
        return parse_entry(
            await self._json("GET", "/files/stat", params={"path": path, "user": user})
        )

    async def exists(self, path: str, user: str) -> bool:
        doc = await self._json("GET", "/files/exists", params={"path": path, "user": user})
        return bool(doc["exists"])

    async def remove(self, path: str, user: str) -> None:
        await self._request("DELETE", "/files", params={"path": path, "user": user})

    async def rename(self, old: str, new: str, user: str) -> EntryInfo:
        body = {"old_path": old, "new_path": new, "user": user}
        return parse_entry(await self._json("POST", "/files/rename", json=body))

    async def make_dir(self, path: str, user: str) -> bool:
        doc = await self._json("POST", "/files/mkdir", json={"path": path, "user": user})
        return bool(doc["created"])

    async def watch(self, path: str, user: str, recursive: bool = False) -> str:
        body = {"path": path, "user": user, "recursive": recursive}
        return str((await self._json("POST", "/watch", json=body))["watch_id"])

    async def watch_events(self, watch_id: str, since: int = 0) -> AsyncIterator[dict[str, Any]]:
        """Filesystem events {type, path, timestamp, seq}; ends when the watch is removed."""
        async for line in self._stream_lines(f"/watch/{watch_id}/events", {"since": since}):
            yield json.loads(line)

    async def unwatch(self, watch_id: str) -> None:
        await self._request("DELETE", f"/watch/{watch_id}")
