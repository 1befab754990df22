"""HTTP/2 ends of an inspected connection, on h2: the sandbox side in the server role, the
upstream side in the client role. Many streams at once; flow control honoured both ways:
what the peer's window cannot take waits per stream (`pending`) and goes out on its
WINDOW_UPDATE; received data is acknowledged by the inspector once it was passed on.
Errors name no header value: a value may be a secret in flight.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterable

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from declawd.inspect.messages import (
    AbortIn,
    BrokenIn,
    DataIn,
    EndIn,
    GoneIn,
    Headers,
    HeadIn,
    RequestHead,
    ResponseHead,
    SideEvent,
    WindowIn,
    decode_value,
    encode_value,
    end_to_end,
    header,
)

# Per-stream receive window we grant, and the connection window: large enough that every
# stream can hold its full window unacknowledged without starving the others.
STREAM_WINDOW = 512 * 1024
MAX_STREAMS = 100
CONNECTION_WINDOW = STREAM_WINDOW * MAX_STREAMS
_DEFAULT_WINDOW = 65535

_Wire = list[tuple[bytes, bytes]]


def _split(raw: Iterable[tuple[bytes, bytes]]) -> tuple[dict[str, str], Headers]:
    pseudo: dict[str, str] = {}
    regular: Headers = []
    for k, v in raw:
        name, value = decode_value(k), decode_value(v)
        if name.startswith(":"):
            pseudo[name] = value
        else:
            regular.append((name, value))
    return pseudo, regular


def _wire(headers: Iterable[tuple[str, str]]) -> _Wire:
    return [(k.encode("ascii"), encode_value(v)) for k, v in headers]


class _H2Side:
    def __init__(self, client_side: bool) -> None:
        config = h2.config.H2Configuration(client_side=client_side, header_encoding=None)
        self._conn = h2.connection.H2Connection(config)
        settings = {
            SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            SettingCodes.MAX_HEADER_LIST_SIZE: 64 * 1024,
        }
        if client_side:
            settings[SettingCodes.ENABLE_PUSH] = 0
        self._conn.local_settings = h2.settings.Settings(
            client=client_side, initial_values=settings
        )
        self._conn.initiate_connection()
        self._conn.increment_flow_control_window(CONNECTION_WINDOW - _DEFAULT_WINDOW)
        self.events: deque[SideEvent] = deque()
        self._pending: dict[int, bytearray] = {}
        self._ends: dict[int, Headers | None] = {}
        self._ended_by_trailers: set[int] = set()
        self._ended: set[int] = set()  # streams we sent END_STREAM on, until they close
        self.broken = False
        self.gone = False  # the peer sent GOAWAY

    can_reset = True
    closing = False  # an HTTP/2 connection never has to close after one exchange

    def output(self) -> bytes:
        return self._conn.data_to_send()

    def pending(self, sid: int) -> int:
        q = self._pending.get(sid)
        return len(q) if q else 0

    @property
    def backlog(self) -> int:
        return sum(len(q) for q in self._pending.values())

    def receive(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            events = self._conn.receive_data(data)
        except h2.exceptions.H2Error:
            # h2 queued a GOAWAY; the exception text is not passed on.
            self.broken = True
            self.events.append(BrokenIn("HTTP/2 protocol error"))
            return
        for ev in events:
            self._on(ev)

    def eof(self) -> None:
        self.gone = True
        self.events.append(GoneIn(None))

    def _on(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.DataReceived):
            self.events.append(DataIn(ev.stream_id, ev.data, ev.flow_controlled_length))
        elif isinstance(ev, h2.events.TrailersReceived):
            self._ended_by_trailers.add(ev.stream_id)
            self.events.append(EndIn(ev.stream_id, end_to_end(_split(ev.headers)[1])))
        elif isinstance(ev, h2.events.StreamEnded):
            self._ended.discard(ev.stream_id)  # no more sends on it after our end
            if ev.stream_id in self._ended_by_trailers:
                self._ended_by_trailers.discard(ev.stream_id)
            else:
                self.events.append(EndIn(ev.stream_id))
        elif isinstance(ev, h2.events.StreamReset):
            self._drop(ev.stream_id)
            self.events.append(AbortIn(ev.stream_id))
        elif isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            for sid in list(self._pending):
                self._flush(sid)
            self.events.append(WindowIn())
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.gone = True
            self.events.append(GoneIn(ev.last_stream_id))
        else:
            self._on_head(ev)

    def _on_head(self, ev: h2.events.Event) -> None:
        raise NotImplementedError

    def send_data(self, sid: int, data: bytes) -> None:
        if data:
            self._pending.setdefault(sid, bytearray()).extend(data)
            self._flush(sid)

    def send_end(self, sid: int, trailers: Headers | None = None) -> None:
        self._ends[sid] = trailers
        self._flush(sid)

    def _flush(self, sid: int) -> None:
        q = self._pending.get(sid)
        try:
            while q:
                window = self._conn.local_flow_control_window(sid)
                n = min(len(q), window, self._conn.max_outbound_frame_size)
                if n <= 0:
                    return
                self._conn.send_data(sid, bytes(q[:n]))
                del q[:n]
            self._pending.pop(sid, None)
            if sid in self._ends:
                trailers = self._ends.pop(sid)
                if sid in self._ended:
                    return  # the head already ended it (no body)
                self._ended.add(sid)
                if trailers:
                    self._conn.send_headers(sid, _wire(trailers), end_stream=True)
                else:
                    self._conn.end_stream(sid)
        except h2.exceptions.StreamClosedError:
            self._drop(sid)

    def _drop(self, sid: int) -> None:
        self._pending.pop(sid, None)
        self._ends.pop(sid, None)
        self._ended.discard(sid)

    def reset(self, sid: int, code: int = ErrorCodes.CANCEL) -> None:
        self._drop(sid)
        with contextlib.suppress(h2.exceptions.H2Error):  # already closed
            self._conn.reset_stream(sid, code)

    def ack(self, sid: int, n: int) -> None:
        if n:
            with contextlib.suppress(h2.exceptions.H2Error):  # the connection is closing
                self._conn.acknowledge_received_data(n, sid)

    def goaway(self, last_sid: int | None = None) -> None:
        with contextlib.suppress(h2.exceptions.H2Error):  # already closed
            self._conn.close_connection(last_stream_id=last_sid)

    def _send_headers(self, sid: int, headers: _Wire, end: bool) -> bool:
        try:
            self._conn.send_headers(sid, headers, end_stream=end)
        except h2.exceptions.StreamClosedError:
            self._drop(sid)
            return False
        if end:
            self._ended.add(sid)
        return True


class H2Server(_H2Side):
    """The sandbox's side (we are the server)."""

    def __init__(self, scheme: str, host: str) -> None:
        super().__init__(client_side=False)
        self._scheme, self._host = scheme, host
        self.last_sid = 0  # highest stream the client opened

    def _on_head(self, ev: h2.events.Event) -> None:
        if not isinstance(ev, h2.events.RequestReceived):
            return
        sid = ev.stream_id
        self.last_sid = max(self.last_sid, sid)
        pseudo, regular = _split(ev.headers)
        method, path = pseudo.get(":method"), pseudo.get(":path")
        authority = pseudo.get(":authority") or header(regular, "host") or self._host
        if not method or (method != "CONNECT" and not path):
            self.events.append(BrokenIn("request without :method or :path", True, sid))
            return
        has_body = ev.stream_ended is None
        if has_body and (header(regular, "expect") or "").lower() == "100-continue":
            self._send_headers(sid, [(b":status", b"100")], end=False)
        head = RequestHead(
            method=method,
            scheme=self._scheme,
            authority=authority,
            target=path or authority,
            headers=[(k, v) for k, v in end_to_end(regular) if k != "expect"],
            has_body=has_body,
        )
        self.events.append(HeadIn(sid, head))

    def send_head(self, sid: int, head: ResponseHead, *, close: bool = False) -> None:
        headers = [(":status", str(head.status)), *head.headers]
        self._send_headers(sid, _wire(headers), end=not head.has_body)


class H2Client(_H2Side):
    """The upstream side (we are the client)."""

    def __init__(self) -> None:
        super().__init__(client_side=True)

    @property
    def can_start(self) -> bool:
        limit = min(MAX_STREAMS, self._conn.remote_settings.max_concurrent_streams)
        return not self.broken and not self.gone and self._conn.open_outbound_streams < limit

    def start(self, head: RequestHead, length: int | None) -> int:
        sid = self._conn.get_next_available_stream_id()
        headers = [
            (":method", head.method),
            (":scheme", head.scheme),
            (":authority", head.authority),
            (":path", head.target),
            *((k, v) for k, v in head.headers if k != "content-length"),
        ]
        if head.has_body and length is not None:
            headers.append(("content-length", str(length)))
        self._send_headers(sid, _wire(headers), end=not head.has_body)
        return sid

    def _on_head(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.ResponseReceived):
            pseudo, regular = _split(ev.headers)
            status = int(pseudo.get(":status", "502"))
            head = ResponseHead(status, end_to_end(regular), ev.stream_ended is None)
            self.events.append(HeadIn(ev.stream_id, head))
        elif isinstance(ev, h2.events.PushedStreamReceived) and ev.pushed_stream_id:
            self.reset(ev.pushed_stream_id, ErrorCodes.REFUSED_STREAM)
