"""The sandboxes' DNS resolver: a thin asyncio UDP+TCP server around `dnsfilter`.

Every port-53 packet from a sandbox is redirected here; the sandbox is identified by the
packet's source address (the datapath drops spoofed sources). Allowed answers are filtered,
their addresses admitted into the sandbox's nft set and recorded in ResolvedNames *before*
the answer is released, so the client's next connect() already passes; an answer from the
sandbox's cache is released only once its admission is proven or renewed. Invariants: a
denied name never leaves the node; an upstream reply is accepted only from the upstream's
address and only if its id and question match ours; every decision is audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from dnslib import DNSRecord

from declawd.addresses import DNS_PORT, RESOLVER_PORT
from declawd.egress.audit import AuditEvent
from declawd.egress.dnscache import AnswerCache, CachedAnswer
from declawd.egress.dnsfilter import (
    TTL_CAP,
    Action,
    AuditNote,
    FilteredAnswer,
    FloodMeter,
    QueryDecision,
    decide_query,
    encode,
    filter_answer,
    pack_answer,
    servfail,
)
from declawd.egress.dnsupstream import UpstreamError, ask_upstream
from declawd.egress.policy import EgressPolicy, IPNetwork
from declawd.egress.resolved import ResolvedNames, admitted_lifetime
from declawd.inspect.ca import CaRef
from declawd.inspect.model import InspectionPolicy

log = logging.getLogger(__name__)

# A sandbox is refused only above FLOOD_QPS sustained for FLOOD_WINDOW_S (Settings
# dns_flood_qps / dns_flood_window_s); a client asking in a loop never gets there.
FLOOD_QPS = 2000.0
FLOOD_WINDOW_S = 5.0
# A hit is released without a new admit only when the elements outlive the answer's TTL by
# the grace a fresh answer gets; this slack absorbs float rounding, nothing more.
_PROOF_SLACK_S = 1e-3
# A forwarded answer reuses an earlier admit of its addresses (another name, same address:
# a CDN, a wildcard zone) when that admit lasts its TTL + grace less at most this much:
# the addresses then stay at least TTL + 25 s. Without it no admit would ever do, since
# the earlier one started earlier; with it, an address is admitted at most every 5 s.
_SHARED_ADMIT_SLACK_S = 5.0
UPSTREAM_TIMEOUT_S = 1.5  # per attempt; two attempts, then SERVFAIL
MAX_INFLIGHT = 2048
MAX_INFLIGHT_PER_SANDBOX = 256
TCP_IDLE_S = 10.0
MAX_TCP_CONNS = 512
MAX_TCP_PER_SANDBOX = 32


@dataclass(frozen=True)
class SandboxEntry:
    """One sandbox as the gateway knows it (from state.json): its egress policy, what the
    proxy inspects, and where its CA is (None: it has none, nothing is minted for it)."""

    sandbox_id: str
    slot: int
    address: str
    policy: EgressPolicy
    inspection: InspectionPolicy = field(default_factory=InspectionPolicy)
    ca: CaRef | None = None


@dataclass(frozen=True)
class _Query:
    """One allowed query on its way: who asked, what, over what (`limit`: UDP payload)."""

    entry: SandboxEntry
    decision: QueryDecision
    data: bytes
    source: str
    protocol: str
    limit: int | None

    @property
    def key(self) -> tuple[str, int]:
        return self.decision.name, self.decision.qtype


Lookup = Callable[[str], SandboxEntry | None]
Admit = Callable[[int, dict[str, float]], Awaitable[None]]
Emit = Callable[[AuditEvent], None]


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
        flood_qps: float = FLOOD_QPS,
        flood_window_s: float = FLOOD_WINDOW_S,
        upstream_timeout_s: float = UPSTREAM_TIMEOUT_S,
        cache: AnswerCache | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        FloodMeter(flood_qps, flood_window_s, 0.0)  # refuse a bad limit at construction
        self.lookup = lookup
        self.upstream = upstream
        self._admit = admit
        self.resolved = resolved
        self._emit = emit
        self.extra_ranges = tuple(extra_ranges)
        self.exempt = tuple(exempt)
        self.flood_qps = flood_qps
        self.flood_window_s = flood_window_s
        self.upstream_timeout_s = upstream_timeout_s
        self.cache = cache if cache is not None else AnswerCache()
        self._clock = clock
        self._meters: dict[str, FloodMeter] = {}
        self._rate_audit_at: dict[str, float] = {}
        self._inflight: dict[str, int] = {}
        self._inflight_total = 0
        self._tcp_conns: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self.stats: dict[str, int] = {
            "queries": 0,
            "forwarded": 0,
            "cached": 0,
            # forwarded answers whose addresses an earlier admit still covers: no netlink
            "admit_proven": 0,
            "refused": 0,
            "servfail": 0,
            "allowed": 0,
            "denied": 0,
        }
        # Denied decisions by reason (dnsfilter's names: a small fixed set).
        self.refusals: dict[str, int] = {}

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
        """Drop per-sandbox counters and answers (sandbox removed)."""
        self._meters.pop(sandbox_id, None)
        self._rate_audit_at.pop(sandbox_id, None)
        self.cache.drop(sandbox_id)

    def counters(self) -> dict[str, object]:
        """Counts since start (no sandbox ids): queries, answers by source, decisions."""
        return {**self.stats, "refusals": dict(self.refusals)}

    def forget_answers(self, sandbox_id: str) -> None:
        """Drop a sandbox's cached answers: its policy, hence its nft set, was rewritten."""
        self.cache.drop(sandbox_id)

    # Core ------------------------------------------------------------------------------
    def _rate_ok(self, sandbox_id: str) -> bool:
        now = self._clock()
        meter = self._meters.get(sandbox_id)
        if meter is None:
            meter = FloodMeter(self.flood_qps, self.flood_window_s, now)
            self._meters[sandbox_id] = meter
        if not meter.take(now):
            return False
        busy = self._inflight.get(sandbox_id, 0)
        return busy < MAX_INFLIGHT_PER_SANDBOX and self._inflight_total < MAX_INFLIGHT

    def _audit(self, entry: SandboxEntry | None, note: AuditNote | None, protocol: str) -> None:
        if entry is None or note is None:
            return
        # Counted before the audit's rate limit: the metrics see every decision.
        if note.verdict == "allow":
            self.stats["allowed"] += 1
        else:
            self.stats["denied"] += 1
            self.refusals[note.reason] = self.refusals.get(note.reason, 0) + 1
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

    # Cache -----------------------------------------------------------------------------
    def answer_cached(self, q: _Query) -> bytes | None:
        """A hit whose admission is proven (nothing to renew), released now; else None."""
        hit = self.cache.get(q.entry.sandbox_id, q.entry.policy, q.key, self._clock())
        if hit is None or self._renewal(q.entry, hit) is not None:
            return None
        return self._release(q, hit)

    def _renewal(self, entry: SandboxEntry, hit: CachedAnswer) -> dict[str, float] | None:
        """None when the hit's addresses surely stay admitted for its TTL + grace, else the
        element timeouts to admit first (never shorter than what is there)."""
        if not (entry.policy.domains_enforced and hit.addresses):
            return None
        now = self._clock()
        needed = admitted_lifetime(hit.ttl_left(now), self.resolved.grace_s)
        if hit.admitted_until - now >= needed - _PROOF_SLACK_S:
            return None
        left = self.resolved.remaining_for(entry.sandbox_id, list(hit.addresses))
        return {a: max(needed, left.get(a, 0.0)) for a in hit.addresses}

    def _release(self, q: _Query, hit: CachedAnswer) -> bytes:
        request = q.decision.request
        assert request is not None
        ttl = max(0, hit.ttl_left(self._clock()))
        if q.entry.policy.domains_enforced and hit.addresses:
            for name in hit.chain:
                self.resolved.record(q.entry.sandbox_id, name, list(hit.addresses), ttl)
        self.stats["cached"] += 1
        self._audit(q.entry, hit.audit, q.protocol)
        return pack_answer(request, hit.rcode, hit.chain, hit.addresses, ttl, q.limit)

    def _store(
        self, q: _Query, entry: SandboxEntry, filtered: FilteredAnswer, at: float, until: float
    ) -> None:
        note = filtered.audit
        if filtered.rcode != 0 or filtered.ttl < 1 or note is None:
            return  # errors, negative answers and TTL 0 are not kept
        expires = at + min(filtered.ttl, TTL_CAP)
        answer = CachedAnswer(0, tuple(filtered.names), tuple(filtered.admit), note, expires, until)
        self.cache.put(entry.sandbox_id, entry.policy, q.key, answer)

    # Forwarding ------------------------------------------------------------------------
    async def resolve(self, q: _Query) -> bytes:
        """Answer an allowed query: from the cache (admission renewed if need be), else from
        upstream, filtered, its addresses admitted; returns the wire answer."""
        sid = q.entry.sandbox_id
        self._inflight[sid] = self._inflight.get(sid, 0) + 1
        self._inflight_total += 1
        try:
            hit = self.cache.get(sid, q.entry.policy, q.key, self._clock())
            if hit is not None:
                return await self._renew_and_release(q, hit)
            return await self._forward(q)
        finally:
            self._inflight[sid] -= 1
            if self._inflight[sid] <= 0:
                del self._inflight[sid]
            self._inflight_total -= 1

    async def _renew_and_release(self, q: _Query, hit: CachedAnswer) -> bytes:
        timeouts = self._renewal(q.entry, hit)
        if timeouts is not None:
            at = self._clock()
            try:
                await self._admit(q.entry.slot, timeouts)
            except Exception as exc:
                self.cache.discard(q.entry.sandbox_id, q.key)
                return encode(self._datapath_failed(q, q.entry, timeouts, exc), q.limit)
            hit.admitted_until = at + min(timeouts.values())
            self.cache.note_admitted(q.entry.sandbox_id, q.entry.policy, timeouts, at)
            verdict = self._judged_again(q)
            if verdict is not None:
                return encode(verdict, q.limit)
        return self._release(q, hit)

    def _judged_again(self, q: _Query) -> DNSRecord | None:
        """After an await: the answer to send instead if the sandbox is gone or its current
        policy no longer forwards this query; None to go on."""
        current = self.lookup(q.source)
        if current is None or current.sandbox_id != q.entry.sandbox_id:
            self._audit(q.entry, AuditNote("deny", "sandbox_gone", q.decision.name), q.protocol)
            return servfail(q.decision)
        if current.policy is q.entry.policy:
            return None
        again = decide_query(q.data, current.policy)
        if again.action is Action.FORWARD:
            return None
        self._audit(current, again.audit, q.protocol)
        assert again.response is not None
        return again.response

    def _datapath_failed(
        self, q: _Query, entry: SandboxEntry, timeouts: dict[str, float], exc: Exception
    ) -> DNSRecord:
        # Fail closed: an answer whose address the datapath lacks would only mislead.
        log.error("admitting %s for %s failed: %s", timeouts, entry.sandbox_id, exc)
        self.stats["servfail"] += 1
        self._audit(entry, AuditNote("allow", "datapath_error", q.decision.name), q.protocol)
        return servfail(q.decision)

    async def _forward(self, q: _Query) -> bytes:
        decision, sid = q.decision, q.entry.sandbox_id
        self.stats["forwarded"] += 1
        qid = secrets.randbits(16)
        try:
            reply = await ask_upstream(
                self.upstream, decision.name, decision.qtype, qid, self.upstream_timeout_s
            )
        except (OSError, UpstreamError, TimeoutError) as exc:
            log.info("upstream failed for %s: %s", decision.name, exc)
            self.stats["servfail"] += 1
            self._audit(q.entry, AuditNote("allow", "upstream_error", decision.name), q.protocol)
            return encode(servfail(decision), q.limit)
        # The policy may have changed while we waited: judge again under the current one.
        verdict = self._judged_again(q)
        if verdict is not None:
            return encode(verdict, q.limit)
        current = self.lookup(q.source)
        assert current is not None
        filtered = filter_answer(
            decision, reply, extra_ranges=self.extra_ranges, exempt=self.exempt
        )
        # Taken before the admit: the kernel starts the elements' timers later, so this
        # bounds their expiry from below (what a later hit relies on).
        at = self._clock()
        admitted_until = 0.0
        if current.policy.domains_enforced and filtered.admit:
            addresses = list(filtered.admit)
            left = self.resolved.remaining_for(sid, addresses)
            lifetime = admitted_lifetime(filtered.ttl, self.resolved.grace_s)
            proven = self.cache.admitted_until(sid, current.policy, addresses)
            if proven - at >= lifetime - _SHARED_ADMIT_SLACK_S:
                # An earlier admit (another name, same addresses) lasts this answer's TTL
                # and most of its grace: the kernel already lets these through.
                admitted_until = proven
                self.stats["admit_proven"] += 1
            else:
                timeouts = {a: max(lifetime, left.get(a, 0.0)) for a in addresses}
                try:
                    await self._admit(current.slot, timeouts)
                except Exception as exc:
                    return encode(self._datapath_failed(q, current, timeouts, exc), q.limit)
                admitted_until = at + min(timeouts.values())
                self.cache.note_admitted(sid, current.policy, timeouts, at)
            for name in filtered.names:
                self.resolved.record(sid, name, addresses, filtered.ttl)
        self._store(q, current, filtered, at, admitted_until)
        self._audit(current, filtered.audit, q.protocol)
        return filtered.wire(q.limit)

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
        q = _Query(entry, decision, data, source, protocol, limit)
        return self.answer_cached(q) or await self.resolve(q)

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
        q = _Query(entry, decision, data, source, "udp", decision.client_limit)
        cached = self.answer_cached(q)
        if cached is not None:
            # A proven hit needs no task: answered from this callback.
            self._send_udp(cached, addr)
            return

        async def run() -> None:
            self._send_udp(await self.resolve(q), addr)

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
