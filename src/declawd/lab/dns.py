"""The lab's authoritative DNS server for the configured names (198.51.100.53:53, UDP+TCP).

`answer()` is pure: request in, reply out, from the `LabConfig` alone. It answers A/AAAA
(empty NOERROR when a name has none; a wildcard host's records under the name asked),
follows CNAME chains (chain + final records), serves TXT (so tests can prove TXT never
reaches sandboxes) and NXDOMAIN for unknown names. The servers around it log every query
to the query log *before* replying.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import struct
from typing import cast

from dnslib import AAAA, CNAME, QTYPE, RCODE, RR, TXT, A, DNSError, DNSRecord

from declawd.lab.config import LabConfig
from declawd.lab.querylog import QueryLog

_UDP_DEFAULT_SIZE = 512
_UDP_MAX_SIZE = 4096


def answer(config: LabConfig, request: DNSRecord) -> DNSRecord:
    """The authoritative reply to one parsed query."""
    reply = request.reply(ra=0, aa=1)
    if request.header.opcode != 0:
        reply.header.rcode = RCODE.NOTIMP
        return reply
    if len(request.questions) != 1:
        reply.header.rcode = RCODE.FORMERR
        return reply
    q = request.q
    if q.qtype == QTYPE.AXFR or q.qtype == QTYPE.IXFR:
        reply.header.rcode = RCODE.REFUSED
        return reply
    name = str(q.qname).lower().rstrip(".")
    chain = config.cname_chain(name)
    for alias, target in itertools.pairwise(chain):
        reply.add_answer(RR(alias, QTYPE.CNAME, rdata=CNAME(target), ttl=config.ttl_for(alias)))
        if q.qtype == QTYPE.CNAME:
            return reply  # asked for the alias itself: the first link is the answer
    final = chain[-1]
    host = config.host(final)
    if host is None and final not in config.txt:
        reply.header.rcode = RCODE.NXDOMAIN
        return reply
    # A wildcard's records take its TTL; the owner stays the name asked (RFC 4592).
    ttl = config.ttl_for(host.name if host is not None else final)
    want_any = q.qtype == QTYPE.ANY
    if host is not None:
        for ip in host.addresses:
            if isinstance(ip, ipaddress.IPv4Address) and (q.qtype == QTYPE.A or want_any):
                reply.add_answer(RR(final, QTYPE.A, rdata=A(str(ip)), ttl=ttl))
            elif isinstance(ip, ipaddress.IPv6Address) and (q.qtype == QTYPE.AAAA or want_any):
                reply.add_answer(RR(final, QTYPE.AAAA, rdata=AAAA(str(ip)), ttl=ttl))
    if q.qtype == QTYPE.TXT or want_any:
        for text in config.txt.get(final, ()):
            reply.add_answer(RR(final, QTYPE.TXT, rdata=TXT(text), ttl=ttl))
    return reply


def udp_limit(request: DNSRecord) -> int:
    """Largest UDP reply the client accepts: its EDNS0 payload size, else 512."""
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return max(_UDP_DEFAULT_SIZE, min(int(rr.rclass), _UDP_MAX_SIZE))
    return _UDP_DEFAULT_SIZE


def handle_wire(
    config: LabConfig, data: bytes, *, udp: bool
) -> tuple[bytes | None, DNSRecord | None]:
    """(reply bytes, parsed query); (None, ...) for garbage and responses, which get no reply.

    UDP replies larger than the client accepts are cut to the header and question, TC=1.
    """
    try:
        request = DNSRecord.parse(data)
    except (DNSError, ValueError, IndexError, struct.error):
        return None, None
    if request.header.qr:
        return None, None
    reply = answer(config, request)
    wire = reply.pack()
    if udp and len(wire) > udp_limit(request):
        short = request.reply(ra=0, aa=1)
        short.header.tc = 1
        short.header.rcode = reply.header.rcode
        wire = short.pack()
    return wire, request


def _describe(request: DNSRecord, wire: bytes) -> tuple[str, str, str]:
    """(name, type, rcode) for the query log."""
    if not request.questions:
        return "", "", "FORMERR"
    rcode = RCODE.get(wire[3] & 0x0F)  # the low nibble of the header's second flag byte
    q = request.q
    return str(q.qname).lower().rstrip("."), str(QTYPE.get(q.qtype)), str(rcode)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        wire = self.server.respond(data, client=addr[0], transport="udp")
        if wire is not None and self.transport is not None:
            self.transport.sendto(wire, addr)


class DnsServer:
    """UDP + TCP listeners on one address, answering from `config`, logging to `log`."""

    def __init__(self, config: LabConfig, log: QueryLog, address: str, port: int = 53) -> None:
        self.config, self.log, self.address, self.port = config, log, address, port
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    def respond(self, data: bytes, *, client: str, transport: str) -> bytes | None:
        wire, request = handle_wire(self.config, data, udp=transport == "udp")
        if request is not None and wire is not None:
            name, qtype, rcode = _describe(request, wire)
            self.log.record(client=client, name=name, qtype=qtype, transport=transport, rcode=rcode)
        return wire

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=(self.address, self.port)
        )
        self._tcp = await asyncio.start_server(self._serve_tcp, self.address, self.port)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("peername")[0]
        try:
            while True:  # RFC 7766: several length-prefixed queries per connection
                head = await asyncio.wait_for(reader.readexactly(2), timeout=10)
                data = await reader.readexactly(struct.unpack("!H", head)[0])
                wire = self.respond(data, client=client, transport="tcp")
                if wire is None:
                    break
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
            self._tcp = None
