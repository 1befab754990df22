"""HTTP/2 for the lab's h2 hosts (ALPN `h2`), driven by the h2 library (sans-IO).

One reader loop feeds the socket's bytes to `H2Connection` and turns its events into
requests; each complete request is answered by its own task, so streams interleave. Sending
honours flow control (a stream waits for WINDOW_UPDATE) and every write is drained, so a
slow client slows only its own streams. No framing is written here: h2 does all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from declawd.lab.http1 import IDLE_TIMEOUT, READ_SIZE, close_writer
from declawd.lab.httpapi import MAX_BODY, HttpRequest, HttpResponse, HttpService

WINDOW = 1 << 20  # our receive window per stream, and the connection's on top of the default
BATCH = 1 << 20  # bytes of DATA frames queued before each drain
_ZEROS = bytes(1 << 20)


class _Closed(Exception):
    """The connection went away while a stream waited to send."""


@dataclass
class _Incoming:
    headers: list[tuple[bytes, bytes]]
    body: bytearray = field(default_factory=bytearray)
    too_large: bool = False


class H2Server:
    """One HTTP/2 connection of a lab host, from the preface to the last stream."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        service: HttpService,
        client: str,
    ) -> None:
        self.reader, self.writer, self.service, self.client = reader, writer, service, client
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self._incoming: dict[int, _Incoming] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._window = asyncio.Event()  # set whenever the peer may have opened a window
        self._closed = False

    async def run(self) -> None:
        self.conn.initiate_connection()
        self.conn.update_settings(
            {SettingCodes.INITIAL_WINDOW_SIZE: WINDOW, SettingCodes.MAX_CONCURRENT_STREAMS: 128}
        )
        self.conn.increment_flow_control_window(WINDOW)
        try:
            await self._flush()
            while not self._closed:
                try:
                    data = await asyncio.wait_for(self.reader.read(READ_SIZE), IDLE_TIMEOUT)
                except TimeoutError:
                    if self._tasks:
                        continue  # a long answer is still going out
                    break
                if not data:
                    break
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    await self._flush()  # h2 queued the GOAWAY
                    break
                for event in events:
                    self._handle(event)
                await self._flush()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            self._closed = True
            self._window.set()
            tasks = list(self._tasks.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await close_writer(self.writer)

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            sid = event.stream_id
            self._incoming[sid] = _Incoming(headers=list(event.headers or []))
        elif isinstance(event, h2.events.DataReceived):
            sid = event.stream_id
            self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
            incoming = self._incoming.get(sid)
            if incoming is not None and not incoming.too_large:
                incoming.body += event.data or b""
                if len(incoming.body) > MAX_BODY:
                    incoming.too_large = True  # answered at once; the rest is read and dropped
                    incoming.body.clear()
                    self._dispatch(sid)
        elif isinstance(event, h2.events.StreamEnded):
            if event.stream_id in self._incoming:
                self._dispatch(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self._incoming.pop(event.stream_id, None)
            task = self._tasks.get(event.stream_id)
            if task is not None:
                task.cancel()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self._window.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._closed = True

    def _dispatch(self, sid: int) -> None:
        incoming = self._incoming.pop(sid)
        request = request_from_headers(incoming.headers)
        if incoming.too_large:
            response = self.service.too_large(request, tls=True, client=self.client)
        else:
            body = bytes(incoming.body)
            response = self.service.respond(request, body, tls=True, client=self.client)
        task = asyncio.create_task(self._answer(sid, request, response, incoming.too_large))
        self._tasks[sid] = task
        task.add_done_callback(lambda _t: self._tasks.pop(sid, None))

    async def _answer(
        self, sid: int, request: HttpRequest, response: HttpResponse, cut_short: bool
    ) -> None:
        try:
            head = [(":status", str(response.status)), ("server", "declawd-lab")]
            head += response.header_fields()
            empty = not (response.body or response.stream_bytes or response.pieces)
            no_body = request.method == "HEAD" or empty
            self.conn.send_headers(sid, head, end_stream=no_body)
            await self._flush()
            if no_body:
                return
            if response.body:
                await self._send(sid, response.body)
            remaining = response.stream_bytes
            while remaining:
                n = min(remaining, len(_ZEROS))
                await self._send(sid, memoryview(_ZEROS)[:n])
                remaining -= n
            for i, piece in enumerate(response.pieces):
                if i:
                    await self.service.pace(response.pace)
                await self._send(sid, piece)
            self.conn.end_stream(sid)
            if cut_short:  # the client may still be sending a body we will not read
                self.conn.reset_stream(sid, ErrorCodes.NO_ERROR)
            await self._flush()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, _Closed):
            pass
        except (ConnectionError, ssl.SSLError):
            self._closed = True

    async def _send(self, sid: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            window = await self._open_window(sid)
            queued = 0
            while view and window and queued < BATCH:
                n = min(window, len(view), self.conn.max_outbound_frame_size)
                self.conn.send_data(sid, view[:n].tobytes())
                view, window, queued = view[n:], window - n, queued + n
            await self._flush()

    async def _open_window(self, sid: int) -> int:
        while (window := self.conn.local_flow_control_window(sid)) < 1:
            if self._closed:
                raise _Closed
            # no await between the check and clear(): a WINDOW_UPDATE cannot slip between
            self._window.clear()
            await self._window.wait()
        return window

    async def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)
            await self.writer.drain()


def request_from_headers(headers: list[tuple[bytes, bytes]]) -> HttpRequest:
    """An `HttpRequest` from an HTTP/2 header block (pseudo-headers out of `headers`)."""
    pseudo: dict[str, str] = {}
    regular: list[tuple[str, str]] = []
    for raw_name, raw_value in headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        if name.startswith(":"):
            pseudo[name] = value
        else:
            regular.append((name, value))
    return HttpRequest(
        method=pseudo.get(":method", "GET"),
        target=pseudo.get(":path", "/"),
        version="HTTP/2",
        headers=tuple(regular),
        authority=pseudo.get(":authority"),
    )


async def serve_http2(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, service: HttpService, client: str
) -> None:
    """One HTTP/2 connection (TLS with ALPN h2), start to close."""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await H2Server(reader, writer, service, client).run()
