"""A WebSocket to a server inside a sandbox (wsproto client) bridged to an ASGI WebSocket.

The upstream handshake runs before the client is accepted, so the client gets the
subprotocol the server chose, and a server that refuses the upgrade answers the client
with its own status and body (the ASGI denial response). Messages are relayed whole (ASGI
has no fragments), each at most MAX_MESSAGE bytes; pings are answered, and a close from
either side closes the other with the same code. Invariant: when the bridge returns, both
directions are finished and nothing is left reading or writing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.types import Receive, Send
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from declawd.errors import Unreachable

READ_SIZE = 64 * 1024
MAX_MESSAGE = 16 * 2**20  # uvicorn's own limit on what a client may send
MAX_REJECT_BODY = 64 * 1024
# Close codes that are never sent on the wire (RFC 6455 §7.4.1): what to say instead.
_UNSENDABLE = {1005: 1000, 1006: 1011, 1015: 1011}


@dataclass(frozen=True)
class Rejected:
    """The sandbox's server refused the upgrade with an HTTP response."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class WsUpstream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.ws = WSConnection(ConnectionType.CLIENT)

    @classmethod
    async def over(cls, sock: socket.socket) -> WsUpstream:
        reader, writer = await asyncio.open_connection(sock=sock, limit=READ_SIZE)
        return cls(reader, writer)

    async def send(self, event: Event) -> None:
        data = self.ws.send(event)
        if data:
            self._writer.write(data)
            await self._writer.drain()

    async def _feed(self) -> bool:
        """Read once into wsproto; False at end of stream."""
        data = await self._reader.read(READ_SIZE)
        self.ws.receive_data(data or None)
        return bool(data)

    async def handshake(
        self,
        host: str,
        target: str,
        subprotocols: Sequence[str],
        headers: list[tuple[bytes, bytes]],
        *,
        what: str,
    ) -> AcceptConnection | Rejected:
        """Ask the server to upgrade; `what` names it in errors (502 when it does not
        answer as an HTTP server would)."""
        await self.send(
            Request(
                host=host, target=target, subprotocols=list(subprotocols), extra_headers=headers
            )
        )
        rejected: RejectConnection | None = None
        body = b""
        while True:
            try:
                more = await self._feed()
                events = list(self.ws.events())
            except RemoteProtocolError as exc:
                raise Unreachable(f"{what} did not answer the WebSocket handshake: {exc}") from exc
            for event in events:
                if isinstance(event, AcceptConnection):
                    return event
                if isinstance(event, RejectConnection):
                    rejected = event
                    if not event.has_body:
                        return Rejected(event.status_code, list(event.headers), b"")
                elif isinstance(event, RejectData) and rejected is not None:
                    body = (body + event.data)[:MAX_REJECT_BODY]
                    if event.body_finished:
                        return Rejected(rejected.status_code, list(rejected.headers), body)
            if not more:
                if rejected is not None:
                    return Rejected(rejected.status_code, list(rejected.headers), body)
                raise Unreachable(f"{what} closed the connection during the WebSocket handshake")

    async def events(self) -> AsyncIterator[Event]:
        """Events after the handshake, until the stream ends."""
        while True:
            more = await self._feed()
            for event in self.ws.events():
                yield event
            if not more:
                return

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()


def _sendable(code: int | None) -> int:
    code = 1000 if code is None else code
    return _UNSENDABLE.get(code, code)


async def _to_server(receive: Receive, up: WsUpstream) -> None:
    """Client → sandbox, until the client goes away (its close is passed on)."""
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.receive":
            payload = message.get("bytes")
            if up.ws.state is ConnectionState.OPEN:
                await up.send(
                    BytesMessage(data=payload)
                    if payload is not None
                    else TextMessage(data=message.get("text") or "")
                )
        elif kind == "websocket.disconnect":
            if up.ws.state is ConnectionState.OPEN:
                with contextlib.suppress(OSError, LocalProtocolError):
                    await up.send(
                        CloseConnection(
                            code=_sendable(message.get("code")), reason=message.get("reason")
                        )
                    )
            return


async def _to_client(send: Send, up: WsUpstream) -> None:
    """Sandbox → client, until the server closes (its close is passed on) or drops."""
    parts: list[Any] = []
    size = 0
    close = {"type": "websocket.close", "code": 1011, "reason": "the server went away"}
    async for event in up.events():
        if isinstance(event, TextMessage | BytesMessage):
            parts.append(event.data)
            size += len(event.data)
            if size > MAX_MESSAGE:
                close = {"type": "websocket.close", "code": 1009, "reason": "message too big"}
                with contextlib.suppress(OSError, LocalProtocolError):
                    await up.send(CloseConnection(code=1009, reason="message too big"))
                break
            if event.message_finished:
                if isinstance(event, TextMessage):
                    await send({"type": "websocket.send", "text": "".join(parts)})
                else:
                    await send({"type": "websocket.send", "bytes": b"".join(parts)})
                parts, size = [], 0
        elif isinstance(event, Ping):
            await up.send(event.response())
        elif isinstance(event, CloseConnection):
            if up.ws.state is ConnectionState.REMOTE_CLOSING:
                with contextlib.suppress(OSError, LocalProtocolError):
                    await up.send(event.response())
            close = {
                "type": "websocket.close",
                "code": _sendable(event.code),
                "reason": event.reason or "",
            }
            break
    with contextlib.suppress(OSError, RuntimeError):
        await send(close)


async def bridge(receive: Receive, send: Send, up: WsUpstream) -> None:
    """Relay both ways until either side closes; then the other is closed too."""
    to_server = asyncio.create_task(_to_server(receive, up))
    to_client = asyncio.create_task(_to_client(send, up))
    try:
        done, _ = await asyncio.wait({to_server, to_client}, return_when=asyncio.FIRST_COMPLETED)
        if to_client in done and not to_server.done():
            # The client was sent a close; its answer (websocket.disconnect) ends _to_server.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(to_server), 5)
    finally:
        for task in (to_server, to_client):
            task.cancel()
        results = await asyncio.gather(to_server, to_client, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception) and not isinstance(
            result, OSError | RemoteProtocolError | LocalProtocolError
        ):
            raise result
