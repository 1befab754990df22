"""SniProxy: the gateway's transparent L7 proxy for connections to name-only destinations.

The datapath REDIRECTs here only TCP from a sandbox to addresses it resolved for an allowed
name. The proxy peeks the first bytes (TLS ClientHello / HTTP request / nothing), decides with
the pure functions below, dials the original destination address (never re-resolving) and
splices. Invariant: bytes reach the upstream only after the name the server will route by was
checked against the sandbox's policy and its own DNS answers; every refusal is a TCP reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from declawd.addresses import PROXY_PORT
from declawd.egress.httpsniff import HttpRequestStream, HttpViolation, RequestHead, starts_like_http
from declawd.egress.policy import EgressPolicy, is_non_public
from declawd.egress.resolved import ResolvedNames
from declawd.egress.sni import (
    MAX_PEEK_BYTES,
    ClientHello,
    Malformed,
    NeedMore,
    is_ip_literal,
    parse_client_hello,
    starts_like_tls,
)

log = logging.getLogger(__name__)
# How long the proxy waits for a client's first bytes before treating the stream as opaque
# (server-first protocols such as SMTP or SSH wait this long for their banner).
PEEK_TIMEOUT_S = 2.0

SO_ORIGINAL_DST = 80
_WRITE_HIGH_WATER = 512 * 1024


@dataclass(frozen=True)
class SandboxView:
    """What the proxy needs to know about the sandbox behind a source address."""

    sandbox_id: str
    policy: EgressPolicy


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str
    name: str | None = None


def so_original_dst(sock: socket.socket) -> tuple[str, int]:
    """The pre-REDIRECT destination of an accepted IPv4 connection (conntrack)."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntoa(raw[4:8]), port


# Decisions (pure) -------------------------------------------------------------------


def _name_verdict(
    name: str | None, kind: str, view: SandboxView, resolved: ResolvedNames, dst_ip: str
) -> Verdict:
    """Reasons read `no_<kind>`, `ip_literal_<kind>`, `<kind>_not_allowed`, `<kind>_not_resolved`."""
    if name is None or is_ip_literal(name):
        # Without a usable name only a CIDR rule could allow the address (those
        # normally bypass the proxy entirely).
        if view.policy.allows_address(dst_ip) is True:
            return Verdict(True, "cidr_allowed", name)
        return Verdict(False, f"no_{kind}" if name is None else f"ip_literal_{kind}", name)
    if not view.policy.name_allowed(name):
        return Verdict(False, f"{kind}_not_allowed", name)
    if not resolved.resolved_for(view.sandbox_id, name, dst_ip):
        return Verdict(False, f"{kind}_not_resolved", name)
    return Verdict(True, f"{kind}_allowed", name)


def decide_tls(
    hello: ClientHello, view: SandboxView, resolved: ResolvedNames, dst_ip: str
) -> Verdict:
    return _name_verdict(hello.sni, "sni", view, resolved, dst_ip)


def decide_http(
    head: RequestHead, view: SandboxView, resolved: ResolvedNames, dst_ip: str
) -> Verdict:
    if head.is_connect:
        return Verdict(False, "connect_refused", head.authority)
    verdict = _name_verdict(head.host, "host", view, resolved, dst_ip)
    if not verdict.allowed or head.authority is None or head.authority == head.host:
        return verdict
    # An absolute-form target wins over Host at the server: it must pass on its own.
    verdict = _name_verdict(head.authority, "absolute_form", view, resolved, dst_ip)
    return Verdict(True, "host_allowed", head.host) if verdict.allowed else verdict


def decide_opaque(view: SandboxView, resolved: ResolvedNames, dst_ip: str) -> Verdict:
    """L4 trust: neither TLS nor HTTP passes only to an address resolved for an allowed name."""
    name = resolved.any_allowed_name_for(view.sandbox_id, dst_ip, view.policy.name_allowed)
    if name is not None:
        return Verdict(True, "opaque_resolved", name)
    if view.policy.allows_address(dst_ip) is True:
        return Verdict(True, "cidr_allowed", None)
    return Verdict(False, "opaque_not_resolved", None)


# The proxy ----------------------------------------------------------------------------

OriginalDst = Callable[[socket.socket], tuple[str, int]]


class SniProxy:
    """Two clocks bound a client still being peeked: `peek_timeout` while it has sent nothing
    (then its stream is opaque), and `handshake_timeout` from its first byte to a complete
    ClientHello or request head (then it is reset), so a slow link is not mistaken for a
    silent one. A peeked client holds a slot at most their sum and MAX_PEEK_BYTES of buffer.
    """

    def __init__(
        self,
        *,
        lookup: Callable[[str], SandboxView | None],
        resolved: ResolvedNames,
        audit: Callable[[dict[str, Any]], None],
        peek_timeout: float = PEEK_TIMEOUT_S,
        handshake_timeout: float = 10.0,
        max_conns_per_sandbox: int = 512,
        max_conns: int = 8192,
        original_dst: OriginalDst = so_original_dst,
        upstream_address: Callable[[str, int], tuple[str, int]] | None = None,
        extra_non_public: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
        non_public_exempt: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
        dial_timeout: float = 10.0,
    ) -> None:
        self.lookup = lookup
        self.resolved = resolved
        self._audit = audit
        self.peek_timeout = peek_timeout
        self.handshake_timeout = handshake_timeout
        self.max_conns_per_sandbox = max_conns_per_sandbox
        self.max_conns = max_conns
        self.original_dst = original_dst
        # Tests map lab addresses to loopback servers; production dials the address itself.
        self.upstream_address = upstream_address or (lambda ip, port: (ip, port))
        self.extra_non_public = tuple(extra_non_public)
        self.non_public_exempt = tuple(non_public_exempt)
        self.dial_timeout = dial_timeout
        self._server: asyncio.Server | None = None
        self._conns: set[_Connection] = set()
        self._by_sandbox: dict[str, set[_Connection]] = {}
        self._counters: dict[str, int] = {
            "accepted": 0,
            "allowed": 0,
            "denied": 0,
            "cut": 0,
            "bytes_up": 0,
            "bytes_down": 0,
        }
        self._reasons: dict[str, int] = {}

    async def start(self, host: str = "0.0.0.0", port: int = PROXY_PORT) -> None:
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True, backlog=1024
        )

    @property
    def port(self) -> int:
        """The bound port (useful with port=0 in tests)."""
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and reset every connection. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for conn in list(self._conns):
            conn.reset()
        if server is not None:
            await server.wait_closed()

    def cut(self, sandbox_id: str, still_allowed: Callable[[str | None, str, int], bool]) -> int:
        """Reset this sandbox's established connections that the new policy no longer allows."""
        cut = 0
        for conn in list(self._by_sandbox.get(sandbox_id, ())):
            if conn.verdict is None or not conn.verdict.allowed:
                continue  # still peeking: it will be decided under the new policy
            if not still_allowed(conn.name, conn.dst_ip, conn.dst_port):
                self.audit(conn, Verdict(False, "policy_changed", conn.name))
                conn.reset()
                cut += 1
        self._counters["cut"] += cut
        return cut

    def stats(self) -> dict[str, Any]:
        return {
            **self._counters,
            "active": len(self._conns),
            "per_sandbox": {sid: len(c) for sid, c in self._by_sandbox.items() if c},
            "reasons": dict(self._reasons),
        }

    # Called by connections ------------------------------------------------------------

    def audit(self, conn: _Connection, verdict: Verdict) -> None:
        self._counters["allowed" if verdict.allowed else "denied"] += 1
        self._reasons[verdict.reason] = self._reasons.get(verdict.reason, 0) + 1
        if conn.sandbox_id is None:
            return  # unknown source: no sandbox to attribute the event to
        event = {
            "sandbox_id": conn.sandbox_id,
            "kind": "connection",
            "verdict": "allow" if verdict.allowed else "deny",
            "reason": verdict.reason,
            "name": verdict.name,
            "address": conn.dst_ip,
            "port": conn.dst_port,
            "protocol": "tcp",
        }
        try:
            self._audit(event)
        except Exception:
            log.exception("audit sink failed for %s", event)

    def admit(self, conn: _Connection, sock: socket.socket) -> str | None:
        """Identify and bound a new connection; return a denial reason or None."""
        self._counters["accepted"] += 1
        try:
            peer_ip = sock.getpeername()[0]
            local_ip, local_port = sock.getsockname()[:2]
        except OSError:
            return "socket_error"
        conn.peer_ip = peer_ip
        view = self.lookup(peer_ip)
        if view is None:
            return "unknown_client"
        conn.sandbox_id = view.sandbox_id
        try:
            conn.dst_ip, conn.dst_port = self.original_dst(sock)
        except OSError:
            return "no_original_dst"
        if conn.dst_ip == local_ip or (conn.dst_ip, conn.dst_port) == (local_ip, local_port):
            return "proxy_address"
        if is_non_public(conn.dst_ip, self.extra_non_public, exempt=self.non_public_exempt):
            return "non_public"
        peers = self._by_sandbox.setdefault(view.sandbox_id, set())
        if len(self._conns) >= self.max_conns or len(peers) >= self.max_conns_per_sandbox:
            return "too_many_connections"
        self._conns.add(conn)
        peers.add(conn)
        return None

    def view_for(self, conn: _Connection) -> SandboxView | None:
        """The sandbox's current view: policy changes apply to every later decision."""
        view = self.lookup(conn.peer_ip) if conn.peer_ip else None
        return view if view is not None and view.sandbox_id == conn.sandbox_id else None

    def forget(self, conn: _Connection) -> None:
        self._conns.discard(conn)
        if conn.sandbox_id is not None:
            peers = self._by_sandbox.get(conn.sandbox_id)
            if peers is not None:
                peers.discard(conn)
                if not peers:
                    del self._by_sandbox[conn.sandbox_id]

    def count(self, key: str, n: int) -> None:
        self._counters[key] += n


def _reset_transport(transport: asyncio.Transport | None) -> None:
    """Close so the peer sees a TCP reset (SO_LINGER {1, 0}), not a FIN."""
    if transport is None or transport.is_closing():
        if transport is not None:
            transport.abort()
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Connection(asyncio.Protocol):
    """One client connection (this protocol is its client side): peek, decide, dial, splice."""

    def __init__(self, proxy: SniProxy) -> None:
        self.proxy = proxy
        self.client: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.peer_ip: str | None = None
        self.sandbox_id: str | None = None
        self.dst_ip = ""
        self.dst_port = 0
        self.verdict: Verdict | None = None
        self.name: str | None = None
        self.phase = "peek"  # peek -> dialing -> splice; closed at any point
        self._buf = bytearray()  # peeked or not-yet-forwarded client bytes (bounded)
        self._http: HttpRequestStream | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._dial_task: asyncio.Task[None] | None = None
        self._client_eof = False
        self._upstream_eof = False
        self._client_paused: set[str] = set()

    # Client side ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.client = transport
        reason = self.proxy.admit(self, transport.get_extra_info("socket"))
        if reason is not None:
            self._deny(Verdict(False, reason))
            return
        self._arm(self.proxy.peek_timeout, self._on_peek_timeout)

    def data_received(self, data: bytes) -> None:
        if self.phase == "closed":
            return
        if self._http is not None and not self._http.tunnel:
            self._http_data(data)
        elif self.phase == "splice":
            assert self.upstream is not None
            self.upstream.write(data)
            self.proxy.count("bytes_up", len(data))
        else:
            first_bytes = self.phase == "peek" and not self._buf
            self._buf += data
            if self.phase == "peek":
                self._classify()
                if first_bytes and self.phase == "peek":
                    self._arm(self.proxy.handshake_timeout, self._on_handshake_timeout)

    def eof_received(self) -> bool:
        self._client_eof = True
        if self.phase == "peek":
            if self._buf or self._http is not None:
                self._deny(Verdict(False, "incomplete"))
            else:
                self._decide(decide_opaque(*self._context()) if self._has_view() else None)
        elif self.phase == "splice":
            self._flush()
            assert self.upstream is not None
            if self.upstream.can_write_eof():
                self.upstream.write_eof()
            if self._upstream_eof:
                self.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.reset()
        else:
            self.close()

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and not self.upstream.is_closing():
            self.upstream.resume_reading()

    # Peek and decide --------------------------------------------------------------------

    def _has_view(self) -> bool:
        return self.proxy.view_for(self) is not None

    def _context(self) -> tuple[SandboxView, ResolvedNames, str]:
        view = self.proxy.view_for(self)
        assert view is not None
        return view, self.proxy.resolved, self.dst_ip

    def _classify(self) -> None:
        data = bytes(self._buf)
        tls = starts_like_tls(data)
        if tls:
            hello = parse_client_hello(data)
            if isinstance(hello, NeedMore):
                if len(data) > MAX_PEEK_BYTES:
                    self._deny(Verdict(False, "malformed_tls"))
            elif isinstance(hello, ClientHello):
                self._decide(decide_tls(hello, *self._context()) if self._has_view() else None)
            else:
                reason = hello.reason if isinstance(hello, Malformed) else "not_tls"
                log.debug("malformed ClientHello from %s: %s", self.peer_ip, reason)
                self._deny(Verdict(False, "malformed_tls"))
            return
        if tls is None:
            return
        http = starts_like_http(data)
        if http:
            self._http = HttpRequestStream()
            self._buf.clear()
            self._http_data(data)
        elif http is False:
            self._decide(decide_opaque(*self._context()) if self._has_view() else None)

    def _decide(self, verdict: Verdict | None) -> None:
        if verdict is None:
            verdict = Verdict(False, "unknown_client")
        if not verdict.allowed:
            self._deny(verdict)
            return
        self.proxy.audit(self, verdict)
        self.verdict, self.name = verdict, verdict.name
        self._start_dial()

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, callback)

    def _on_peek_timeout(self) -> None:
        self._timer = None
        if self.phase != "peek":
            return
        if self._buf or self._http is not None:
            # Never opaque once bytes came: a partial ClientHello is not an opaque stream.
            self._on_handshake_timeout()
        else:
            # Server-first protocols (SMTP, SSH banners) and silent clients: L4 trust only.
            self._decide(decide_opaque(*self._context()) if self._has_view() else None)

    def _on_handshake_timeout(self) -> None:
        self._timer = None
        if self.phase == "peek":
            # The reason predates the two clocks; audit consumers key on it.
            self._deny(Verdict(False, "peek_timeout"))

    def _http_data(self, data: bytes) -> None:
        assert self._http is not None
        for event in self._http.feed(data):
            if isinstance(event, HttpViolation):
                self._deny(Verdict(False, event.reason))
                return
            view = self.proxy.view_for(self)
            if view is None:
                self._deny(Verdict(False, "unknown_client"))
                return
            verdict = decide_http(event, view, self.proxy.resolved, self.dst_ip)
            if not verdict.allowed:
                self._deny(verdict)
                return
            if self.verdict is None or verdict.name != self.name:
                self.proxy.audit(self, verdict)  # one event per name, not per request
            self.verdict, self.name = verdict, verdict.name
        if self.upstream is not None and not self._buf and self._http.pending_head_bytes == 0:
            self.upstream.write(data)  # body bytes: the common, copy-free path
            self.proxy.count("bytes_up", len(data))
            return
        self._buf += data
        if len(self._buf) > MAX_PEEK_BYTES + len(data):
            self._deny(Verdict(False, "header_too_large"))
            return
        if self.phase == "peek" and self.verdict is not None:
            self._start_dial()
        self._flush()

    def _flush(self) -> None:
        """Forward buffered bytes, except an HTTP request head not yet checked."""
        if self.upstream is None or not self._buf:
            return
        held = 0
        if self._http is not None and not self._http.tunnel:
            held = self._http.pending_head_bytes
        n = len(self._buf) - held
        if n > 0:
            self.upstream.write(bytes(self._buf[:n]))
            self.proxy.count("bytes_up", n)
            del self._buf[:n]

    # Dial and splice -------------------------------------------------------------------

    def _start_dial(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.phase = "dialing"
        self._pause_client("dial")
        self._dial_task = asyncio.get_running_loop().create_task(self._dial())

    async def _dial(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.proxy.upstream_address(self.dst_ip, self.dst_port)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            # An address, never a name: the validated destination is the one dialled.
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), self.proxy.dial_timeout)
            await loop.create_connection(lambda: _Upstream(self), sock=sock)
        except (OSError, TimeoutError) as exc:
            sock.close()
            log.info("dial %s:%s for %s failed: %s", host, port, self.sandbox_id, exc)
            self.reset()
        except BaseException:
            sock.close()
            raise

    def upstream_made(self, transport: asyncio.Transport) -> None:
        if self.phase == "closed":
            _reset_transport(transport)
            return
        assert self.client is not None
        self.upstream = transport
        self.phase = "splice"
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
        self.client.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
        self._flush()
        if self._client_eof and transport.can_write_eof():
            transport.write_eof()
        self._resume_client("dial")

    def upstream_data(self, data: bytes) -> None:
        assert self.client is not None
        self.client.write(data)
        self.proxy.count("bytes_down", len(data))

    def upstream_eof(self) -> bool:
        self._upstream_eof = True
        assert self.client is not None
        if self.client.can_write_eof():
            self.client.write_eof()
        if self._client_eof:
            self.close()
        return True

    def _pause_client(self, why: str) -> None:
        if not self._client_paused and self.client is not None and not self.client.is_closing():
            self.client.pause_reading()
        self._client_paused.add(why)

    def _resume_client(self, why: str) -> None:
        self._client_paused.discard(why)
        if not self._client_paused and self.client is not None and not self.client.is_closing():
            self.client.resume_reading()

    # Teardown (idempotent) ------------------------------------------------------------

    def _deny(self, verdict: Verdict) -> None:
        if self.phase == "closed":
            return
        self.proxy.audit(self, verdict)
        self.reset()

    def _teardown(self) -> bool:
        if self.phase == "closed":
            return False
        self.phase = "closed"
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._dial_task is not None and not self._dial_task.done():
            self._dial_task.cancel()
        self._buf.clear()
        self.proxy.forget(self)
        return True

    def reset(self) -> None:
        """Abort both sides with RST (denial, cut, or a peer that reset)."""
        if self._teardown():
            _reset_transport(self.client)
            _reset_transport(self.upstream)

    def close(self) -> None:
        """Graceful close of both sides: queued bytes are still delivered."""
        if self._teardown():
            for transport in (self.client, self.upstream):
                if transport is not None:
                    transport.close()


class _Upstream(asyncio.Protocol):
    def __init__(self, conn: _Connection) -> None:
        self.conn = conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.conn.upstream_made(transport)

    def data_received(self, data: bytes) -> None:
        self.conn.upstream_data(data)

    def eof_received(self) -> bool:
        return self.conn.upstream_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.conn.reset()
        else:
            self.conn.close()

    def pause_writing(self) -> None:
        self.conn._pause_client("upstream")

    def resume_writing(self) -> None:
        self.conn._resume_client("upstream")
