"""Port tunnels: an API server reaches a port inside a sandbox on another machine.

In the single-process server the ports route (api/ports.py) opens its connection inside the
sandbox's network namespace. In cluster mode that namespace is on the sandbox's node, so the
node agent serves tunnels on `DECLAWD_NODE_TUNNEL_PORT` (8445): mutual TLS against the
cluster CA, the control plane's certificate only (as the internal API). One connection is one
tunnel:

    API server → node:  {"sandbox_id": "...", "port": N}\\n        (one JSON line, ≤ 1 KiB)
    node → API server:  {"ok": true}\\n  or  a domain error (cluster/wire.py)\\n
    then the bytes both ways, in frames (4-byte length, then data; an empty frame is that
    direction's end, so half-closes pass), until both directions ended.

The node checks the sandbox is its own and running and connects exactly as the local ports
route does (`connect_in_netns`: loopback first, so servers bound to the sandbox's loopback
are reachable), so the error messages are the same. On the API server the ports code gets a
plain socket (one end of a socketpair) and runs unchanged (HTTP, SSE, WebSocket); a pump
copies between the pair and the TLS stream.

Why a raw TLS listener and not a route of the internal API: uvicorn's HTTP/1.1 has no
upgrade to a raw stream but WebSocket, and httpx sends a whole request body before it reads
the answer, so neither carries both directions at once without framing of our own.
Invariant: both sockets of a tunnel are closed on every path out, on both machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import httpcore

from declawd.cluster.ca import CONTROL_PLANE
from declawd.cluster.tls import peer_common_name
from declawd.cluster.wire import error_body, error_from_body
from declawd.errors import DeclawdError, Forbidden, InvalidInput, Unreachable

log = logging.getLogger(__name__)

HELLO_LIMIT = 1024
HELLO_TIMEOUT_S = 10.0
CHUNK = 64 * 1024
EOF_FRAME = (0).to_bytes(4, "big")

# What the node does with a tunnel's hello: the connected socket in the sandbox (`port`;
# None: the sandbox's envd socket), or a domain error (not its sandbox, not running,
# nothing listens on the port).
OpenPort = Callable[[str, int | None], Awaitable[socket.socket]]


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def parse_hello(raw: bytes) -> tuple[str, int | None]:
    """The sandbox id and port a hello asks for (None: `"envd": true`, its envd socket);
    InvalidInput naming the field otherwise."""
    try:
        hello = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput("hello", "is not a JSON line") from exc
    if not isinstance(hello, dict):
        raise InvalidInput("hello", "must be a JSON object")
    sandbox_id, port = hello.get("sandbox_id"), hello.get("port")
    if not isinstance(sandbox_id, str) or not sandbox_id:
        raise InvalidInput("sandbox_id", "must be a sandbox id")
    if hello.get("envd") is True and port is None:
        return sandbox_id, None
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidInput("port", "must be an integer from 1 to 65535")
    return sandbox_id, port


async def _to_tls(plain: asyncio.StreamReader, tls: asyncio.StreamWriter) -> None:
    """Plain → TLS as frames; the plain side's EOF becomes an empty frame (TLS under asyncio
    cannot half-close, and HTTP/1.0 or a client that shuts down its sending side needs it)."""
    while data := await plain.read(CHUNK):
        tls.write(len(data).to_bytes(4, "big") + data)
        await tls.drain()
    tls.write(EOF_FRAME)
    await tls.drain()


async def _from_tls(tls: asyncio.StreamReader, plain: asyncio.StreamWriter) -> None:
    """TLS frames → plain; an empty frame ends the plain side's receiving direction."""
    while size := int.from_bytes(await tls.readexactly(4), "big"):
        if size > CHUNK:
            raise ConnectionError(f"tunnel frame of {size} bytes is over {CHUNK}")
        plain.write(await tls.readexactly(size))
        await plain.drain()
    if plain.can_write_eof():
        plain.write_eof()


async def relay(
    tls: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    plain: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    """Bytes both ways until both directions ended; a side that breaks (reset, a torn TLS
    stream) ends both. Closes both."""
    pumps = [
        asyncio.ensure_future(_to_tls(plain[0], tls[1])),
        asyncio.ensure_future(_from_tls(tls[0], plain[1])),
    ]
    try:
        for done in asyncio.as_completed(pumps):
            await done  # a failure ends the tunnel; a clean end waits for the other way
    except (ConnectionError, OSError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        for p in pumps:
            p.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        for w in (tls[1], plain[1]):
            w.close()
        for w in (tls[1], plain[1]):
            with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
                await w.wait_closed()


# The node's side ---------------------------------------------------------------------------
async def serve_tunnels(
    open_port: OpenPort, ssl_context: ssl.SSLContext, host: str, port: int
) -> asyncio.Server:
    """Listen for tunnels; each is checked (peer, hello) and then relayed."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        inside: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            if peer_common_name(writer) != CONTROL_PLANE:
                raise Forbidden("tunnels take calls from the control plane only")
            try:
                raw = await asyncio.wait_for(reader.readuntil(b"\n"), HELLO_TIMEOUT_S)
            except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError) as exc:
                raise InvalidInput("hello", "one JSON line of at most 1 KiB expected") from exc
            if len(raw) > HELLO_LIMIT:
                raise InvalidInput("hello", "one JSON line of at most 1 KiB expected")
            sandbox_id, target = parse_hello(raw)
            sock = await open_port(sandbox_id, target)
            inside = await asyncio.open_connection(sock=sock, limit=CHUNK)
            writer.write(_line({"ok": True}))
            await writer.drain()
        except DeclawdError as exc:
            with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
                writer.write(_line(error_body(exc)))
                await writer.drain()
            writer.close()
            return
        except (ConnectionError, OSError, ssl.SSLError):
            writer.close()
            return
        await relay((reader, writer), inside)

    return await asyncio.start_server(
        handle, host, port, ssl=ssl_context, limit=CHUNK, reuse_address=True
    )


# The API server's side --------------------------------------------------------------------
async def open_tunnel(
    host: str, port: int, ssl_context: ssl.SSLContext, sandbox_id: str, target: int
) -> socket.socket:
    """A local socket whose peer is `target` inside the sandbox, through its node's tunnel.

    Errors the node answers are raised as the same domain errors; a node that does not
    answer is `Unreachable`. The pump runs until either end closes.
    """
    reader, writer = await _hello(
        host, port, ssl_context, {"sandbox_id": sandbox_id, "port": target}
    )
    try:
        ours, theirs = socket.socketpair()
    except BaseException:
        writer.close()
        raise
    try:
        local = await asyncio.open_connection(sock=theirs, limit=CHUNK)
    except BaseException:
        ours.close()
        theirs.close()
        writer.close()
        raise
    task = asyncio.get_running_loop().create_task(relay((reader, writer), local))
    _RELAYS.add(task)
    task.add_done_callback(_RELAYS.discard)
    return ours


async def _hello(
    host: str, port: int, ssl_context: ssl.SSLContext, hello: dict[str, Any]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A tunnel connection the node accepted (its `ok` read), or the error it answered."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ssl_context, limit=CHUNK),
            HELLO_TIMEOUT_S,
        )
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        raise Unreachable(f"node tunnel {host}:{port} did not answer: {exc}") from exc
    try:
        writer.write(_line(hello))
        await writer.drain()
        raw = await asyncio.wait_for(reader.readline(), HELLO_TIMEOUT_S + 5)
        answer = json.loads(raw) if raw else {}
        if not isinstance(answer, dict) or answer.get("ok") is not True:
            body = answer if isinstance(answer, dict) and answer else {}
            if not body:
                raise Unreachable(f"node tunnel {host}:{port} closed without an answer")
            raise error_from_body(502, body)
    except BaseException:
        writer.close()
        raise
    return reader, writer


# envd over a tunnel: HTTP/1.1 from httpx straight to the sandbox's envd socket -------------
class TunnelStream(httpcore.AsyncNetworkStream):
    """One tunnel as httpcore's byte stream (the framing of `relay`, spoken here)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._pending = b""
        self._eof = False

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if not self._pending and not self._eof:
            try:
                async with asyncio.timeout(timeout):
                    size = int.from_bytes(await self._reader.readexactly(4), "big")
                    if size > CHUNK:
                        raise httpcore.ReadError(f"tunnel frame of {size} bytes is over {CHUNK}")
                    if size:
                        self._pending = await self._reader.readexactly(size)
                    else:
                        self._eof = True
            except TimeoutError as exc:
                raise httpcore.ReadTimeout(str(exc)) from exc
            except (asyncio.IncompleteReadError, ConnectionError, OSError, ssl.SSLError) as exc:
                raise httpcore.ReadError(f"tunnel: {exc}") from exc
        out, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return out

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            for i in range(0, len(buffer), CHUNK):
                part = buffer[i : i + CHUNK]
                self._writer.write(len(part).to_bytes(4, "big") + part)
            async with asyncio.timeout(timeout):
                await self._writer.drain()
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        except (ConnectionError, OSError, ssl.SSLError) as exc:
            raise httpcore.WriteError(f"tunnel: {exc}") from exc

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
            await self._writer.wait_closed()

    def get_extra_info(self, info: str) -> Any:
        return None


class EnvdTunnels(httpcore.AsyncNetworkBackend):
    """httpcore's "network" for one sandbox's envd: each connection is a tunnel to it."""

    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext, sandbox_id: str):
        self._target = (host, port, ssl_context)
        self._hello = {"sandbox_id": sandbox_id, "envd": True}

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            reader, writer = await _hello(*self._target, self._hello)
        except DeclawdError as exc:
            raise httpcore.ConnectError(exc.message) from exc
        return TunnelStream(reader, writer)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("envd tunnels are reached by connect_tcp")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


_RELAYS: set[asyncio.Task[None]] = set()
