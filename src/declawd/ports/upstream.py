"""The connection to a server inside a sandbox, and HTTP/1.1 over it (h11, sans-IO).

The socket is made inside the sandbox's network namespace (a socket keeps the namespace it
was created in), so 127.0.0.1 is the sandbox's own loopback: a server that listens only
there is reachable, exactly as from a process in the sandbox. Addresses are tried in order
(loopback, the sandbox's address, IPv6 loopback); when none accepts, the error says that
nothing listens on the port. Invariant: the socket is closed on every path out.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import Callable, Sequence

import h11

from declawd.errors import Unreachable
from declawd.host.netns import call_in_netns

CONNECT_TIMEOUT_S = 10.0
READ_SIZE = 64 * 1024
# Refusals that mean "not on this address": try the next one.
_NOT_HERE = (errno.ECONNREFUSED, errno.EADDRNOTAVAIL, errno.ENETUNREACH, errno.EAFNOSUPPORT)


MakeSockets = Callable[[str, Sequence[int]], list[socket.socket | None]]


class UpstreamBroken(Exception):
    """The sandbox's server broke the exchange after the response had started."""


def candidates(address: str | None) -> list[tuple[int, str]]:
    """Where a server on the port may listen, in the order tried."""
    out: list[tuple[int, str]] = [(socket.AF_INET, "127.0.0.1")]
    if address and address != "127.0.0.1":
        out.append((socket.AF_INET, address))
    out.append((socket.AF_INET6, "::1"))
    return out


def _sockets_in(netns: str, families: Sequence[int]) -> list[socket.socket | None]:
    """One TCP socket per family, all made on one thread that entered `netns`."""

    def make() -> list[socket.socket | None]:
        out: list[socket.socket | None] = []
        for family in families:
            try:
                out.append(socket.socket(family, socket.SOCK_STREAM))
            except OSError:  # e.g. no IPv6 in this kernel
                out.append(None)
        return out

    return call_in_netns(netns, make)


async def connect_in_netns(
    netns: str,
    port: int,
    addresses: Sequence[tuple[int, str]],
    *,
    what: str,
    timeout: float = CONNECT_TIMEOUT_S,
    make: MakeSockets | None = None,
) -> socket.socket:
    """A socket connected to `port` from inside `netns` on the first address that accepts.

    `what` names the sandbox in errors: 502 `nothing listens on port N in <what>` when
    every address refused, 502 too when the connection was not accepted within `timeout`.
    `make` creates the sockets (default: inside `netns`; tests make them where they are).
    """
    try:
        socks = await asyncio.to_thread(make or _sockets_in, netns, [f for f, _ in addresses])
    except OSError as exc:  # the namespace is gone: the sandbox is being torn down
        raise Unreachable(f"{what} has no network namespace: {exc.strerror or exc}") from exc
    loop = asyncio.get_running_loop()
    connected: socket.socket | None = None
    try:
        for sock, (_family, host) in zip(socks, addresses, strict=True):
            if sock is None:
                continue
            sock.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
            except TimeoutError as exc:
                raise Unreachable(
                    f"port {port} in {what} did not accept a connection within {timeout:g} s"
                ) from exc
            except OSError as exc:
                if exc.errno in _NOT_HERE:
                    continue
                raise Unreachable(f"port {port} in {what}: {exc.strerror or exc}") from exc
            connected = sock
            break
    finally:
        for sock in socks:
            if sock is not None and sock is not connected:
                sock.close()
    if connected is None:
        raise Unreachable(f"nothing listens on port {port} in {what}")
    connected.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connected


class HttpUpstream:
    """One HTTP/1.1 request and its response over a connected socket.

    The request body and the response may flow at the same time (one task sends, another
    receives): h11 keeps the two directions' states apart.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def over(cls, sock: socket.socket) -> HttpUpstream:
        reader, writer = await asyncio.open_connection(sock=sock, limit=READ_SIZE)
        return cls(reader, writer)

    async def _write(self, event: h11.Event) -> None:
        data = self._h11.send(event)
        if data:
            self._writer.write(data)
            await self._writer.drain()

    async def send_request(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        await self._write(h11.Request(method=method, target=target, headers=headers))

    async def send_data(self, data: bytes) -> None:
        await self._write(h11.Data(data=data))

    async def end_request(self) -> None:
        await self._write(h11.EndOfMessage())

    async def next_event(self) -> h11.Event:
        """The next event of the response (Response, Data, EndOfMessage, ConnectionClosed),
        informational (1xx) responses skipped. Malformed HTTP → h11.RemoteProtocolError."""
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                self._h11.receive_data(await self._reader.read(READ_SIZE))
                continue
            if event is h11.PAUSED:  # only after a complete exchange: nothing more comes
                return h11.ConnectionClosed()
            if isinstance(event, h11.InformationalResponse):
                continue
            assert isinstance(event, h11.Event)
            return event

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()
