"""SniProxy: the listener of the thin asyncio adapter around the connection machine. It
admits and bounds connections (source -> sandbox, original destination, caps), keeps the
counters, feeds the audit sinks and cuts connections after a policy change; `adapter` runs
each connection, and the `splice.Pump` it owns moves passthrough bytes off the loop. It
decides nothing about names or bytes itself.

Invariant: a connection is attributed to the sandbox its source address belongs to, and one
whose original destination is the proxy itself or non-public never gets a machine.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from declawd.addresses import PROXY_PORT
from declawd.egress.policy import is_non_public
from declawd.egress.proxy import commands as cmd
from declawd.egress.proxy.adapter import ProxiedConnection
from declawd.egress.proxy.decide import SandboxView, Verdict
from declawd.egress.proxy.intercept import Interception, LayerFactory, LeafContexts
from declawd.egress.proxy.machine import HANDSHAKE_TIMEOUT_S, PEEK_TIMEOUT_S
from declawd.egress.proxy.splice import PIPE_SIZE, SPLICE_AFTER, Mode, Pump
from declawd.egress.resolved import ResolvedNames
from declawd.inspect.model import HttpAudit

log = logging.getLogger(__name__)

SO_ORIGINAL_DST = 80
ALPN = ["h2", "http/1.1"]

OriginalDst = Callable[[socket.socket], tuple[str, int]]
HttpAuditSink = Callable[[str, str, int, HttpAudit], None]


def so_original_dst(sock: socket.socket) -> tuple[str, int]:
    """The pre-REDIRECT destination of an accepted IPv4 connection (conntrack)."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntoa(raw[4:8]), port


# (sandbox_id, name or None, ip, port) -> a deny Verdict, or None to allow. Blocking (it may
# ask the Rego worker): the adapter runs it off the loop.
NetworkGate = Callable[[str, str | None, str, int], Verdict | None]
# sandbox_id -> whether the gate has anything to ask for it (cheap, on the loop): a sandbox
# without a network package dials without the hop to an executor thread.
NetworkGated = Callable[[str], bool]


class SniProxy:
    """The listener and its connections: admission (source -> sandbox, original destination,
    caps), counters, audit sinks, and `cut` after a policy change. With `leaf_contexts`,
    `upstream_tls` and `http_layer` it intercepts what `SandboxView.inspection` asks for
    (plain HTTP needs only `http_layer`)."""

    def __init__(
        self,
        *,
        lookup: Callable[[str], SandboxView | None],
        resolved: ResolvedNames,
        audit: Callable[[dict[str, Any]], None],
        peek_timeout: float = PEEK_TIMEOUT_S,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
        max_conns_per_sandbox: int = 512,
        max_conns: int = 8192,
        original_dst: OriginalDst = so_original_dst,
        upstream_address: Callable[[str, int], tuple[str, int]] | None = None,
        extra_non_public: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
        non_public_exempt: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
        dial_timeout: float = 10.0,
        leaf_contexts: LeafContexts | None = None,
        upstream_tls: ssl.SSLContext | None = None,
        http_layer: LayerFactory | None = None,
        audit_http: HttpAuditSink | None = None,
        inspect_workers: int = 2,
        network_gate: NetworkGate | None = None,
        network_gated: NetworkGated | None = None,
        splice: Mode | None = "splice",
        pipe_size: int = PIPE_SIZE,
        splice_after: int = SPLICE_AFTER,
    ) -> None:
        self.lookup = lookup
        # Asked before each dial (the custom policy's network package); None: no such gate.
        self.network_gate = network_gate
        self.network_gated: NetworkGated = network_gated or (lambda _sid: True)
        self.resolved = resolved
        self._audit = audit
        self._audit_http = audit_http
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
        if upstream_tls is not None:
            upstream_tls.set_alpn_protocols(ALPN)  # whatever the upstream offers, we translate
        self.interception = Interception(leaf_contexts, upstream_tls, http_layer)
        # Inspected connections' data is handled here, off the loop (adapter.py); 0 = inline.
        self.workers: ThreadPoolExecutor | None = None
        if http_layer is not None and inspect_workers > 0:
            self.workers = ThreadPoolExecutor(inspect_workers, thread_name_prefix="inspect")
        # Passthrough directions whose verdict is final move here (None: all on the loop).
        self.pump = Pump(splice, pipe_size) if splice is not None else None
        self.splice_after = splice_after
        self._server: asyncio.Server | None = None
        self._conns: set[ProxiedConnection] = set()
        self._by_sandbox: dict[str, set[ProxiedConnection]] = {}
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
            lambda: ProxiedConnection(self), host, port, reuse_address=True, backlog=1024
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
        if self.pump is not None:
            self.pump.stop()
        if self.workers is not None:
            self.workers.shutdown(wait=False, cancel_futures=True)

    def cut(self, sandbox_id: str, still_allowed: Callable[[str | None, str, int], bool]) -> int:
        """Reset this sandbox's established connections that the new policy no longer allows."""
        cut = 0
        for conn in list(self._by_sandbox.get(sandbox_id, ())):
            if conn.feed(cmd.PolicyCut(still_allowed)):
                cut += 1
        self._counters["cut"] += cut
        return cut

    def stats(self) -> dict[str, Any]:
        counters = dict(self._counters)
        if self.pump is not None:
            for key, n in self.pump.totals.items():
                counters[key] += n
        return {
            **counters,
            "active": len(self._conns),
            "spliced": self.pump.links if self.pump is not None else 0,
            "per_sandbox": {sid: len(c) for sid, c in self._by_sandbox.items() if c},
            "reasons": dict(self._reasons),
        }

    # Called by connections ------------------------------------------------------------

    def audit(self, conn: ProxiedConnection, verdict: Verdict) -> None:
        self._counters["allowed" if verdict.allowed else "denied"] += 1
        self._reasons[verdict.reason] = self._reasons.get(verdict.reason, 0) + 1
        if conn.sandbox_id is None:
            return  # unknown source: no sandbox to attribute the event to
        event: dict[str, Any] = {
            "sandbox_id": conn.sandbox_id,
            "kind": "connection",
            "verdict": "allow" if verdict.allowed else "deny",
            "reason": verdict.reason,
            "name": verdict.name,
            "address": conn.dst_ip,
            "port": conn.dst_port,
            "protocol": "tcp",
        }
        if verdict.messages:
            event["detail"] = {"policy": {"verdict": "denied", "messages": list(verdict.messages)}}
        try:
            self._audit(event)
        except Exception:
            log.exception("audit sink failed for %s", event)

    def audit_http(self, conn: ProxiedConnection, audit: HttpAudit) -> None:
        if self._audit_http is None or conn.sandbox_id is None:
            return
        try:
            self._audit_http(conn.sandbox_id, conn.dst_ip, conn.dst_port, audit)
        except Exception:
            # Never the record itself in the log: it is the layer's, already masked or not.
            log.exception("http audit sink failed for %s", conn.sandbox_id)

    def admit(self, conn: ProxiedConnection, sock: socket.socket) -> str | None:
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

    def gated(self, sandbox_id: str) -> bool:
        """Whether a dial for this sandbox must first ask the network gate."""
        return self.network_gate is not None and self.network_gated(sandbox_id)

    def view_for(self, conn: ProxiedConnection) -> SandboxView | None:
        """The sandbox's current view: policy changes apply to every later decision."""
        view = self.lookup(conn.peer_ip) if conn.peer_ip else None
        return view if view is not None and view.sandbox_id == conn.sandbox_id else None

    def forget(self, conn: ProxiedConnection) -> None:
        self._conns.discard(conn)
        if conn.sandbox_id is not None:
            peers = self._by_sandbox.get(conn.sandbox_id)
            if peers is not None:
                peers.discard(conn)
                if not peers:
                    del self._by_sandbox[conn.sandbox_id]

    def count(self, key: str, n: int) -> None:
        self._counters[key] += n
