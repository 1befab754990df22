"""The connection machine: one per accepted client, events in, commands out (sans-IO, as
mitmproxy's layers). Phases: peek (TLS ClientHello / HTTP head / silence) -> decide -> dial
-> splice (passthrough) or inspect (an `InspectedSession` between the two ends); closed.

Invariant: no client byte is sent upstream before the verdict on the name the server will
route by, and on plain HTTP no request head reaches the upstream (or the HTTP layer) before
it was checked; every refusal is an audited reset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

from declawd.egress.httpsniff import HttpRequestStream, HttpViolation, starts_like_http
from declawd.egress.proxy import commands as cmd
from declawd.egress.proxy.decide import (
    SandboxView,
    Verdict,
    decide_http,
    decide_opaque,
    decide_tls,
    speaks_http,
)
from declawd.egress.proxy.intercept import HOLD_LIMIT, InspectedSession, Interception, Target
from declawd.egress.resolved import ResolvedNames
from declawd.egress.sni import (
    MAX_PEEK_BYTES,
    ClientHello,
    Malformed,
    NeedMore,
    parse_client_hello,
    starts_like_tls,
)
from declawd.inspect.model import InspectionPolicy

log = logging.getLogger(__name__)
# How long the proxy waits for a client's first bytes before treating the stream as opaque
# (server-first protocols such as SMTP or SSH wait this long for their banner).
PEEK_TIMEOUT_S = 2.0
HANDSHAKE_TIMEOUT_S = 10.0

Phase = Literal["peek", "dialing", "splice", "inspect", "closed"]
Plan = Literal["passthrough", "tls", "http"]


class Connection:
    """Two clocks bound a client still being peeked: `peek_timeout` while it has sent nothing
    (then its stream is opaque), and `handshake_timeout` from its first byte to a complete
    ClientHello or request head (then it is reset), so a slow link is not mistaken for a
    silent one. A peeked client holds a slot at most their sum and MAX_PEEK_BYTES of buffer.
    `view()` is read at every decision, so a policy change applies to the next request.
    """

    def __init__(
        self,
        *,
        sandbox_id: str,
        dst_ip: str,
        dst_port: int,
        view: Callable[[], SandboxView | None],
        resolved: ResolvedNames,
        peek_timeout: float = PEEK_TIMEOUT_S,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
        interception: Interception | None = None,
    ) -> None:
        self.sandbox_id = sandbox_id
        self.dst_ip = dst_ip
        self.dst_port = dst_port
        self._view = view
        self._resolved = resolved
        self.peek_timeout = peek_timeout
        self.handshake_timeout = handshake_timeout
        self._interception = interception or Interception()
        self.phase: Phase = "peek"
        self.plan: Plan = "passthrough"
        self.verdict: Verdict | None = None
        self.name: str | None = None
        self.session: InspectedSession | None = None
        self._buf = bytearray()  # peeked or not-yet-forwarded client bytes (bounded)
        self._http: HttpRequestStream | None = None
        self._inspection = InspectionPolicy()  # the sandbox's, at the first verdict
        self._timer: str | None = None
        self._client_eof = False
        self._upstream_eof = False
        self._upstream_up = False
        self._client_blocked = False
        self._upstream_paused: set[str] = set()
        self._client_paused: set[str] = set()
        self._out: list[cmd.Command] = []

    @property
    def closed(self) -> bool:
        return self.phase == "closed"

    def start(self) -> list[cmd.Command]:
        self.emit(cmd.ArmTimer(cmd.PEEK, self.peek_timeout))
        return self._take()

    def handle(self, event: cmd.Event) -> list[cmd.Command]:
        if self.phase != "closed":
            _HANDLERS[type(event)](self, event)
        return self._take()

    # SessionHost ----------------------------------------------------------------------

    def emit(self, command: cmd.Command) -> None:
        if self.phase == "closed":
            return  # nothing follows a close or a reset
        self._out.append(command)
        if isinstance(command, cmd.TERMINAL):
            self.phase = "closed"
            self._buf.clear()
        elif isinstance(command, cmd.ArmTimer):
            self._timer = command.kind
        elif isinstance(command, cmd.CancelTimer):
            self._timer = None

    def pause_client(self, why: str) -> None:
        if not self._client_paused:
            self.emit(cmd.PauseClient())
        self._client_paused.add(why)

    def resume_client(self, why: str) -> None:
        if why in self._client_paused:
            self._client_paused.discard(why)
            if not self._client_paused:
                self.emit(cmd.ResumeClient())

    # Client events --------------------------------------------------------------------

    def _on_client_data(self, event: cmd.ClientData) -> None:
        data = event.data
        if self._http is not None and not self._http.tunnel:
            self._http_data(data)
        elif self.session is not None:
            self.session.client_data(data)
        elif self.phase == "splice":
            self.emit(cmd.SendUpstream(data))
        else:
            first_bytes = self.phase == "peek" and not self._buf
            self._buf += data
            if self.phase == "peek":
                self._classify()
                if first_bytes and self.phase == "peek":
                    self.emit(cmd.ArmTimer(cmd.HANDSHAKE, self.handshake_timeout))
            elif len(self._buf) > HOLD_LIMIT + MAX_PEEK_BYTES:
                self._deny(Verdict(False, "buffer_overflow", self.name))

    def _on_client_eof(self, _: cmd.ClientEof) -> None:
        self._client_eof = True
        if self.phase == "peek":
            if self._buf or self._http is not None:
                self._deny(Verdict(False, "incomplete"))
            else:
                self._decide_opaque()
        elif self.session is not None:
            self.session.client_eof()
        elif self.phase == "splice":
            self._flush()
            self.emit(cmd.SendUpstreamEof())
            if self._upstream_eof:
                self.emit(cmd.CloseBoth())

    def _on_closed(self, _: cmd.ClientClosed | cmd.UpstreamClosed) -> None:
        self.emit(cmd.CloseBoth())

    def _on_reset(self, _: cmd.ClientReset | cmd.UpstreamReset) -> None:
        self.emit(cmd.ResetBoth())

    # Upstream events ------------------------------------------------------------------

    def _on_upstream_connected(self, _: cmd.UpstreamConnected) -> None:
        self._upstream_up = True
        if self._client_blocked:
            self.pause_upstream("client")
        if self.plan == "tls":
            assert self.session is not None
            self.session.upstream_connected()
            return
        if self.phase != "dialing":
            return
        if self.plan == "http":
            self._open_http_session(upstream_error=None)
        else:
            self.phase = "splice"
        self._after_dial()

    def _on_upstream_failed(self, event: cmd.UpstreamFailed) -> None:
        if self.plan == "tls":
            assert self.session is not None
            self.session.upstream_failed(event.message)
        elif self.plan == "http" and self.phase == "dialing":
            self._open_http_session(upstream_error=f"upstream unreachable: {event.message}")
            self._after_dial()
        else:
            self.emit(cmd.ResetBoth())  # as before the machine: the adapter logged why

    def _on_upstream_data(self, event: cmd.UpstreamData) -> None:
        if self.session is not None:
            self.session.upstream_data(event.data)
        else:
            self.emit(cmd.SendClient(event.data))

    def _on_upstream_eof(self, _: cmd.UpstreamEof) -> None:
        if self.session is not None:
            self.session.upstream_eof()
            return
        self._upstream_eof = True
        self.emit(cmd.SendClientEof())
        if self._client_eof:
            self.emit(cmd.CloseBoth())

    # Clocks, back-pressure, policy ----------------------------------------------------

    def _on_timer(self, event: cmd.TimerFired) -> None:
        if event.kind != self._timer:
            return  # a clock that was re-armed or cancelled meanwhile
        self._timer = None
        if event.kind == cmd.TLS_HANDSHAKE:
            if self.session is not None:
                self.session.handshake_timer()
        elif self.phase != "peek":
            return
        elif event.kind == cmd.PEEK and not (self._buf or self._http is not None):
            # Server-first protocols (SMTP, SSH banners) and silent clients: L4 trust only.
            self._decide_opaque()
        else:
            # Never opaque once bytes came. The reason predates the two clocks; audit
            # consumers key on it.
            self._deny(Verdict(False, "peek_timeout"))

    def _on_client_write_blocked(self, _: cmd.ClientWriteBlocked) -> None:
        self._client_blocked = True
        if self._upstream_up:
            self.pause_upstream("client")

    def _on_client_write_drained(self, _: cmd.ClientWriteDrained) -> None:
        self._client_blocked = False
        self.resume_upstream("client")

    def _on_upstream_write_blocked(self, _: cmd.UpstreamWriteBlocked) -> None:
        self.pause_client("upstream")

    def _on_upstream_write_drained(self, _: cmd.UpstreamWriteDrained) -> None:
        self.resume_client("upstream")

    def _on_policy_cut(self, event: cmd.PolicyCut) -> None:
        if self.verdict is None or not self.verdict.allowed:
            return  # still peeking: it will be decided under the new policy
        if not event.still_allowed(self.name, self.dst_ip, self.dst_port):
            self._deny(Verdict(False, "policy_changed", self.name))

    # Peek and decide ------------------------------------------------------------------

    def _classify(self) -> None:
        data = bytes(self._buf)
        tls = starts_like_tls(data)
        if tls:
            hello = parse_client_hello(data)
            if isinstance(hello, NeedMore):
                if len(data) > MAX_PEEK_BYTES:
                    self._deny(Verdict(False, "malformed_tls"))
            elif isinstance(hello, ClientHello):
                self._decide_tls(hello)
            else:
                reason = hello.reason if isinstance(hello, Malformed) else "not_tls"
                log.debug("malformed ClientHello for %s: %s", self.sandbox_id, reason)
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
            self._decide_opaque()

    def _decide_tls(self, hello: ClientHello) -> None:
        view = self._current_view()
        if view is None:
            return
        verdict = decide_tls(hello, view, self._resolved, self.dst_ip)
        if not self._accept(verdict, view):
            return
        if (
            self._interception.tls
            and speaks_http(hello)
            and view.inspection.inspects(hello.sni, tls=True)
        ):
            self._intercept_tls(hello.sni or self.dst_ip)
        else:
            self._start_dial()

    def _decide_opaque(self) -> None:
        view = self._current_view()
        if view is not None and self._accept(
            decide_opaque(view, self._resolved, self.dst_ip), view
        ):
            self._start_dial()

    def _current_view(self) -> SandboxView | None:
        view = self._view()
        if view is None:
            self._deny(Verdict(False, "unknown_client"))
        return view

    def _accept(self, verdict: Verdict, view: SandboxView) -> bool:
        if not verdict.allowed:
            self._deny(verdict)
            return False
        self.emit(cmd.Audit(verdict))
        self.verdict, self.name = verdict, verdict.name
        self._inspection = view.inspection
        return True

    def _http_data(self, data: bytes) -> None:
        assert self._http is not None
        for event in self._http.feed(data):
            if isinstance(event, HttpViolation):
                self._deny(Verdict(False, event.reason))
                return
            view = self._current_view()
            if view is None:
                return
            verdict = decide_http(event, view, self._resolved, self.dst_ip)
            if not verdict.allowed:
                self._deny(verdict)
                return
            if self.verdict is None:
                self._accept(verdict, view)
                if self._interception.http and view.inspection.inspects(verdict.name, tls=False):
                    self.plan = "http"
            elif verdict.name != self.name:
                self.emit(cmd.Audit(verdict))  # one event per name, not per request
                self.verdict, self.name = verdict, verdict.name
        if self._upstream_ready() and not self._buf and self._http.pending_head_bytes == 0:
            self._forward(data)  # body bytes: the common, copy-free path
            return
        self._buf += data
        if len(self._buf) > MAX_PEEK_BYTES + len(data):
            self._deny(Verdict(False, "header_too_large"))
            return
        if self.phase == "peek" and self.verdict is not None:
            self._start_dial()
        self._flush()

    # Dial, forward --------------------------------------------------------------------

    def _start_dial(self) -> None:
        self._cancel_timer()
        self.phase = "dialing"
        self.pause_client("dial")
        self.emit(cmd.Dial(self.dst_ip, self.dst_port, tls=False))

    def _intercept_tls(self, host: str) -> None:
        self._cancel_timer()
        icp = self._interception
        assert icp.leaf_contexts is not None and icp.upstream_tls is not None
        assert icp.http_layer is not None
        try:
            server_ctx = icp.leaf_contexts.server_context(self.sandbox_id, host)
        except Exception:
            log.exception("no leaf certificate for %s (%s)", host, self.sandbox_id)
            self._deny(Verdict(False, "inspect_error", self.name))
            return
        self.phase, self.plan = "inspect", "tls"
        self.emit(cmd.Dial(self.dst_ip, self.dst_port, tls=True))
        self.session = InspectedSession.over_tls(
            self,
            Target(self.sandbox_id, host, self.dst_ip, self.dst_port),
            self._inspection,
            icp.http_layer,
            server_ctx=server_ctx,
            upstream_ctx=icp.upstream_tls,
            handshake_timeout=self.handshake_timeout,
        )
        hello, self._buf = bytes(self._buf), bytearray()
        self.session.client_data(hello)

    def _open_http_session(self, upstream_error: str | None) -> None:
        assert self._interception.http_layer is not None
        self.phase = "inspect"
        self.session = InspectedSession.plain(
            self,
            Target(self.sandbox_id, self.name or self.dst_ip, self.dst_ip, self.dst_port),
            self._inspection,
            self._interception.http_layer,
            upstream_error=upstream_error,
        )

    def _after_dial(self) -> None:
        """The upstream's fate is known: release what the client sent meanwhile."""
        self._flush()
        if self._client_eof:
            if self.session is not None:
                self.session.client_eof()
            else:
                self.emit(cmd.SendUpstreamEof())
        self.resume_client("dial")

    def _upstream_ready(self) -> bool:
        return self.phase == "splice" or (self.session is not None and self.plan == "http")

    def _forward(self, data: bytes) -> None:
        if self.session is not None:
            self.session.client_data(data)
        else:
            self.emit(cmd.SendUpstream(data))

    def _flush(self) -> None:
        """Forward buffered bytes, except an HTTP request head not yet checked."""
        if not self._upstream_ready() or not self._buf or self.closed:
            return
        held = 0
        if self._http is not None and not self._http.tunnel:
            held = self._http.pending_head_bytes
        n = len(self._buf) - held
        if n > 0:
            chunk = bytes(self._buf[:n])
            del self._buf[:n]
            self._forward(chunk)

    # Helpers --------------------------------------------------------------------------

    def _deny(self, verdict: Verdict) -> None:
        self.emit(cmd.Audit(verdict))  # dropped, like everything, once closed
        self.emit(cmd.ResetBoth())

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self.emit(cmd.CancelTimer())

    def pause_upstream(self, why: str) -> None:
        if not self._upstream_paused:
            self.emit(cmd.PauseUpstream())
        self._upstream_paused.add(why)

    def resume_upstream(self, why: str) -> None:
        if why in self._upstream_paused:
            self._upstream_paused.discard(why)
            if not self._upstream_paused:
                self.emit(cmd.ResumeUpstream())

    def _take(self) -> list[cmd.Command]:
        out, self._out = self._out, []
        return out


_HANDLERS: dict[type, Callable[[Connection, Any], None]] = {
    cmd.ClientData: Connection._on_client_data,
    cmd.ClientEof: Connection._on_client_eof,
    cmd.ClientClosed: Connection._on_closed,
    cmd.ClientReset: Connection._on_reset,
    cmd.UpstreamConnected: Connection._on_upstream_connected,
    cmd.UpstreamFailed: Connection._on_upstream_failed,
    cmd.UpstreamData: Connection._on_upstream_data,
    cmd.UpstreamEof: Connection._on_upstream_eof,
    cmd.UpstreamClosed: Connection._on_closed,
    cmd.UpstreamReset: Connection._on_reset,
    cmd.TimerFired: Connection._on_timer,
    cmd.ClientWriteBlocked: Connection._on_client_write_blocked,
    cmd.ClientWriteDrained: Connection._on_client_write_drained,
    cmd.UpstreamWriteBlocked: Connection._on_upstream_write_blocked,
    cmd.UpstreamWriteDrained: Connection._on_upstream_write_drained,
    cmd.PolicyCut: Connection._on_policy_cut,
}
