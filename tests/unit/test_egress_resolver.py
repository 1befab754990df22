"""Resolver on loopback (no root): admission before release, flood limit, forged upstream replies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from declawd.config import Settings
from declawd.egress import gateway
from declawd.egress.audit import AuditEvent
from declawd.egress.dnscache import CachedAnswer
from declawd.egress.dnsfilter import AuditNote
from declawd.egress.policy import EgressPolicy
from declawd.egress.resolved import ResolvedNames
from declawd.egress.resolver import Resolver, SandboxEntry
from tests.unit.gateway_cli import gateway_argv, parsed_config

POLICY = EgressPolicy.parse(["api.openai.com", "*.wild.lab"], ["0.0.0.0/0"])
ZONE = {"api.openai.com": "203.0.113.10", "*.wild.lab": "203.0.113.70"}


class FakeUpstream(asyncio.DatagramProtocol):
    """Answers A from ZONE (TTL `ttl`); optionally first sends a forged reply."""

    def __init__(self, forge_first: bool = False, ttl: int = 60) -> None:
        self.forge_first = forge_first
        self.ttl = ttl
        self.queries: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        q = DNSRecord.parse(data)
        name = str(q.q.qname).rstrip(".").lower()
        self.queries.append(str(q.q.qname))
        assert self.transport is not None
        if self.forge_first:
            forged = q.reply()
            forged.header.id ^= 1
            forged.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("203.0.113.66")))
            self.transport.sendto(forged.pack(), addr)
        address = ZONE.get(name)
        if address is None and name.endswith(".wild.lab"):
            address = ZONE["*.wild.lab"]
        r = q.reply()
        if address is None:
            r.header.rcode = RCODE.NXDOMAIN
        else:
            r.add_answer(RR(q.q.qname, QTYPE.A, ttl=self.ttl, rdata=A(address)))
        self.transport.sendto(r.pack(), addr)


@dataclass
class Rig:
    """A resolver for two sandboxes (127.0.0.1 → sbx-1 slot 3, 127.0.0.2 → sbx-2 slot 4)."""

    resolver: Resolver
    upstream: FakeUpstream
    transport: asyncio.DatagramTransport
    events: list[str]
    audit: list[AuditEvent]
    entries: dict[str, SandboxEntry]
    admitted: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    fail_admit: bool = False

    async def close(self) -> None:
        await self.resolver.stop()
        self.transport.close()

    async def ask(self, name: str, source: str = "127.0.0.1") -> DNSRecord:
        """One query through `handle` (the TCP path's core), without a client socket."""
        wire = await self.resolver.handle(DNSRecord.question(name).pack(), source, "udp")
        assert wire is not None
        return DNSRecord.parse(wire)


async def make(
    forge_first: bool = False,
    ttl: int = 60,
    clock: Callable[[], float] | None = None,
    **kw: object,
) -> Rig:
    loop = asyncio.get_running_loop()
    upstream = FakeUpstream(forge_first, ttl)
    transport, _ = await loop.create_datagram_endpoint(
        lambda: upstream, local_addr=("127.0.0.1", 0)
    )
    entries = {
        "127.0.0.1": SandboxEntry("sbx-1", 3, "127.0.0.1", POLICY),
        "127.0.0.2": SandboxEntry("sbx-2", 4, "127.0.0.2", POLICY),
    }
    rig: Rig

    async def admit(slot: int, timeouts: dict[str, float]) -> None:
        rig.events.append(f"admit {slot} {sorted(timeouts)}")
        rig.admitted.append((slot, dict(timeouts)))
        if rig.fail_admit:
            raise RuntimeError("set is gone")

    extra: dict[str, object] = {"clock": clock} if clock is not None else {}
    audit: list[AuditEvent] = []
    resolver = Resolver(
        lookup=entries.get,
        upstream=transport.get_extra_info("sockname")[:2],
        admit=admit,
        resolved=ResolvedNames(clock=clock) if clock is not None else ResolvedNames(),
        emit=audit.append,
        **extra,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )
    rig = Rig(resolver, upstream, transport, [], audit, entries)
    await resolver.start("127.0.0.1", 0)
    return rig


async def ask(port: int, name: str, events: list[str]) -> DNSRecord:
    """One query over a real UDP socket (the datagram path)."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            events.append("answer")
            if not got.done():
                got.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(DNSRecord.question(name).pack())
        return DNSRecord.parse(await asyncio.wait_for(got, 10))
    finally:
        transport.close()


@pytest.mark.parametrize("forge_first", [False, True])
async def test_address_admitted_before_answer_and_forged_reply_ignored(forge_first: bool) -> None:
    rig = await make(forge_first)
    try:
        answer = await ask(rig.resolver.port, "api.openai.com", rig.events)
        assert [str(rr.rdata) for rr in answer.rr] == ["203.0.113.10"]
        assert rig.events == ["admit 3 ['203.0.113.10']", "answer"]
        assert rig.resolver.resolved.resolved_for("sbx-1", "api.openai.com", "203.0.113.10")
        assert not rig.resolver.resolved.resolved_for("sbx-1", "api.openai.com", "203.0.113.66")
        assert [(e.verdict, e.reason, e.address) for e in rig.audit] == [
            ("allow", "allowed", "203.0.113.10")
        ]
    finally:
        await rig.close()


async def test_denied_name_not_forwarded() -> None:
    rig = await make()
    try:
        answer = await ask(rig.resolver.port, "evil.com", rig.events)
        assert [str(rr.rdata) for rr in answer.rr] == ["198.18.0.1"]
        assert rig.upstream.queries == [] and rig.events == ["answer"]
        # Positive control: an allowed name does reach the upstream.
        await ask(rig.resolver.port, "api.openai.com", rig.events)
        assert rig.upstream.queries == ["api.openai.com."]
    finally:
        await rig.close()


# Flood limit --------------------------------------------------------------------------


async def test_500_sequential_queries_each_waiting_for_its_answer_all_pass() -> None:
    # What the resolver benchmark does (a cold name each time, then one name again and
    # again), with the default limit: nothing may be refused.
    rig = await make()
    try:
        cold = [await ask(rig.resolver.port, f"n{i}.wild.lab", rig.events) for i in range(500)]
        warm = [await ask(rig.resolver.port, "api.openai.com", rig.events) for _ in range(500)]
        assert {r.header.rcode for r in cold + warm} == {RCODE.NOERROR}
        assert all(len(r.rr) == 1 for r in cold + warm)
        assert rig.resolver.stats["refused"] == 0
        assert len(rig.upstream.queries) == 501  # every cold name once, the warm one once
        assert "rate_limited" not in {e.reason for e in rig.audit}
    finally:
        await rig.close()


async def test_sustained_flood_is_refused_audited_once_per_second_then_recovers() -> None:
    now = [0.0]
    rig = await make(clock=lambda: now[0])
    try:
        query = DNSRecord.question("evil.com").pack()  # answered locally: only the meter limits

        def at(t: float, source: str = "127.0.0.1") -> int:
            now[0] = t
            _, decision = rig.resolver.decide(query, source, "udp")
            assert decision.response is not None
            if rig.audit and rig.audit[-1].reason == "rate_limited":
                audit_times.append(t)
            rig.audit.clear()
            return int(decision.response.header.rcode)

        audit_times: list[float] = []
        rcodes = [at(i / 3000) for i in range(3000 * 9)]  # 3000 queries/s for 9 s
        # Default: 2000/s over 5 s, i.e. 10 000 answered within any window (bins of 0.5 s);
        # beyond that REFUSED until bins leave the window, so 2000/s get through on average.
        assert rcodes[:10_000] == [RCODE.NOERROR] * 10_000  # 3.33 s of flood pass
        assert rcodes[10_000:15_000] == [RCODE.REFUSED] * 5_000
        assert rcodes[15_000:25_000] == [RCODE.NOERROR] * 10_000
        assert rcodes[25_000:] == [RCODE.REFUSED] * 2_000
        assert rig.resolver.stats["refused"] == 7_000
        # One audit event per second per sandbox, not one per refusal.
        assert audit_times == pytest.approx([10 / 3, 10 / 3 + 1, 25 / 3], abs=1e-3)
        # Another sandbox is not affected; the flooder is refused while its window is full
        # and answered again once the flood has left it.
        assert at(9.0, "127.0.0.2") == RCODE.NOERROR
        assert at(9.5) == RCODE.REFUSED
        assert at(14.0) == RCODE.NOERROR
    finally:
        await rig.close()


async def test_flood_limit_is_configurable_and_refused_over_udp() -> None:
    rig = await make(flood_qps=1.0, flood_window_s=3.0)  # 3 queries per 3 s
    try:
        codes = [
            (await ask(rig.resolver.port, "evil.com", rig.events)).header.rcode for _ in range(5)
        ]
        assert codes == [RCODE.NOERROR] * 3 + [RCODE.REFUSED] * 2
        assert [e.reason for e in rig.audit].count("rate_limited") == 1  # audit is throttled too
    finally:
        await rig.close()


def test_a_bad_flood_limit_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="positive"):
        Resolver(
            lookup=lambda _ip: None,
            upstream=("127.0.0.1", 53),
            admit=lambda _slot, _t: asyncio.sleep(0),
            resolved=ResolvedNames(),
            emit=lambda _e: None,
            flood_qps=-1.0,
        )


# Plumbing -----------------------------------------------------------------------------


def test_flood_limit_flows_from_env_to_the_gateway_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DECLAWD_DNS_FLOOD_QPS", "300")
    monkeypatch.setenv("DECLAWD_DNS_FLOOD_WINDOW_S", "2.5")
    settings = Settings.from_env(state_dir=tmp_path, upstream_dns="192.0.2.53")
    assert (settings.dns_flood_qps, settings.dns_flood_window_s) == (300.0, 2.5)
    argv = gateway_argv(settings)
    assert argv[argv.index("--dns-flood-qps") + 1] == "300.0"
    assert argv[argv.index("--dns-flood-window") + 1] == "2.5"
    config = parsed_config(argv, monkeypatch)
    assert (config.dns_flood_qps, config.dns_flood_window_s) == (300.0, 2.5)


def test_flood_limit_defaults_and_must_be_positive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DECLAWD_DNS_FLOOD_QPS", raising=False)
    monkeypatch.delenv("DECLAWD_DNS_FLOOD_WINDOW_S", raising=False)
    settings = Settings.from_env(state_dir=tmp_path)
    assert (settings.dns_flood_qps, settings.dns_flood_window_s) == (2000.0, 5.0)
    config = gateway.GatewayConfig(state_dir=tmp_path)
    assert (config.dns_flood_qps, config.dns_flood_window_s) == (2000.0, 5.0)
    monkeypatch.setenv("DECLAWD_DNS_FLOOD_WINDOW_S", "0")
    with pytest.raises(ValueError, match="dns_flood_window_s: must be a positive"):
        Settings.from_env(state_dir=tmp_path)


class FakeSets:
    """Stands in for NftSets: records what the daemon writes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, dict[str, float]]] = []

    def admit(self, slot: int, timeouts: Mapping[str, float]) -> None:
        self.calls.append(("admit", slot, dict(timeouts)))

    def replace(self, slot: int, timeouts: Mapping[str, float]) -> None:
        self.calls.append(("replace", slot, dict(timeouts)))

    def close(self) -> None:
        pass


async def test_gateway_passes_the_limit_and_a_policy_reload_drops_the_cache(
    tmp_path: Path,
) -> None:
    config = gateway.GatewayConfig(
        state_dir=tmp_path,
        upstream_dns=("127.0.0.1", 9),
        listen_host="127.0.0.1",
        dns_port=0,
        proxy_port=0,
        nflog=False,
        dns_flood_qps=300.0,
        dns_flood_window_s=2.5,
    )

    def write_state(allow: list[str]) -> None:
        config.gateway_dir.mkdir(parents=True, exist_ok=True)
        policy = {"allow_out": allow, "deny_out": ["0.0.0.0/0"]}
        item = {"slot": 3, "address": "10.77.0.6", "policy": policy}
        config.state_path.write_text(json.dumps({"sandboxes": {"sbx-1": item}}))

    write_state(["api.openai.com"])
    sets = FakeSets()
    daemon = gateway.GatewayDaemon(config, nft=sets)  # type: ignore[arg-type]
    await daemon.start()
    try:
        resolver = daemon.resolver
        assert resolver is not None
        assert (resolver.flood_qps, resolver.flood_window_s) == (300.0, 2.5)
        entry = daemon.lookup("10.77.0.6")
        assert entry is not None
        note = AuditNote("allow", "allowed", "api.openai.com", ("203.0.113.10",))
        answer = CachedAnswer(0, ("api.openai.com",), ("203.0.113.10",), note, 1e12, 1e12)
        resolver.cache.put("sbx-1", entry.policy, ("api.openai.com", 1), answer)
        await daemon.reload()  # same policy: the answers stay
        assert resolver.cache.entries("sbx-1") == 1
        write_state(["api.openai.com", "example.com"])
        await daemon.reload()
        assert resolver.cache.entries("sbx-1") == 0
        assert [c[0] for c in sets.calls] == ["replace"]  # r4 rewritten, then the drop
    finally:
        await daemon.stop()
