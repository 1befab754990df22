"""The inspected half of a connection: the two TLS ends (none for plain HTTP) and the HTTP
layer between them. Sans-IO: it only emits commands through its host, the connection machine.

Invariant: plaintext reaches the layer only after the sandbox-side handshake completed with
our leaf, and the layer is created once the upstream's fate is known (its TLS verified, or
it failed: then the layer answers 502); an inspected connection never falls back to
passthrough.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from declawd.egress.proxy import commands as cmd
from declawd.egress.proxy.decide import Verdict
from declawd.egress.proxy.tls import TlsEnd, TlsFailure
from declawd.inspect import model
from declawd.inspect.model import HttpLayer, InspectContext, InspectionPolicy

log = logging.getLogger(__name__)

# Plaintext held while the layer does not exist yet (the client is paused meanwhile, so
# at most what was in flight).
HOLD_LIMIT = 1024 * 1024
# What an HTTP layer may hold for a peer whose flow-control window is shut before we stop
# reading the other side.
BACKLOG_LIMIT = 1024 * 1024

LayerFactory = Callable[[InspectContext, InspectionPolicy], HttpLayer]


class LeafContexts(Protocol):
    def server_context(self, sandbox_id: str, host: str) -> ssl.SSLContext:
        """A server context with the leaf for `host` signed by this sandbox's CA and ALPN
        ["h2", "http/1.1"]."""
        ...


@dataclass(frozen=True)
class Interception:
    """What the proxy needs to intercept; without it every connection is passthrough."""

    leaf_contexts: LeafContexts | None = None
    upstream_tls: ssl.SSLContext | None = None
    http_layer: LayerFactory | None = None

    @property
    def tls(self) -> bool:
        return None not in (self.leaf_contexts, self.upstream_tls, self.http_layer)

    @property
    def http(self) -> bool:
        return self.http_layer is not None


class SessionHost(Protocol):
    """The connection machine, as the session sees it."""

    @property
    def closed(self) -> bool: ...

    def emit(self, command: cmd.Command) -> None: ...

    def pause_client(self, why: str) -> None: ...

    def resume_client(self, why: str) -> None: ...

    def pause_upstream(self, why: str) -> None: ...

    def resume_upstream(self, why: str) -> None: ...


@dataclass(frozen=True)
class Target:
    sandbox_id: str
    host: str  # the SNI (or the address when there is none) / the first request's Host
    dst_ip: str
    dst_port: int


UpstreamState = Literal["dialing", "handshake", "ready", "failed"]


class InspectedSession:
    """Build with `over_tls` (at the ClientHello verdict, before the dial) or `plain` (once
    the dial of a plain-HTTP connection succeeded or failed)."""

    def __init__(
        self,
        host: SessionHost,
        target: Target,
        policy: InspectionPolicy,
        factory: LayerFactory,
        *,
        client_tls: TlsEnd | None,
        upstream_ctx: ssl.SSLContext | None,
        state: UpstreamState,
    ) -> None:
        self._host = host
        self.target = target
        self._policy = policy
        self._factory = factory
        self._client_tls = client_tls
        self._upstream_ctx = upstream_ctx
        self._upstream: TlsEnd | None = None
        self._state: UpstreamState = state
        self._upstream_error: str | None = None
        self._layer: HttpLayer | None = None
        self._early_up = bytearray()
        self._early_down = bytearray()
        self._client_done = False
        self._upstream_done = False

    @classmethod
    def over_tls(
        cls,
        host: SessionHost,
        target: Target,
        policy: InspectionPolicy,
        factory: LayerFactory,
        *,
        server_ctx: ssl.SSLContext,
        upstream_ctx: ssl.SSLContext,
        handshake_timeout: float,
    ) -> InspectedSession:
        session = cls(
            host,
            target,
            policy,
            factory,
            client_tls=TlsEnd.server(server_ctx),
            upstream_ctx=upstream_ctx,
            state="dialing",
        )
        host.emit(cmd.ArmTimer(cmd.TLS_HANDSHAKE, handshake_timeout))
        return session

    @classmethod
    def plain(
        cls,
        host: SessionHost,
        target: Target,
        policy: InspectionPolicy,
        factory: LayerFactory,
        *,
        upstream_error: str | None,
    ) -> InspectedSession:
        state: UpstreamState = "failed" if upstream_error else "ready"
        session = cls(
            host, target, policy, factory, client_tls=None, upstream_ctx=None, state=state
        )
        if upstream_error is not None:
            session._fail_upstream("upstream_unreachable", upstream_error)
        else:
            session._maybe_layer()
        return session

    @property
    def layer(self) -> HttpLayer | None:
        return self._layer

    # Sandbox side ---------------------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        tls = self._client_tls
        if tls is None:
            self._to_layer_up(data)
            return
        try:
            plain = tls.feed(data)
        except TlsFailure as failure:
            self._client_failed(failure)
            return
        self._flush_client()
        if tls.established and self._layer is None:
            self._maybe_layer()
            if self._layer is None:
                self._host.pause_client("layer")  # until the upstream's fate is known
        if plain:
            self._to_layer_up(plain)
        if tls.peer_closed:
            self._client_gone()

    def client_eof(self) -> None:
        tls = self._client_tls
        if tls is not None and tls.established:
            try:
                plain = tls.feed_eof()
            except TlsFailure:
                plain = b""
            if plain:
                self._to_layer_up(plain)
        elif tls is not None:
            self._host.emit(cmd.CloseBoth())  # the sandbox gave up during its handshake
            return
        self._client_gone()

    # Upstream side --------------------------------------------------------------------

    def upstream_connected(self) -> None:
        if self._state != "dialing":
            self._host.emit(cmd.DropUpstream())  # its clock ran out: the sandbox has a 502
            return
        assert self._upstream_ctx is not None
        try:
            self._upstream = TlsEnd.client(self._upstream_ctx, self.target.host)
        except (TlsFailure, ValueError) as exc:
            self._fail_upstream("upstream_tls_failed", str(exc))
            self._host.emit(cmd.DropUpstream())
            return
        self._state = "handshake"
        self._flush_upstream()

    def upstream_failed(self, message: str) -> None:
        if self._state == "dialing":
            self._fail_upstream("upstream_unreachable", f"upstream unreachable: {message}")

    def upstream_data(self, data: bytes) -> None:
        if self._state == "failed":
            return
        tls = self._upstream
        if tls is None:
            self._to_layer_down(data)
            return
        try:
            plain = tls.feed(data)
        except TlsFailure as failure:
            self._flush_upstream()  # the alert
            self._upstream_tls_failed(failure.message)
            return
        self._flush_upstream()
        if self._state == "handshake" and tls.established:
            self._state = "ready"
            self._maybe_layer()
        if plain:
            self._to_layer_down(plain)
        if tls.peer_closed:
            self._upstream_gone()

    def upstream_eof(self) -> None:
        if self._state == "failed":
            return
        tls = self._upstream
        if tls is not None:
            try:
                plain = tls.feed_eof()
            except TlsFailure as failure:
                self._upstream_tls_failed(failure.message)
                return
            if plain:
                self._to_layer_down(plain)
        self._upstream_gone()

    def handshake_timer(self) -> None:
        tls = self._client_tls
        if tls is not None and not tls.established:
            self._host.emit(cmd.Audit(Verdict(False, "tls_handshake_timeout", self.target.host)))
            self._host.emit(cmd.ResetBoth())
        elif self._state == "dialing":
            self._fail_upstream("upstream_unreachable", "upstream unreachable: timed out")
        elif self._state == "handshake":
            self._upstream_tls_failed("upstream TLS handshake timed out")

    # Internals ------------------------------------------------------------------------

    def _upstream_tls_failed(self, message: str) -> None:
        if self._layer is not None:
            # After it verified: a broken session mid-stream, as a reset would be.
            log.info("upstream TLS of %s failed mid-stream: %s", self.target.host, message)
            self._host.emit(cmd.ResetBoth())
            return
        self._fail_upstream("upstream_tls_failed", message)
        self._host.emit(cmd.DropUpstream())

    def _fail_upstream(self, reason: str, message: str) -> None:
        self._state = "failed"
        self._upstream_error = message
        self._host.emit(cmd.Audit(Verdict(False, reason, self.target.host)))
        self._maybe_layer()

    def _client_failed(self, failure: TlsFailure) -> None:
        self._flush_client()  # our alert, if any
        log.info("sandbox TLS to %s failed: %s", self.target.host, failure.message)
        self._host.emit(cmd.Audit(Verdict(False, "client_tls_failed", self.target.host)))
        self._host.emit(cmd.CloseBoth())

    def _maybe_layer(self) -> None:
        if self._layer is not None or self._host.closed:
            return
        tls = self._client_tls
        if (tls is not None and not tls.established) or self._state in ("dialing", "handshake"):
            return
        upstream_proto: Literal["h1", "h2"] | None = None
        if self._state == "ready":
            upstream_proto = self._upstream.http_version if self._upstream else "h1"
        context = InspectContext(
            sandbox_id=self.target.sandbox_id,
            host=self.target.host,
            scheme="https" if tls is not None else "http",
            dst_ip=self.target.dst_ip,
            dst_port=self.target.dst_port,
            client_proto=tls.http_version if tls is not None else "h1",
            upstream_proto=upstream_proto,
            upstream_error=None if upstream_proto else self._upstream_error,
        )
        try:
            self._layer = self._factory(context, self._policy)
        except Exception:
            log.exception("HTTP layer for %s could not be created", self.target.host)
            self._host.emit(cmd.Audit(Verdict(False, "inspect_error", self.target.host)))
            self._host.emit(cmd.ResetBoth())
            return
        if tls is not None:
            self._host.emit(cmd.CancelTimer())
        self._host.resume_client("layer")
        if self._early_up:
            early, self._early_up = bytes(self._early_up), bytearray()
            self._call(lambda layer: layer.client_data(early))
        if self._early_down:
            early, self._early_down = bytes(self._early_down), bytearray()
            self._call(lambda layer: layer.upstream_data(early))
        if self._client_done:
            self._call(lambda layer: layer.client_eof())
        if self._upstream_done:
            self._call(lambda layer: layer.upstream_eof())
        self._maybe_finish()

    def _to_layer_up(self, plain: bytes) -> None:
        if self._layer is not None:
            self._call(lambda layer: layer.client_data(plain))
            return
        self._early_up += plain
        self._check_hold()

    def _to_layer_down(self, plain: bytes) -> None:
        if self._layer is not None:
            self._call(lambda layer: layer.upstream_data(plain))
            return
        self._early_down += plain
        self._check_hold()

    def _check_hold(self) -> None:
        if len(self._early_up) + len(self._early_down) > HOLD_LIMIT:
            self._host.emit(cmd.Audit(Verdict(False, "buffer_overflow", self.target.host)))
            self._host.emit(cmd.ResetBoth())

    def _client_gone(self) -> None:
        if self._client_done:
            return
        self._client_done = True
        if self._layer is not None:
            self._call(lambda layer: layer.client_eof())
            self._maybe_finish()

    def _upstream_gone(self) -> None:
        if self._upstream_done:
            return
        self._upstream_done = True
        if self._layer is not None:
            self._call(lambda layer: layer.upstream_eof())
            self._maybe_finish()

    def _maybe_finish(self) -> None:
        """Both directions ended (or there is no upstream): nothing more can happen."""
        if self._client_done and (self._upstream_done or self._state == "failed"):
            self._close()

    def _close(self) -> None:
        if self._host.closed:
            return
        if self._client_tls is not None:
            self._client_tls.close()
            self._flush_client()
        if self._upstream is not None and self._state == "ready":
            self._upstream.close()
            self._flush_upstream()
        self._host.emit(cmd.CloseBoth())

    def _call(self, step: Callable[[HttpLayer], list[model.HttpCommand]]) -> None:
        """One call into the layer (not our code: a failure resets this connection only)."""
        if self._host.closed or self._layer is None:
            return
        try:
            commands = step(self._layer)
        except Exception:
            log.exception("HTTP layer for %s failed", self.target.host)
            self._host.emit(cmd.Audit(Verdict(False, "inspect_error", self.target.host)))
            self._host.emit(cmd.ResetBoth())
            return
        for command in commands:
            if self._host.closed:
                return
            self._execute(command)
        self._check_backlog()

    def _check_backlog(self) -> None:
        """Bytes the layer holds for a peer whose h2 window is shut: past BACKLOG_LIMIT, stop
        reading the side that sends them, so a peer that never opens its window cannot make
        the proxy buffer without bound."""
        layer = self._layer
        toward_upstream = getattr(layer, "upstream_backlog", 0)
        toward_client = getattr(layer, "client_backlog", 0)
        if toward_upstream > BACKLOG_LIMIT:
            self._host.pause_client("backlog")
        else:
            self._host.resume_client("backlog")
        if toward_client > BACKLOG_LIMIT:
            self._host.pause_upstream("backlog")
        else:
            self._host.resume_upstream("backlog")

    def _execute(self, command: model.HttpCommand) -> None:
        match command:
            case model.ToClient(data=data):
                self._send_client(data)
            case model.ToUpstream(data=data):
                self._send_upstream(data)
            case model.CloseClient():
                self._close()
            case model.CloseUpstream():
                if self._state == "ready":
                    if self._upstream is not None:
                        self._upstream.close()
                        self._flush_upstream()
                    self._host.emit(cmd.SendUpstreamEof())
            case model.ResetBoth(reason=reason):
                self._host.emit(cmd.Audit(Verdict(False, reason, self.target.host)))
                self._host.emit(cmd.ResetBoth())
            case model.HttpAudit():
                self._host.emit(cmd.AuditHttp(command))

    def _send_client(self, data: bytes) -> None:
        tls = self._client_tls
        if tls is None:
            if data:
                self._host.emit(cmd.SendClient(data))
            return
        try:
            tls.send(data)
        except TlsFailure as failure:
            self._client_failed(failure)
            return
        self._flush_client()

    def _send_upstream(self, data: bytes) -> None:
        if self._state != "ready" or not data:
            return  # no upstream: the layer answers 502 itself
        tls = self._upstream
        if tls is None:
            self._host.emit(cmd.SendUpstream(data))
            return
        try:
            tls.send(data)
        except TlsFailure as failure:
            self._upstream_tls_failed(failure.message)
            return
        self._flush_upstream()

    def _flush_client(self) -> None:
        if self._client_tls is not None and (out := self._client_tls.pending()):
            self._host.emit(cmd.SendClient(out))

    def _flush_upstream(self) -> None:
        if self._upstream is not None and (out := self._upstream.pending()):
            self._host.emit(cmd.SendUpstream(out))
