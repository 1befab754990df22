"""The resolver's upstream client: one fresh query per allowed name, over UDP, TCP if truncated.

Every query gets its own connected UDP socket, so the kernel delivers only datagrams from
the upstream's address and the random source port makes off-path spoofing harder; a reply
is accepted only if its id and question match ours (`parse_upstream`), anything else is
ignored while we keep waiting. Two attempts of `timeout_s` each, then `UpstreamError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from dnslib import DNSRecord

from declawd.egress.dnsfilter import parse_upstream, upstream_query

_MAX_UDP_REPLY = 4096  # our EDNS payload is 1232; a bigger datagram is not ours anyway


class UpstreamError(Exception):
    pass


async def ask_upstream(
    upstream: tuple[str, int], name: str, qtype: int, qid: int, timeout_s: float
) -> DNSRecord:
    """The upstream's answer to (name, qtype). Raises UpstreamError, TimeoutError, OSError."""
    query = upstream_query(name, qtype, qid)
    loop = asyncio.get_running_loop()
    truncated = False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(upstream)
        for _attempt in range(2):
            sock.send(query)
            try:
                async with asyncio.timeout(timeout_s):
                    while True:
                        data = await loop.sock_recv(sock, _MAX_UDP_REPLY)
                        reply = parse_upstream(data, qid, name, qtype)
                        if reply is None:
                            continue  # not ours (stale or forged): keep waiting
                        if not reply.header.tc:
                            return reply
                        truncated = True
                        break
            except TimeoutError:
                continue
            if truncated:
                break
    if truncated:
        return await _ask_tcp(upstream, query, qid, name, qtype, timeout_s * 2)
    raise UpstreamError("no answer from upstream")


async def _ask_tcp(
    upstream: tuple[str, int], query: bytes, qid: int, name: str, qtype: int, timeout_s: float
) -> DNSRecord:
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(*upstream)
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
