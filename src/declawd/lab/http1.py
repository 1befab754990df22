"""HTTP/1.x for every lab host, driven by h11 (sans-IO) over an asyncio stream.

Requests are served in sequence on one connection until either side closes, the idle
timeout passes or the peer breaks the protocol (answered with h11's status hint while a
response can still be sent). Each request is logged by `HttpService` before its response is
written; a streamed response goes out as chunks (close-delimited for HTTP/1.0 peers), each
flushed on its own, and `/bytes` writes one shared zero buffer without copying it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from http import HTTPStatus

import h11

from declawd.lab.httpapi import MAX_BODY, HttpRequest, HttpResponse, HttpService, error_response

MAX_HEAD = 64 * 1024
IDLE_TIMEOUT = 60.0
READ_SIZE = 256 * 1024
_ZEROS = memoryview(bytes(1 << 20))  # one shared zero buffer: /bytes never allocates per request


class _TooLarge(Exception):
    pass


async def serve_http1(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    service: HttpService,
    *,
    tls: bool,
    client: str,
) -> None:
    """One HTTP/1.x connection, start to close; never raises for network trouble."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    try:
        while True:
            event = await _next_event(conn, reader)
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed
            request = _request(event)
            try:
                body = await _read_body(conn, reader, writer)
                response = service.respond(request, body, tls=tls, client=client)
            except _TooLarge:
                response = service.too_large(request, tls=tls, client=client)
            await _send(conn, writer, request, response, service)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # MUST_CLOSE, or a body we stopped reading
            conn.start_next_cycle()
    except h11.RemoteProtocolError as exc:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await _send_error(conn, writer, exc.error_status_hint, str(exc))
    except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, ssl.SSLError):
        pass
    finally:
        await close_writer(writer)


def _request(event: h11.Request) -> HttpRequest:
    return HttpRequest(
        method=event.method.decode("ascii"),
        target=event.target.decode("latin-1"),
        version=f"HTTP/{event.http_version.decode('ascii')}",
        headers=tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers),
    )


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await asyncio.wait_for(reader.read(READ_SIZE), IDLE_TIMEOUT)
        conn.receive_data(data)  # b"" at EOF: h11 then reports ConnectionClosed or an error


async def _read_body(
    conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bytes:
    if conn.they_are_waiting_for_100_continue:
        writer.write(
            conn.send(h11.InformationalResponse(status_code=100, headers=[], reason="Continue"))
            or b""
        )
    chunks: list[bytes] = []
    total = 0
    while True:
        event = await _next_event(conn, reader)
        if isinstance(event, h11.Data):
            total += len(event.data)
            if total > MAX_BODY:
                raise _TooLarge
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(chunks)
        else:  # ConnectionClosed mid-body
            raise asyncio.IncompleteReadError(b"", None)


async def _send(
    conn: h11.Connection,
    writer: asyncio.StreamWriter,
    request: HttpRequest,
    response: HttpResponse,
    service: HttpService,
) -> None:
    headers = [("server", "declawd-lab"), *response.header_fields()]
    if response.close:
        headers.append(("connection", "close"))
    head = h11.Response(
        status_code=response.status, headers=headers, reason=_reason(response.status)
    )
    writer.write(conn.send(head) or b"")
    if request.method != "HEAD":
        if response.body:
            _write_data(conn, writer, response.body)
        remaining = response.stream_bytes
        while remaining:
            n = min(remaining, len(_ZEROS))
            _write_data(conn, writer, _ZEROS[:n])
            remaining -= n
            await writer.drain()
        for i, piece in enumerate(response.pieces):
            if i:
                await service.pace(response.pace)
            _write_data(conn, writer, piece)
            await writer.drain()
    writer.write(conn.send(h11.EndOfMessage()) or b"")
    await writer.drain()


def _write_data(
    conn: h11.Connection, writer: asyncio.StreamWriter, data: bytes | memoryview
) -> None:
    # passthrough: h11 frames the data (chunk sizes) but hands the payload back uncopied
    writer.writelines(conn.send_with_data_passthrough(h11.Data(data=data)) or [])


async def _send_error(
    conn: h11.Connection, writer: asyncio.StreamWriter, status: int, message: str
) -> None:
    response = error_response(status, message, close=True)
    headers = [("server", "declawd-lab"), *response.header_fields(), ("connection", "close")]
    with contextlib.suppress(h11.LocalProtocolError, ConnectionError, ssl.SSLError):
        writer.write(
            conn.send(h11.Response(status_code=status, headers=headers, reason=_reason(status)))
            or b""
        )
        _write_data(conn, writer, response.body)
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 5)
