"""An HttpInspector wired in memory between a real sandbox client and a real upstream
server (h11 / h2 on the other ends), for the HTTP layer's tests. No sockets, no threads:
`Wire.pump` moves bytes until nothing moves."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h11

from declawd.inspect.http import HttpInspector
from declawd.inspect.model import (
    CloseClient,
    CloseUpstream,
    HttpAudit,
    HttpCommand,
    InspectContext,
    InspectionPolicy,
    ResetBoth,
    ToClient,
    ToUpstream,
)

Hdrs = list[tuple[str, str]]
Chunker = Callable[[bytes], Iterable[bytes]]


class Secrets:
    def __init__(self, values: dict[str, str] | None = None) -> None:
        self.values = dict(values or {})

    def value(self, secret_id: str) -> str | None:
        return self.values.get(secret_id)


def ctx(
    client: str = "h1",
    upstream: str | None = "h1",
    *,
    host: str = "api.example.com",
    scheme: str = "https",
    error: str | None = None,
) -> InspectContext:
    return InspectContext(
        sandbox_id="sbx-test",
        host=host,
        scheme=scheme,  # type: ignore[arg-type]
        dst_ip="203.0.113.7",
        dst_port=443 if scheme == "https" else 80,
        client_proto=client,  # type: ignore[arg-type]
        upstream_proto=upstream,  # type: ignore[arg-type]
        upstream_error=error,
    )


@dataclass
class Seen:
    """A request as the upstream received it."""

    method: str
    target: str
    headers: Hdrs
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    trailers: Hdrs = field(default_factory=list)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


@dataclass
class Got:
    """A response as the sandbox received it."""

    status: int = 0
    headers: Hdrs = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: bool = False

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def json(self) -> object:
        return json.loads(bytes(self.body))


@dataclass
class Resp:
    status: int = 200
    headers: Hdrs = field(default_factory=list)
    body: bytes | list[bytes] = b""

    @property
    def chunks(self) -> list[bytes]:
        return self.body if isinstance(self.body, list) else [self.body] if self.body else []


def _s(v: bytes | str) -> str:
    return v.decode("latin-1") if isinstance(v, bytes) else v


def _b(v: str) -> bytes:
    return v.encode("latin-1")


# The sandbox's client ------------------------------------------------------------------


class H1Sandbox:
    def __init__(self) -> None:
        self.conn = h11.Connection(h11.CLIENT)
        self.out = bytearray()
        self.responses: list[Got] = []
        self.broken = False

    def request(
        self,
        method: str,
        target: str,
        headers: Hdrs,
        body: bytes | list[bytes] = b"",
        *,
        host: str = "api.example.com",
        end: bool = True,
    ) -> Got:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        chunks = body if isinstance(body, list) else [body] if body else []
        hdrs = [("host", host), *headers]
        if chunks and not any(k == "content-length" for k, _ in hdrs):
            hdrs.append(("transfer-encoding", "chunked"))
        self.out += self.conn.send(
            h11.Request(method=method, target=target, headers=[(_b(k), _b(v)) for k, v in hdrs])
        )
        for c in chunks:
            self.out += self.conn.send(h11.Data(data=c))
        if end:
            self.out += self.conn.send(h11.EndOfMessage())
        got = Got()
        self.responses.append(got)
        return got

    def send_raw(self, data: bytes) -> None:
        self.out += data

    def take(self) -> bytes:
        out, self.out = bytes(self.out), bytearray()
        return out

    def receive(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            self.conn.receive_data(data)
            while True:
                ev = self.conn.next_event()
                if ev in (h11.NEED_DATA, h11.PAUSED) or isinstance(ev, h11.ConnectionClosed):
                    return
                got = self.responses[-1]
                if isinstance(ev, h11.Response):
                    got.status = ev.status_code
                    got.headers = [(_s(k), _s(v)) for k, v in ev.headers]
                elif isinstance(ev, h11.Data):
                    got.body += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    got.ended = True
                    if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                        self.conn.start_next_cycle()
        except h11.RemoteProtocolError:
            self.broken = True


class H2Sandbox:
    def __init__(self) -> None:
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.responses: dict[int, Got] = {}
        self._pending: dict[int, bytearray] = {}
        self._ending: set[int] = set()
        self.terminated: int | None = None
        self.reading = True  # False: a slow reader, received data is not acknowledged
        self._unacked: dict[int, int] = {}

    def resume(self) -> None:
        self.reading = True
        for sid, n in self._unacked.items():
            self.conn.acknowledge_received_data(n, sid)
        self._unacked.clear()

    def request(
        self,
        method: str,
        target: str,
        headers: Hdrs,
        body: bytes | list[bytes] = b"",
        *,
        host: str = "api.example.com",
        end: bool = True,
    ) -> Got:
        sid = self.conn.get_next_available_stream_id()
        chunks = body if isinstance(body, list) else [body] if body else []
        pseudo = [
            (":method", method),
            (":scheme", "https"),
            (":authority", host),
            (":path", target),
        ]
        self.conn.send_headers(sid, pseudo + headers, end_stream=not chunks and end)
        self.responses[sid] = Got()
        if chunks:
            self._pending[sid] = bytearray(b"".join(chunks))
            if end:
                self._ending.add(sid)
            self._flush()
        return self.responses[sid]

    def _flush(self) -> None:
        for sid, q in list(self._pending.items()):
            while q:
                n = min(
                    len(q),
                    self.conn.local_flow_control_window(sid),
                    self.conn.max_outbound_frame_size,
                )
                if n <= 0:
                    break
                self.conn.send_data(sid, bytes(q[:n]))
                del q[:n]
            if not q:
                del self._pending[sid]
                if sid in self._ending:
                    self._ending.discard(sid)
                    self.conn.end_stream(sid)

    def take(self) -> bytes:
        return self.conn.data_to_send()

    def receive(self, data: bytes) -> None:
        for ev in self.conn.receive_data(data):
            sid = getattr(ev, "stream_id", None)
            got = self.responses.get(sid) if sid else None
            if isinstance(ev, h2.events.ResponseReceived) and got is not None:
                hdrs = [(_s(k), _s(v)) for k, v in ev.headers]
                got.status = int(next(v for k, v in hdrs if k == ":status"))
                got.headers = [(k, v) for k, v in hdrs if not k.startswith(":")]
            elif isinstance(ev, h2.events.DataReceived) and got is not None:
                got.body += ev.data
                if self.reading:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                else:
                    self._unacked[ev.stream_id] = (
                        self._unacked.get(ev.stream_id, 0) + ev.flow_controlled_length
                    )
            elif isinstance(ev, h2.events.StreamEnded) and got is not None:
                got.ended = True
            elif isinstance(ev, h2.events.StreamReset) and got is not None:
                got.reset = True
            elif isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                self._flush()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.terminated = ev.last_stream_id


# The upstream server ---------------------------------------------------------------------


Handler = Callable[[Seen], Resp | None]


def echo(seen: Seen) -> Resp:
    """Answers with the request body, as the same content type."""
    ctype = seen.header("content-type") or "application/octet-stream"
    return Resp(
        200, [("content-type", ctype), ("content-length", str(len(seen.body)))], bytes(seen.body)
    )


class H1Upstream:
    def __init__(self, handler: Handler | None = echo) -> None:
        self.conn = h11.Connection(h11.SERVER)
        self.out = bytearray()
        self.handler = handler
        self.seen: list[Seen] = []
        self.broken = False

    def take(self) -> bytes:
        out, self.out = bytes(self.out), bytearray()
        return out

    def receive(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            self.conn.receive_data(data)
            self._pump()
        except h11.RemoteProtocolError:
            self.broken = True

    def _pump(self) -> None:
        while True:
            ev = self.conn.next_event()
            if ev in (h11.NEED_DATA, h11.PAUSED) or isinstance(ev, h11.ConnectionClosed):
                return
            if isinstance(ev, h11.Request):
                hdrs = [(_s(k), _s(v)) for k, v in ev.headers]
                self.seen.append(Seen(_s(ev.method), _s(ev.target), hdrs))
            elif isinstance(ev, h11.Data):
                self.seen[-1].body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                self.seen[-1].ended = True
                self.seen[-1].trailers = [(_s(k), _s(v)) for k, v in ev.headers]
                resp = self.handler(self.seen[-1]) if self.handler else None
                if resp is not None:
                    self.respond(resp)

    def respond(self, resp: Resp, *, end: bool = True) -> None:
        self.start(resp.status, resp.headers)
        for c in resp.chunks:
            self.send(c)
        if end:
            self.end()

    def start(self, status: int, headers: Hdrs, sid: int = 0) -> None:
        self.out += self.conn.send(
            h11.Response(status_code=status, headers=[(_b(k), _b(v)) for k, v in headers])
        )

    def send(self, data: bytes, sid: int = 0) -> None:
        self.out += self.conn.send(h11.Data(data=data))

    def end(self, sid: int = 0) -> None:
        self.out += self.conn.send(h11.EndOfMessage())
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            self._pump()


class H2Upstream:
    def __init__(self, handler: Handler | None = echo) -> None:
        cfg = h2.config.H2Configuration(client_side=False)
        self.conn = h2.connection.H2Connection(cfg)
        self.conn.initiate_connection()
        self.handler = handler
        self.seen: list[Seen] = []
        self.by_sid: dict[int, Seen] = {}
        self.sids: list[int] = []
        self._pending: dict[int, bytearray] = {}
        self._ending: set[int] = set()

    def take(self) -> bytes:
        return self.conn.data_to_send()

    def receive(self, data: bytes) -> None:
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                hdrs = [(_s(k), _s(v)) for k, v in ev.headers]
                p = dict((k, v) for k, v in hdrs if k.startswith(":"))
                seen = Seen(
                    p[":method"], p[":path"], [(k, v) for k, v in hdrs if not k.startswith(":")]
                )
                seen.headers.insert(0, (":authority", p.get(":authority", "")))
                self.seen.append(seen)
                self.by_sid[ev.stream_id] = seen
                self.sids.append(ev.stream_id)
            elif isinstance(ev, h2.events.DataReceived):
                self.by_sid[ev.stream_id].body += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                self.by_sid[ev.stream_id].trailers = [(_s(k), _s(v)) for k, v in ev.headers]
            elif isinstance(ev, h2.events.StreamEnded):
                seen = self.by_sid[ev.stream_id]
                seen.ended = True
                resp = self.handler(seen) if self.handler else None
                if resp is not None:
                    self.respond(resp, ev.stream_id)
            elif isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                self._flush()

    def respond(self, resp: Resp, sid: int, *, end: bool = True) -> None:
        self.start(resp.status, resp.headers, sid, end=not resp.chunks and end)
        for c in resp.chunks:
            self.send(c, sid)
        if end and resp.chunks:
            self.end(sid)

    def start(self, status: int, headers: Hdrs, sid: int, end: bool = False) -> None:
        self.conn.send_headers(sid, [(":status", str(status)), *headers], end_stream=end)

    def send(self, data: bytes, sid: int) -> None:
        self._pending.setdefault(sid, bytearray()).extend(data)
        self._flush()

    def end(self, sid: int) -> None:
        self._ending.add(sid)
        self._pending.setdefault(sid, bytearray())
        self._flush()

    def _flush(self) -> None:
        for sid, q in list(self._pending.items()):
            while q:
                n = min(
                    len(q),
                    self.conn.local_flow_control_window(sid),
                    self.conn.max_outbound_frame_size,
                )
                if n <= 0:
                    break
                self.conn.send_data(sid, bytes(q[:n]))
                del q[:n]
            if not q and sid in self._ending:
                del self._pending[sid]
                self._ending.discard(sid)
                self.conn.end_stream(sid)


# The wire ----------------------------------------------------------------------------


class Wire:
    """Sandbox client <-> HttpInspector <-> upstream server, all in memory."""

    def __init__(
        self,
        context: InspectContext,
        policy: InspectionPolicy | None = None,
        *,
        secrets: Secrets | None = None,
        handler: Handler | None = echo,
        chunker: Chunker | None = None,
    ) -> None:
        self.inspector = HttpInspector(
            context,
            policy or InspectionPolicy(),
            secrets=secrets or Secrets(),
            clock=lambda: 1_700_000_000.0,
        )
        self.client: H1Sandbox | H2Sandbox = (
            H2Sandbox() if context.client_proto == "h2" else H1Sandbox()
        )
        self.upstream: H1Upstream | H2Upstream = (
            H2Upstream(handler) if context.upstream_proto == "h2" else H1Upstream(handler)
        )
        self.chunker = chunker or (lambda b: [b])
        self.audits: list[HttpAudit] = []
        self.commands: list[HttpCommand] = []
        self.to_client_log: list[bytes] = []
        self.closed_client = self.closed_upstream = False
        self.reset: str | None = None

    def _apply(self, cmds: list[HttpCommand]) -> bool:
        moved = False
        for c in cmds:
            self.commands.append(c)
            if isinstance(c, ToClient):
                moved = True
                self.to_client_log.append(c.data)
                self.client.receive(c.data)
            elif isinstance(c, ToUpstream):
                moved = True
                self.upstream.receive(c.data)
            elif isinstance(c, HttpAudit):
                self.audits.append(c)
            elif isinstance(c, CloseClient):
                self.closed_client = True
            elif isinstance(c, CloseUpstream):
                self.closed_upstream = True
            elif isinstance(c, ResetBoth):
                self.reset = c.reason
        return moved

    def pump(self, rounds: int = 10_000) -> None:
        for _ in range(rounds):
            moved = False
            data = self.client.take()
            for piece in self.chunker(data) if data else []:
                moved = self._apply(self.inspector.client_data(piece)) or True
            data = self.upstream.take()
            for piece in self.chunker(data) if data else []:
                moved = self._apply(self.inspector.upstream_data(piece)) or True
            if not moved:
                return
        raise AssertionError("the wire never went quiet")

    def client_eof(self) -> None:
        self._apply(self.inspector.client_eof())
        self.pump()

    def upstream_eof(self) -> None:
        self._apply(self.inspector.upstream_eof())
        self.pump()
