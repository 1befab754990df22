"""The asyncio side of one proxied connection: its two transports, its timer and its dial,
driving one `machine.Connection`. Events are queued and handled one at a time (a write inside
a command may report back-pressure at once); commands run in the order returned. Events of
an inspected connection that may cost real CPU (a body being rewritten) are handled on the
proxy's worker threads, so one sandbox's slow rewrite does not stall the loop that serves
every other sandbox; while one runs, the side that sent more is paused. A passthrough
direction whose bytes the machine will never look at again (both of TLS and opaque streams,
the responses of plain HTTP) is handed to the proxy's `splice.Pump` once what was queued for
it is written; the pump reports EOFs and resets back as the machine's events.

Invariant: it dials the ADDRESS the machine names (the original destination, never a name
re-resolved), and a connection it drops is reset on both sides (SO_LINGER {1, 0}).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import deque
from typing import TYPE_CHECKING, Literal

from declawd.egress.proxy import commands as cmd
from declawd.egress.proxy.decide import Verdict
from declawd.egress.proxy.machine import Connection
from declawd.egress.proxy.splice import Link, Outcome, Side

if TYPE_CHECKING:
    from declawd.egress.proxy.server import SniProxy

log = logging.getLogger(__name__)

WRITE_HIGH_WATER = 512 * 1024
# What the pump's report of a direction's end means to the machine.
_PUMPED: dict[tuple[Side, Outcome], cmd.Event] = {
    ("up", "eof"): cmd.ClientEof(),
    ("up", "src_reset"): cmd.ClientReset(),
    ("up", "dst_reset"): cmd.UpstreamReset(),
    ("down", "eof"): cmd.UpstreamEof(),
    ("down", "src_reset"): cmd.UpstreamReset(),
    ("down", "dst_reset"): cmd.ClientReset(),
}
# A hand-off waits for a transport's queued bytes to drain: first retry, then at most.
_HAND_OFF_RETRY_S = (0.0005, 0.1)


def reset_transport(transport: asyncio.BaseTransport | None) -> None:
    """Close so the peer sees a TCP reset (SO_LINGER {1, 0}), not a FIN."""
    if not isinstance(transport, asyncio.Transport):
        return
    if not transport.is_closing():
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class ProxiedConnection(asyncio.Protocol):
    """One accepted connection (this protocol is its client side) and its machine."""

    def __init__(self, proxy: SniProxy) -> None:
        self.proxy = proxy
        self.client: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.peer_ip: str | None = None
        self.sandbox_id: str | None = None
        self.dst_ip = ""
        self.dst_port = 0
        self.machine: Connection | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._dial_task: asyncio.Task[None] | None = None
        self._queue: deque[cmd.Event] = deque()
        self._busy = False
        self._done = False
        # Reading as the machine wants it, and sides paused while a worker handles data.
        self._want_reading = {"client": True, "upstream": True}
        self._throttled: set[str] = set()
        # The pump: "off" until the verdict is final; "on" once handed (for good, even
        # after the link ended); "never" if the hand-off failed. `_spliced`: the sides
        # whose reading is the pump's (asyncio never resumes them).
        self._pump: Literal["off", "handing", "on", "never"] = "off"
        self._link: Link | None = None
        self._spliced: set[str] = set()
        self._eof_seen: set[str] = set()
        self._moved = 0  # bytes sent by the loop, both ways

    # Events in ------------------------------------------------------------------------

    def feed(self, event: cmd.Event) -> bool:
        """Hand an event to the machine; True if it ended the connection right then."""
        if self._done or self.machine is None:
            return False
        if isinstance(event, cmd.ClientEof | cmd.UpstreamEof):
            self._eof_seen.add("client" if isinstance(event, cmd.ClientEof) else "upstream")
        self._queue.append(event)
        if self._busy:
            self._throttle(event)
            return False
        self._busy = True
        handed_off = False
        try:
            while self._queue and not self._done:
                if self._offloads(self._queue[0]):
                    asyncio.get_running_loop().create_task(self._drain())
                    handed_off = True
                    return False
                self._execute(self._handle(self._queue.popleft()))
        finally:
            if not handed_off:
                self._busy = False
        self._maybe_splice()
        return self._done

    def _handle(self, event: cmd.Event) -> list[cmd.Command]:
        assert self.machine is not None
        try:
            return self.machine.handle(event)
        except Exception:
            log.exception("connection machine failed for %s", self.sandbox_id)
            return [cmd.ResetBoth()]

    def _offloads(self, event: cmd.Event) -> bool:
        """Whether this event goes to a worker thread: the events that may cost real CPU
        in an inspected connection's HTTP layer. That is while a body is being buffered or
        streamed through the pipeline (`layer.scanning`), and while the layer is about to
        be made and handed what the sandbox sent meanwhile (the end of the TLS handshakes;
        the end of the dial of a plain-HTTP session). Bodies passed as they are (a download
        of an opaque type) stay on the loop: a thread hop per read would halve their speed.
        A policy cut stays on the loop (its caller counts what it cut)."""
        machine = self.machine
        if self.proxy.workers is None or machine is None or isinstance(event, cmd.PolicyCut):
            return False
        session = machine.session
        if session is None:
            return machine.plan == "http" and isinstance(event, cmd.UpstreamConnected)
        layer = session.layer
        if layer is None:
            return True
        return bool(getattr(layer, "scanning", True))

    async def _drain(self) -> None:
        """Handle the queue in order, an inspected connection's events on a worker thread (one
        at a time: the machine is never entered from two threads)."""
        loop = asyncio.get_running_loop()
        try:
            while self._queue and not self._done:
                event = self._queue.popleft()
                if self._offloads(event):
                    commands = await loop.run_in_executor(self.proxy.workers, self._handle, event)
                else:
                    commands = self._handle(event)
                self._execute(commands)
        finally:
            self._busy = False
            self._throttled.clear()
            self._apply_reading()
        self._maybe_splice()

    def _throttle(self, event: cmd.Event) -> None:
        """More data while a worker is busy with this connection: stop reading that side."""
        side = {cmd.ClientData: "client", cmd.UpstreamData: "upstream"}.get(type(event))
        if side is not None and side not in self._throttled:
            self._throttled.add(side)
            self._apply_reading()

    def _apply_reading(self) -> None:
        for side, transport in (("client", self.client), ("upstream", self.upstream)):
            on = self._want_reading[side] and not {side} & (self._throttled | self._spliced)
            _set_reading(transport, on)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.client = transport
        reason = self.proxy.admit(self, transport.get_extra_info("socket"))
        if reason is not None:
            self.proxy.audit(self, Verdict(False, reason))
            self._teardown()
            reset_transport(transport)
            return
        assert self.sandbox_id is not None
        self.machine = Connection(
            sandbox_id=self.sandbox_id,
            dst_ip=self.dst_ip,
            dst_port=self.dst_port,
            view=lambda: self.proxy.view_for(self),
            resolved=self.proxy.resolved,
            peek_timeout=self.proxy.peek_timeout,
            handshake_timeout=self.proxy.handshake_timeout,
            interception=self.proxy.interception,
        )
        self._execute(self.machine.start())

    def data_received(self, data: bytes) -> None:
        self.feed(cmd.ClientData(data))

    def eof_received(self) -> bool:
        self.feed(cmd.ClientEof())
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.feed(cmd.ClientClosed() if exc is None else cmd.ClientReset())
        self._teardown()

    def pause_writing(self) -> None:
        self.feed(cmd.ClientWriteBlocked())

    def resume_writing(self) -> None:
        self.feed(cmd.ClientWriteDrained())

    def upstream_made(self, transport: asyncio.Transport) -> None:
        if self._done:
            reset_transport(transport)
            return
        assert self.client is not None
        self.upstream = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.client.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.feed(cmd.UpstreamConnected())

    # Commands out ---------------------------------------------------------------------

    def _execute(self, commands: list[cmd.Command]) -> None:
        for command in commands:
            if self._done:
                return
            match command:
                case cmd.SendClient(data=data):
                    if self.client is not None:
                        self.client.write(data)
                        self._moved += len(data)
                        self.proxy.count("bytes_down", len(data))
                case cmd.SendUpstream(data=data):
                    if self.upstream is not None:
                        self.upstream.write(data)
                        self._moved += len(data)
                        self.proxy.count("bytes_up", len(data))
                case cmd.SendClientEof():
                    # A spliced direction's FIN was sent by the pump after its last byte.
                    if "upstream" in self._spliced:
                        pass
                    elif self.client is not None and self.client.can_write_eof():
                        self.client.write_eof()
                case cmd.SendUpstreamEof():
                    if "client" in self._spliced:
                        pass
                    elif self.upstream is not None and self.upstream.can_write_eof():
                        self.upstream.write_eof()
                case cmd.Dial(ip=ip, port=port):
                    loop = asyncio.get_running_loop()
                    self._dial_task = loop.create_task(self._dial(ip, port))
                case cmd.DropUpstream():
                    upstream, self.upstream = self.upstream, None
                    if upstream is not None:
                        upstream.close()
                case cmd.ArmTimer(kind=kind, delay=delay):
                    self._cancel_timer()
                    self._timer = asyncio.get_running_loop().call_later(delay, self._fire, kind)
                case cmd.CancelTimer():
                    self._cancel_timer()
                case cmd.PauseClient():
                    self._want_reading["client"] = False
                    self._apply_reading()
                case cmd.ResumeClient():
                    self._want_reading["client"] = True
                    self._apply_reading()
                case cmd.PauseUpstream():
                    self._want_reading["upstream"] = False
                    self._apply_reading()
                case cmd.ResumeUpstream():
                    self._want_reading["upstream"] = True
                    self._apply_reading()
                case cmd.Audit(verdict=verdict):
                    self.proxy.audit(self, verdict)
                case cmd.AuditHttp(audit=audit):
                    self.proxy.audit_http(self, audit)
                case cmd.CloseBoth():
                    self.close()
                case cmd.ResetBoth():
                    self.reset()

    def _fire(self, kind: str) -> None:
        self._timer = None
        self.feed(cmd.TimerFired(kind))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _dial(self, ip: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        if not await self._network_policy_allows(ip, port):
            return
        sock: socket.socket | None = None
        try:
            sock = await self._connect(*self.proxy.upstream_address(ip, port))
            await loop.create_connection(lambda: UpstreamProtocol(self), sock=sock)
        except (OSError, TimeoutError) as exc:
            if sock is not None:
                sock.close()
            log.info("dial %s:%s for %s failed: %r", ip, port, self.sandbox_id, exc)
            self.feed(cmd.UpstreamFailed(_dial_error(exc)))
        except BaseException:
            if sock is not None:
                sock.close()
            raise

    async def _connect(self, host: str, port: int) -> socket.socket:
        """A TCP connection to (host, port): an address, never a name (the validated
        destination is the one dialled). Raises OSError or TimeoutError."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(self.proxy.dial_timeout):
                await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    async def _network_policy_allows(self, ip: str, port: int) -> bool:
        """The sandbox's custom policy (`declaw.platform.network`), asked before the dial
        with the name the connection was allowed by (or the address). A deny resets the
        connection and is audited with the policy's messages; the command that connected
        keeps running. Evaluated off the loop: the Rego worker is another process."""
        gate = self.proxy.network_gate
        if gate is None or self.sandbox_id is None or self.machine is None:
            return True
        if not self.proxy.gated(self.sandbox_id):
            return True  # no network package: nothing to ask, no executor hop
        name = self.machine.name
        verdict = await asyncio.get_running_loop().run_in_executor(
            None, gate, self.sandbox_id, name, ip, port
        )
        if verdict is None or verdict.allowed:
            return True
        self.proxy.audit(self, verdict)
        self.reset()
        return False

    # The pump ---------------------------------------------------------------------------

    def _maybe_splice(self) -> None:
        """Hand the final directions to the pump: a passthrough connection (phase `splice`,
        no inspected session) whose peeked bytes went out, once it moved `splice_after`
        bytes (a short exchange is served faster on the loop than handed over). Downloads
        always; the sandbox's side only when the machine no longer parses it (not plain
        HTTP, whose every request head is checked). A direction whose source already sent
        EOF stays here."""
        machine, pump = self.machine, self.proxy.pump
        if (
            self._pump != "off"
            or pump is None
            or machine is None
            or self._done
            or self._moved < self.proxy.splice_after
            or machine.phase != "splice"
            or machine.session is not None
            or self.client is None
            or self.upstream is None
        ):
            return
        sides = ["upstream"]
        # The machine's own HTTP stream; no public flag says "bytes are still parsed" yet.
        if getattr(machine, "_http", None) is None:
            sides.append("client")
        sides = [side for side in sides if side not in self._eof_seen]
        if not sides:
            return
        self._pump = "handing"
        self._spliced.update(sides)
        self._apply_reading()
        self._hand_off(tuple(sides), _HAND_OFF_RETRY_S[0])

    def _hand_off(self, sides: tuple[str, ...], retry: float) -> None:
        """Start the pump once nothing is queued in asyncio for the directions' ends (their
        order must hold); sources are paused meanwhile, so that drains."""
        client, upstream, pump = self.client, self.upstream, self.proxy.pump
        if self._done or self._pump != "handing":
            return
        assert client is not None and upstream is not None and pump is not None
        loop = asyncio.get_running_loop()
        dst = {"client": upstream, "upstream": client}
        if any(dst[side].get_write_buffer_size() for side in sides):
            loop.call_later(retry, self._hand_off, sides, min(retry * 2, _HAND_OFF_RETRY_S[1]))
            return
        fd = {"client": _fileno(client), "upstream": _fileno(upstream)}
        flows: list[tuple[Side, int, int]] = [
            ("up", fd["client"], fd["upstream"])
            if side == "client"
            else ("down", fd["upstream"], fd["client"])
            for side in sides
        ]

        def report(side: Side, outcome: Outcome) -> None:  # on the pump's thread
            loop.call_soon_threadsafe(self._pumped, side, outcome)

        try:
            if client.is_closing() or upstream.is_closing() or -1 in fd.values():
                raise OSError("transport closing")
            self._link = pump.splice(flows, report)
        except OSError as exc:
            log.warning("no splice for %s, bytes stay on the loop: %s", self.sandbox_id, exc)
            self._pump = "never"
            self._spliced.clear()
            self._apply_reading()
            return
        self._pump = "on"

    def _pumped(self, side: Side, outcome: Outcome) -> None:
        self.feed(_PUMPED[(side, outcome)])

    # Teardown (idempotent) ------------------------------------------------------------

    def _teardown(self) -> bool:
        if self._done:
            return False
        self._done = True
        # Before any socket is reset or closed: the pump lets go of them first.
        link, self._link = self._link, None
        if link is not None:
            link.release()
        self._queue.clear()
        self._cancel_timer()
        if self._dial_task is not None and not self._dial_task.done():
            self._dial_task.cancel()
        self.proxy.forget(self)
        return True

    def reset(self) -> None:
        """Abort both sides with RST (denial, cut, or a peer that reset)."""
        if self._teardown():
            reset_transport(self.client)
            reset_transport(self.upstream)

    def close(self) -> None:
        """Graceful close of both sides: queued bytes are still delivered."""
        if self._teardown():
            for transport in (self.client, self.upstream):
                if transport is not None:
                    transport.close()


def _set_reading(transport: asyncio.Transport | None, on: bool) -> None:
    if transport is None or transport.is_closing():
        return
    if on:
        transport.resume_reading()
    else:
        transport.pause_reading()


def _fileno(transport: asyncio.Transport) -> int:
    sock = transport.get_extra_info("socket")
    return -1 if sock is None else int(sock.fileno())


def _dial_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self, conn: ProxiedConnection) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.conn.upstream_made(transport)

    def _current(self) -> bool:
        """False once the machine dropped this upstream: it reports nothing more."""
        return self.transport is not None and self.conn.upstream is self.transport

    def data_received(self, data: bytes) -> None:
        if self._current():
            self.conn.feed(cmd.UpstreamData(data))

    def eof_received(self) -> bool:
        if self._current():
            self.conn.feed(cmd.UpstreamEof())
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._current():
            self.conn.feed(cmd.UpstreamClosed() if exc is None else cmd.UpstreamReset())

    def pause_writing(self) -> None:
        if self._current():
            self.conn.feed(cmd.UpstreamWriteBlocked())

    def resume_writing(self) -> None:
        if self._current():
            self.conn.feed(cmd.UpstreamWriteDrained())
