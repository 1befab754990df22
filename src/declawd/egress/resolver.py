"""The sandboxes' DNS resolver: a thin asyncio UDP+TCP server around `dnsfilter`.

Every port-53 packet from a sandbox is redirected here; the sandbox is identified by the
packet's source address (the datapath drops spoofed sources). Allowed answers are filtered,
their addresses admitted into the sandbox's nft set and recorded in ResolvedNames *before*
the answer is released, so the client's next connect() already passes. Invariants: a denied
name never leaves the node; an upstream reply is accepted only from the upstream's address
and only if its id and question match ours; every decision is audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from dnslib import DNSRecord

from declawd.addresses import DNS_PORT, RESOLVER_PORT
from declawd.egress.audit import AuditEvent
from declawd.egress.dnsfilter import (
    Action,
    AuditNote,
    QueryDecision,
    TokenBucket,
    decide_query,
    encode,
    filter_answer,
    parse_upstream,
    servfail,
    upstream_query,
)
from declawd.egress.policy import EgressPolicy, IPNetwork
from declawd.egress.resolved import ResolvedNames, admitted_lifetime

log = logging.getLogger(__name__)

RATE_QPS = 200.0
RATE_BURST = 400.0
UPSTREAM_TIMEOUT_S = 1.5  # per attempt; two attempts, then SERVFAIL
MAX_INFLIGHT = 2048
MAX_INFLIGHT_PER_SANDBOX = 256
TCP_IDLE_S = 10.0
MAX_TCP_CONNS = 512
MAX_TCP_PER_SANDBOX = 32


@dataclass(frozen=True)
class SandboxEntry:
    """One sandbox as the gateway knows it (from state.json)."""

    sandbox_id: str
    slot: int
    address: str
    policy: EgressPolicy


Lookup = Callable[[str], SandboxEntry | None]
Admit = Callable[[int, dict[str, float]], Awaitable[None]]
Emit = Callable[[AuditEvent], None]


class UpstreamError(Exception):
    pass


class Resolver:
    def __init__(
        self,
        *,
        lookup: Lookup,
        upstream: tuple[str, int],
        admit: Admit,
        resolved: ResolvedNames,
        emit: Emit,
        extra_ranges: Sequence[IPNetwork] = (),
        exempt: Sequence[IPNetwork] = (),
        rate_qps: float = RATE_QPS,
        rate_burst: float = RATE_BURST,
        upstream_timeout_s: float = UPSTREAM_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lookup = lookup
        self.upstream = upstream
        self._admit = admit
        self.resolved = resolved
        self._emit = emit
        self.extra_ranges = tuple(extra_ranges)
        self.exempt = tuple(exempt)
        self.rate_qps = rate_qps
        self.rate_burst = rate_burst
        self.upstream_timeout_s = upstream_timeout_s
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._rate_audit_at: dict[str, float] = {}
        self._inflight: dict[str, int] = {}
        self._inflight_total = 0
        self._tcp_conns: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self.stats: dict[str, int] = {"queries": 0, "forwarded": 0, "refused": 0, "servfail": 0}

    # Lifecycle -------------------------------------------------------------------------
    async def start(self, host: str = "0.0.0.0", port: int = RESOLVER_PORT) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpServer(self), local_addr=(host, port), reuse_port=False
        )
        self._udp = transport
        try:
            self._tcp = await asyncio.start_server(
                self._serve_tcp, host, port, reuse_address=True, backlog=256
            )
        except BaseException:
            transport.close()
            self._udp = None
            raise

    @property
    def port(self) -> int:
        assert self._udp is not None
        return int(self._udp.get_extra_info("sockname")[1])

    async def stop(self) -> None:
        """Close both listeners and cancel queries in flight. Idempotent."""
        udp, self._udp = self._udp, None
        if udp is not None:
            udp.close()
        tcp, self._tcp = self._tcp, None
        if tcp is not None:
            tcp.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if tcp is not None:
            try:
                await asyncio.wait_for(tcp.wait_closed(), 2.0)
            except TimeoutError:
                log.warning("dns tcp listener still had connections after 2 s; left to close")

    def forget(self, sandbox_id: str) -> None:
        """Drop per-sandbox counters (sandbox removed)."""
        self._buckets.pop(sandbox_id, None)
        self._rate_audit_at.pop(sandbox_id, None)

    # Core ------------------------------------------------------------------------------
    def _rate_ok(self, sandbox_id: str) -> bool:
        now = self._clock()
        bucket = self._buckets.get(sandbox_id)
        if bucket is None:
            bucket = self._buckets[sandbox_id] = TokenBucket(self.rate_qps, self.rate_burst, now)
        if not bucket.take(now):
            return False
        busy = self._inflight.get(sandbox_id, 0)
        return busy < MAX_INFLIGHT_PER_SANDBOX and self._inflight_total < MAX_INFLIGHT

    def _audit(self, entry: SandboxEntry | None, note: AuditNote | None, protocol: str) -> None:
        if entry is None or note is None:
            return
        if note.reason == "rate_limited":
            # One event per second per sandbox: a flood must not become an audit flood.
            now = self._clock()
            if now - self._rate_audit_at.get(entry.sandbox_id, -10.0) < 1.0:
                return
            self._rate_audit_at[entry.sandbox_id] = now
        self._emit(
            AuditEvent(
                sandbox_id=entry.sandbox_id,
                kind="dns",
                verdict=note.verdict,
                reason=note.reason,
                name=note.name or None,
                address=",".join(note.addresses) or None,
                port=DNS_PORT,
                protocol=protocol,
            )
        )

    def decide(
        self, data: bytes, source: str, protocol: str
    ) -> tuple[SandboxEntry | None, QueryDecision]:
        """Synchronous part of handling a query: identify, rate-limit, judge."""
        self.stats["queries"] += 1
        entry = self.lookup(source)
        rate_ok = entry is None or self._rate_ok(entry.sandbox_id)
        decision = decide_query(data, entry.policy if entry else None, rate_ok=rate_ok)
        if decision.action is Action.ANSWER:
            self._audit(entry, decision.audit, protocol)
            if decision.response is not None and decision.response.header.rcode == 5:
                self.stats["refused"] += 1
        return entry, decision

    async def resolve(
        self, entry: SandboxEntry, decision: QueryDecision, data: bytes, source: str, protocol: str
    ) -> DNSRecord:
        """Forward an allowed query, filter the reply, admit its addresses, return the answer."""
        sid = entry.sandbox_id
        self._inflight[sid] = self._inflight.get(sid, 0) + 1
        self._inflight_total += 1
        try:
            self.stats["forwarded"] += 1
            qid = secrets.randbits(16)
            try:
                reply = await self._ask_upstream(decision.name, decision.qtype, qid)
            except (OSError, UpstreamError, TimeoutError) as exc:
                log.info("upstream failed for %s: %s", decision.name, exc)
                self.stats["servfail"] += 1
                self._audit(entry, AuditNote("allow", "upstream_error", decision.name), protocol)
                return servfail(decision)
            # The policy may have changed while we waited: judge again under the current one.
            current = self.lookup(source)
            if current is None or current.sandbox_id != sid:
                self._audit(entry, AuditNote("deny", "sandbox_gone", decision.name), protocol)
                return servfail(decision)
            if current.policy is not entry.policy:
                again = decide_query(data, current.policy)
                if again.action is not Action.FORWARD:
                    self._audit(current, again.audit, protocol)
                    assert again.response is not None
                    return again.response
            filtered = filter_answer(
                decision, reply, extra_ranges=self.extra_ranges, exempt=self.exempt
            )
            policy = current.policy
            if policy.domains_enforced and filtered.admit:
                left = self.resolved.remaining(sid)
                lifetime = admitted_lifetime(filtered.ttl, self.resolved.grace_s)
                timeouts = {a: max(lifetime, left.get(a, 0.0)) for a in filtered.admit}
                try:
                    await self._admit(current.slot, timeouts)
                except Exception as exc:
                    # Fail closed: an answer whose address the datapath lacks would only mislead.
                    log.error("admitting %s for %s failed: %s", timeouts, sid, exc)
                    self.stats["servfail"] += 1
                    self._audit(
                        current, AuditNote("allow", "datapath_error", decision.name), protocol
                    )
                    return servfail(decision)
                for name in filtered.names:
                    self.resolved.record(sid, name, list(filtered.admit), filtered.ttl)
            self._audit(current, filtered.audit, protocol)
            return filtered.response
        finally:
            self._inflight[sid] -= 1
            if self._inflight[sid] <= 0:
                del self._inflight[sid]
            self._inflight_total -= 1

    async def handle(self, data: bytes, source: str, protocol: str) -> bytes | None:
        """Full handling of one message; returns the wire answer (None = no answer)."""
        entry, decision = self.decide(data, source, protocol)
        limit = decision.client_limit if protocol == "udp" else None
        if decision.action is Action.DROP:
            return None
        if decision.action is Action.ANSWER:
            assert decision.response is not None
            return encode(decision.response, limit)
        assert entry is not None
        response = await self.resolve(entry, decision, data, source, protocol)
        return encode(response, limit)

    # Upstream --------------------------------------------------------------------------
    async def _ask_upstream(self, name: str, qtype: int, qid: int) -> DNSRecord:
        query = upstream_query(name, qtype, qid)
        loop = asyncio.get_running_loop()
        replies: asyncio.Queue[bytes] = asyncio.Queue(maxsize=16)
        # A connected UDP socket per query: the kernel delivers only datagrams from the
        # upstream's address, and its random source port makes off-path spoofing harder.
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UpstreamClient(replies), remote_addr=self.upstream
        )
        try:
            for _attempt in range(2):
                transport.sendto(query)
                deadline = loop.time() + self.upstream_timeout_s
                while (remaining := deadline - loop.time()) > 0:
                    try:
                        data = await asyncio.wait_for(replies.get(), remaining)
                    except TimeoutError:
                        break
                    reply = parse_upstream(data, qid, name, qtype)
                    if reply is None:
                        continue  # not ours (stale or forged): keep waiting
                    if reply.header.tc:
                        return await self._ask_upstream_tcp(query, qid, name, qtype)
                    return reply
        finally:
            transport.close()
        raise UpstreamError("no answer from upstream")

    async def _ask_upstream_tcp(self, query: bytes, qid: int, name: str, qtype: int) -> DNSRecord:
        async with asyncio.timeout(self.upstream_timeout_s * 2):
            reader, writer = await asyncio.open_connection(*self.upstream)
            try:
                writer.write(struct.pack("!H", len(query)) + query)
                await writer.drain()
                length = struct.unpack("!H", await reader.readexactly(2))[0]
                data = await reader.readexactly(length)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        reply = parse_upstream(data, qid, name, qtype)
        if reply is None:
            raise UpstreamError("mismatched TCP reply from upstream")
        return reply

    # Transports ------------------------------------------------------------------------
    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        source = addr[0]
        entry, decision = self.decide(data, source, "udp")
        if decision.action is Action.DROP:
            return
        if decision.action is Action.ANSWER:
            assert decision.response is not None
            self._send_udp(encode(decision.response, decision.client_limit), addr)
            return
        assert entry is not None

        async def run() -> None:
            response = await self.resolve(entry, decision, data, source, "udp")
            self._send_udp(encode(response, decision.client_limit), addr)

        self._spawn(run())

    def _send_udp(self, payload: bytes, addr: tuple[str, int]) -> None:
        if self._udp is not None:
            self._udp.sendto(payload, addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = peer[0] if peer else ""
        entry = self.lookup(source)
        key = entry.sandbox_id if entry else ""
        total = sum(self._tcp_conns.values())
        if total >= MAX_TCP_CONNS or self._tcp_conns.get(key, 0) >= MAX_TCP_PER_SANDBOX:
            writer.close()
            return
        self._tcp_conns[key] = self._tcp_conns.get(key, 0) + 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE_S):
                    length = struct.unpack("!H", await reader.readexactly(2))[0]
                    data = await reader.readexactly(length)
                answer = await self.handle(data, source, "tcp")
                if answer is None:
                    break
                writer.write(struct.pack("!H", len(answer)) + answer)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            self._tcp_conns[key] -= 1
            if self._tcp_conns[key] <= 0:
                del self._tcp_conns[key]
            writer.close()
            # A client that reset the connection makes wait_closed raise its error: not ours.
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.resolver.on_datagram(data, addr)
        except Exception:
            log.exception("dns datagram from %s", addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error: %s", exc)


class _UpstreamClient(asyncio.DatagramProtocol):
    def __init__(self, replies: asyncio.Queue[bytes]) -> None:
        self.replies = replies

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.replies.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable etc.: the attempt will time out; nothing to do here.
        log.debug("upstream udp error: %s", exc)
