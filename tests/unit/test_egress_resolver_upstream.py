"""The resolver's upstream client on loopback: retries, forged replies, TCP after truncation."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator

import pytest
from dnslib import QTYPE, RR, A, DNSRecord

from declawd.egress.dnsupstream import UpstreamError, ask_upstream


class Upstream(asyncio.DatagramProtocol):
    """UDP side: `mode` "answer", "silent", "forge_then_answer" or "truncate"."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.seen: list[int] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        q = DNSRecord.parse(data)
        self.seen.append(q.header.id)
        assert self.transport is not None
        if self.mode == "silent":
            return
        if self.mode == "forge_then_answer":
            forged = reply(q, "203.0.113.66")
            forged.header.id ^= 1
            self.transport.sendto(forged.pack(), addr)
        r = reply(q, "203.0.113.10")
        if self.mode == "truncate":
            r = q.reply()
            r.header.tc = 1
        self.transport.sendto(r.pack(), addr)


def reply(q: DNSRecord, address: str) -> DNSRecord:
    r = q.reply()
    r.add_answer(RR(q.q.qname, QTYPE.A, ttl=60, rdata=A(address)))
    return r


@pytest.fixture
async def tcp_upstream() -> AsyncIterator[tuple[int, list[str]]]:
    """A TCP listener answering with every address of a big answer."""
    asked: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        length = struct.unpack("!H", await reader.readexactly(2))[0]
        q = DNSRecord.parse(await reader.readexactly(length))
        asked.append(str(q.q.qname))
        r = q.reply()
        for i in range(1, 101):
            r.add_answer(RR(q.q.qname, QTYPE.A, ttl=60, rdata=A(f"203.0.113.{i}")))
        wire = r.pack()
        writer.write(struct.pack("!H", len(wire)) + wire)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], asked
    finally:
        server.close()
        await server.wait_closed()


async def udp_upstream(mode: str, port: int = 0) -> tuple[Upstream, asyncio.DatagramTransport]:
    upstream = Upstream(mode)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: upstream, local_addr=("127.0.0.1", port)
    )
    return upstream, transport


def _addresses(r: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in r.rr]


@pytest.mark.parametrize("mode", ["answer", "forge_then_answer"])
async def test_answer_matching_our_id_and_question_is_returned(mode: str) -> None:
    upstream, transport = await udp_upstream(mode)
    try:
        server = transport.get_extra_info("sockname")[:2]
        r = await ask_upstream(server, "api.openai.com", QTYPE.A, 4242, 1.0)
        assert _addresses(r) == ["203.0.113.10"] and upstream.seen == [4242]
    finally:
        transport.close()


async def test_silent_upstream_is_asked_twice_then_an_error() -> None:
    upstream, transport = await udp_upstream("silent")
    try:
        server = transport.get_extra_info("sockname")[:2]
        with pytest.raises(UpstreamError):
            await ask_upstream(server, "api.openai.com", QTYPE.A, 7, 0.05)
        assert upstream.seen == [7, 7]
    finally:
        transport.close()


async def test_truncated_answer_is_asked_again_over_tcp(
    tcp_upstream: tuple[int, list[str]],
) -> None:
    port, asked = tcp_upstream
    upstream, transport = await udp_upstream("truncate", port)  # same port, UDP side
    try:
        r = await ask_upstream(("127.0.0.1", port), "many.lab", QTYPE.A, 9, 1.0)
        assert len(r.rr) == 100 and asked == ["many.lab."]
    finally:
        transport.close()


async def test_unreachable_upstream_fails_fast() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(OSError):  # ICMP port unreachable, not two timeouts
        await ask_upstream(closed, "api.openai.com", QTYPE.A, 1, 1.0)
    assert loop.time() - start < 0.5
