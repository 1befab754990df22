"""Resolver on loopback (no root): admission before release, rate limit, forged upstream replies."""

from __future__ import annotations

import asyncio

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from declawd.egress.audit import AuditEvent
from declawd.egress.policy import EgressPolicy
from declawd.egress.resolved import ResolvedNames
from declawd.egress.resolver import Resolver, SandboxEntry

POLICY = EgressPolicy.parse(["api.openai.com"], ["0.0.0.0/0"])


class FakeUpstream(asyncio.DatagramProtocol):
    """Answers A api.openai.com = 203.0.113.10; optionally first sends a forged reply."""

    def __init__(self, forge_first: bool = False) -> None:
        self.forge_first = forge_first
        self.queries: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        q = DNSRecord.parse(data)
        self.queries.append(str(q.q.qname))
        assert self.transport is not None
        if self.forge_first:
            forged = q.reply()
            forged.header.id ^= 1
            forged.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("203.0.113.66")))
            self.transport.sendto(forged.pack(), addr)
        r = q.reply()
        r.add_answer(RR(q.q.qname, QTYPE.A, ttl=60, rdata=A("203.0.113.10")))
        self.transport.sendto(r.pack(), addr)


async def make(forge_first: bool = False, **kw: float):
    loop = asyncio.get_running_loop()
    upstream = FakeUpstream(forge_first)
    transport, _ = await loop.create_datagram_endpoint(
        lambda: upstream, local_addr=("127.0.0.1", 0)
    )
    events: list[str] = []
    audit: list[AuditEvent] = []
    entry = SandboxEntry("sbx-1", 3, "127.0.0.1", POLICY)

    async def admit(slot: int, timeouts: dict[str, float]) -> None:
        events.append(f"admit {slot} {sorted(timeouts)}")

    resolver = Resolver(
        lookup=lambda ip: entry if ip == "127.0.0.1" else None,
        upstream=transport.get_extra_info("sockname")[:2],
        admit=admit,
        resolved=ResolvedNames(),
        emit=audit.append,
        **kw,  # type: ignore[arg-type]
    )
    await resolver.start("127.0.0.1", 0)
    return resolver, upstream, transport, events, audit


async def ask(port: int, name: str, events: list[str]) -> DNSRecord:
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
    resolver, upstream, transport, events, audit = await make(forge_first)
    try:
        answer = await ask(resolver.port, "api.openai.com", events)
        assert [str(rr.rdata) for rr in answer.rr] == ["203.0.113.10"]
        assert events == ["admit 3 ['203.0.113.10']", "answer"]
        assert resolver.resolved.resolved_for("sbx-1", "api.openai.com", "203.0.113.10")
        assert not resolver.resolved.resolved_for("sbx-1", "api.openai.com", "203.0.113.66")
        assert [(e.verdict, e.reason, e.address) for e in audit] == [
            ("allow", "allowed", "203.0.113.10")
        ]
    finally:
        await resolver.stop()
        transport.close()


async def test_denied_name_not_forwarded() -> None:
    resolver, upstream, transport, events, audit = await make()
    try:
        answer = await ask(resolver.port, "evil.com", events)
        assert [str(rr.rdata) for rr in answer.rr] == ["198.18.0.1"]
        assert upstream.queries == [] and events == ["answer"]
        # Positive control: an allowed name does reach the upstream.
        await ask(resolver.port, "api.openai.com", events)
        assert upstream.queries == ["api.openai.com."]
    finally:
        await resolver.stop()
        transport.close()


async def test_rate_limit_refuses_beyond_burst() -> None:
    resolver, upstream, transport, events, audit = await make(rate_qps=0.001, rate_burst=3)
    try:
        codes = [(await ask(resolver.port, "evil.com", events)).header.rcode for _ in range(5)]
        assert codes == [RCODE.NOERROR] * 3 + [RCODE.REFUSED] * 2
        assert [e.reason for e in audit].count("rate_limited") == 1  # audit is throttled too
    finally:
        await resolver.stop()
        transport.close()
