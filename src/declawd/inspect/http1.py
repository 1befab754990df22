"""HTTP/1.1 ends of an inspected connection, on h11: the sandbox side in the server role,
the upstream side in the client role. Each turns h11 events into `messages` events and
neutral heads back into h11 events; one exchange at a time per connection (h11 parses a
pipelined request only once the previous exchange is done), a stream id per exchange.
Errors name no header value: a value may be a secret in flight.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from http import HTTPStatus

import h11

from declawd.inspect.messages import (
    BrokenIn,
    DataIn,
    EndIn,
    GoneIn,
    Headers,
    HeadIn,
    RequestHead,
    ResponseHead,
    SideEvent,
    TunnelIn,
    content_length,
    decode_value,
    encode_value,
    end_to_end,
    header,
)

_MAX_HEAD = 64 * 1024


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    return [(decode_value(k), decode_value(v)) for k, v in raw]


def _wire(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(k.encode("ascii"), encode_value(v)) for k, v in headers]


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


class _H1Side:
    def __init__(self, *, server: bool) -> None:
        role = h11.SERVER if server else h11.CLIENT
        self._conn = h11.Connection(role, max_incomplete_event_size=_MAX_HEAD)
        self.events: deque[SideEvent] = deque()
        self._out = bytearray()
        self._sid = 0
        self._chunked = False  # the message we send now is chunked (trailers allowed)
        self.broken = False

    can_reset = False

    def pending(self, sid: int) -> int:
        return 0  # h11 has no flow control: what we send is out at once

    def ack(self, sid: int, n: int) -> None:
        """Nothing to acknowledge over HTTP/1.1."""

    def reset(self, sid: int, code: int = 0) -> None:
        """HTTP/1.1 cannot reset one exchange (callers check `can_reset`): the connection
        is done for."""
        self.broken = True

    def output(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out

    def _send(self, event: h11.Event) -> None:
        data = self._conn.send(event)
        if data:
            self._out += data

    def send_data(self, sid: int, data: bytes) -> None:
        if data and sid == self._sid:
            self._send(h11.Data(data=data))

    def send_end(self, sid: int, trailers: Headers | None = None) -> None:
        if sid != self._sid or self._conn.our_state is not h11.SEND_BODY:
            return
        self._send(h11.EndOfMessage(headers=_wire(trailers) if trailers and self._chunked else []))
        self._next_cycle()

    @property
    def closing(self) -> bool:
        """This connection must close once what is queued is sent."""
        return self.broken or self._conn.our_state in (h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)

    def receive(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            self._conn.receive_data(data)
        except RuntimeError:
            return  # data after their side closed: nothing more to read
        self._pump()

    def eof(self) -> None:
        self.receive(b"")

    def _next_cycle(self) -> None:
        if self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE:
            self._conn.start_next_cycle()
            self._pump()

    def _pump(self) -> None:
        raise NotImplementedError


class H1Server(_H1Side):
    """The sandbox's side (we are the server)."""

    def __init__(self, scheme: str, host: str) -> None:
        super().__init__(server=True)
        self._scheme, self._host = scheme, host

    @property
    def can_respond(self) -> bool:
        return not self.broken and self._conn.our_state in (h11.IDLE, h11.SEND_RESPONSE)

    def _pump(self) -> None:
        while not self.broken:
            try:
                ev = self._conn.next_event()
            except h11.RemoteProtocolError:
                can_respond = self.can_respond
                self.broken = True
                self.events.append(BrokenIn("malformed HTTP/1.1 request", can_respond))
                return
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                return
            if isinstance(ev, h11.Request):
                self._sid += 1
                self.events.append(HeadIn(self._sid, self._request(ev)))
                if self._conn.they_are_waiting_for_100_continue:
                    self._send(h11.InformationalResponse(status_code=100, headers=[]))
            elif isinstance(ev, h11.Data):
                self.events.append(DataIn(self._sid, bytes(ev.data), 0))
            elif isinstance(ev, h11.EndOfMessage):
                trailers = _headers(ev.headers) or None
                self.events.append(EndIn(self._sid, trailers))
                if self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE:
                    self._conn.start_next_cycle()  # answered before the body ended
            elif isinstance(ev, h11.ConnectionClosed):
                self.events.append(GoneIn())
                return

    def _request(self, ev: h11.Request) -> RequestHead:
        raw = _headers(ev.headers)
        target = decode_value(ev.target)
        authority = header(raw, "host") or self._host
        if "://" in target:  # absolute-form: the authority is in the target
            rest = target.split("://", 1)[1]
            authority, slash, path = rest.partition("/")
            target = slash + path or "/"
        has_body = header(raw, "transfer-encoding") is not None or (content_length(raw) or 0) > 0
        return RequestHead(
            method=decode_value(ev.method),
            scheme=self._scheme,
            authority=authority,
            target=target,
            headers=[(k, v) for k, v in end_to_end(raw) if k != "expect"],
            has_body=has_body,
            upgrade=header(raw, "upgrade"),
        )

    def send_head(self, sid: int, head: ResponseHead, *, close: bool = False) -> None:
        """The response head; `close`: this is the connection's last response."""
        if sid != self._sid or not self.can_respond:
            return
        headers = list(head.headers)
        if close:
            headers.append(("connection", "close"))
        self._chunked = head.has_body and content_length(headers) is None
        self._send(
            h11.Response(
                status_code=head.status, headers=_wire(headers), reason=_reason(head.status)
            )
        )
        if not head.has_body:
            self._send(h11.EndOfMessage())
            self._next_cycle()

    def reject(self, status: int, body: bytes) -> bool:
        """An error response after a malformed request, then close; False if h11 cannot."""
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("connection", "close"),
        ]
        try:
            self._send(
                h11.Response(status_code=status, headers=_wire(headers), reason=_reason(status))
            )
            self._send(h11.Data(data=body))
            self._send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            return False
        return True

    def switch(self, head: ResponseHead) -> bytes:
        """Accept a 101 upgrade or a CONNECT; returns what the client sent past its request."""
        headers = list(head.headers)
        if head.status == 101:
            headers.append(("connection", "upgrade"))
            self._send(
                h11.InformationalResponse(
                    status_code=101, headers=_wire(headers), reason=_reason(101)
                )
            )
        else:
            self._send(
                h11.Response(
                    status_code=head.status, headers=_wire(headers), reason=_reason(head.status)
                )
            )
        return self._conn.trailing_data[0]


class H1Client(_H1Side):
    """The upstream side (we are the client)."""

    def __init__(self) -> None:
        super().__init__(server=False)
        self._method = ""
        self._gone = False
        self.closes_after = False  # the upstream closes once the current response ends

    @property
    def can_start(self) -> bool:
        return (
            not self.broken
            and not self._gone
            and self._conn.our_state is h11.IDLE
            and self._conn.their_state is h11.IDLE
        )

    def start(self, head: RequestHead, length: int | None) -> int:
        """Send a request head (the caller checked `can_start`); returns its stream id."""
        self._sid += 1
        self._method = head.method
        headers: Headers = [("host", head.authority)]
        cookies = [v for k, v in head.headers if k == "cookie"]
        headers += [(k, v) for k, v in head.headers if k not in ("cookie", "content-length")]
        if cookies:  # HTTP/2 may split them (RFC 9113 §8.2.3)
            headers.append(("cookie", "; ".join(cookies)))
        self._chunked = head.has_body and length is None
        if self._chunked:
            headers.append(("transfer-encoding", "chunked"))
        elif head.has_body:
            headers.append(("content-length", str(length)))
        if head.upgrade is not None:
            headers += [("connection", "upgrade"), ("upgrade", head.upgrade)]
        self._send(
            h11.Request(
                method=head.method.encode("ascii"),
                target=encode_value(head.target),
                headers=_wire(headers),
            )
        )
        if not head.has_body:
            self._send(h11.EndOfMessage())
        return self._sid

    def _pump(self) -> None:
        while not self.broken:
            try:
                ev = self._conn.next_event()
            except h11.RemoteProtocolError:
                # The message is not passed on: it may quote the upstream's bytes.
                self.broken = True
                self.events.append(BrokenIn("malformed HTTP/1.1 response"))
                return
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                return
            if isinstance(ev, h11.InformationalResponse):
                if self._conn.their_state is h11.SWITCHED_PROTOCOL:
                    raw = _headers(ev.headers)
                    kept = [*end_to_end(raw), ("upgrade", header(raw, "upgrade") or "")]
                    head = ResponseHead(101, kept, False)
                    self.events.append(TunnelIn(self._sid, head, self._conn.trailing_data[0]))
                    return
                continue  # 100 Continue (we answered the client ourselves), 103
            if isinstance(ev, h11.Response):
                head = self._response(ev)
                if self._conn.their_state is h11.SWITCHED_PROTOCOL:  # CONNECT accepted
                    self.events.append(TunnelIn(self._sid, head, self._conn.trailing_data[0]))
                    return
                self.events.append(HeadIn(self._sid, head))
            elif isinstance(ev, h11.Data):
                self.events.append(DataIn(self._sid, bytes(ev.data), 0))
            elif isinstance(ev, h11.EndOfMessage):
                self.events.append(EndIn(self._sid, _headers(ev.headers) or None))
                if self._conn.their_state is h11.MUST_CLOSE:
                    self._gone = True
                    self.events.append(GoneIn(self._sid))
                self._next_cycle()
            elif isinstance(ev, h11.ConnectionClosed):
                if not self._gone:
                    self._gone = True
                    self.events.append(GoneIn(self._sid))
                return

    def _response(self, ev: h11.Response) -> ResponseHead:
        raw = _headers(ev.headers)
        tokens = {t.strip().lower() for t in (header(raw, "connection") or "").split(",")}
        self.closes_after = "close" in tokens or (
            ev.http_version == b"1.0" and "keep-alive" not in tokens
        )
        no_body = self._method == "HEAD" or ev.status_code in (204, 304) or content_length(raw) == 0
        return ResponseHead(ev.status_code, end_to_end(raw), not no_body)

    @property
    def gone(self) -> bool:
        return self._gone or self.broken
