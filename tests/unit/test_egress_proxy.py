"""SniProxy on loopback: a stub original destination stands in for iptables REDIRECT.

Passthrough end to end through the asyncio adapter; the machine alone is replayed in
`tests/unit/proxy/`, the pure verdicts are in `tests/unit/proxy/test_decide.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme

from declawd.egress.policy import EgressPolicy
from declawd.egress.proxy import SandboxView, SniProxy
from declawd.egress.proxy.decide import Verdict
from declawd.egress.resolved import ResolvedNames

pytestmark = pytest.mark.timeout(30)

SBX = "sbx-0123456789ab"
OPENAI = "203.0.113.10"
OTHER = "203.0.113.20"
UNRESOLVED = "203.0.113.30"
POLICY = EgressPolicy.parse(["api.openai.com", "*.example.org"], ["0.0.0.0/0"])


@dataclass
class Harness:
    proxy: SniProxy
    resolved: ResolvedNames
    events: list[dict[str, Any]]
    # (lab address, port) the client "connected to" -> the real loopback port
    routes: dict[tuple[str, int], int] = field(default_factory=dict)
    next_dst: tuple[str, int] = (OPENAI, 443)
    view: SandboxView | None = field(default_factory=lambda: SandboxView(SBX, POLICY))

    async def connect(
        self, dst: tuple[str, int]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.next_dst = dst
        return await asyncio.open_connection("127.0.0.1", self.proxy.port)

    def reasons(self) -> list[tuple[str, str]]:
        return [(e["verdict"], e["reason"]) for e in self.events]


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async with running_harness(peek_timeout=0.3) as h:
        yield h


@contextlib.asynccontextmanager
async def running_harness(**options: Any) -> AsyncIterator[Harness]:
    """A started proxy whose sandbox resolved api.openai.com and other.example.org;
    `options` are more SniProxy keyword arguments (clocks, interception)."""
    resolved = ResolvedNames()
    resolved.record(SBX, "api.openai.com", [OPENAI], 300)
    resolved.record(SBX, "other.example.org", [OTHER], 300)
    events: list[dict[str, Any]] = []
    h: Harness

    def original_dst(sock: socket.socket) -> tuple[str, int]:
        return h.next_dst

    def upstream(ip: str, port: int) -> tuple[str, int]:
        return "127.0.0.1", h.routes[(ip, port)]

    proxy = SniProxy(
        lookup=lambda ip: h.view if ip == "127.0.0.1" else None,
        resolved=resolved,
        audit=events.append,
        original_dst=original_dst,
        upstream_address=upstream,
        **options,
    )
    h = Harness(proxy, resolved, events)
    await proxy.start("127.0.0.1", 0)
    try:
        yield h
    finally:
        await proxy.stop()
        await proxy.stop()  # idempotent


async def serve(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    ssl_ctx: ssl.SSLContext | None = None,
) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ssl_ctx)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("api.openai.com", "evil.com", "other.example.org").configure_cert(ctx)
    return ctx


def client_ctx(ca: trustme.CA, verify: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def hello_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        line = await reader.readline()
        writer.write(b"hi " + line)
        await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def expect_reset(coro: Awaitable[Any]) -> None:
    with pytest.raises(ConnectionResetError):
        await coro


def real_hello(server_hostname: str) -> bytes:
    """A ClientHello as Python's ssl module writes it (one record)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


# TLS ---------------------------------------------------------------------------------


async def test_tls_with_allowed_and_resolved_sni_reaches_the_server(
    harness: Harness, ca: trustme.CA
) -> None:
    server, port = await serve(hello_handler, server_ctx(ca))
    harness.routes[(OPENAI, 443)] = port
    async with server:
        harness.next_dst = (OPENAI, 443)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", harness.proxy.port, ssl=client_ctx(ca), server_hostname="api.openai.com"
        )
        writer.write(b"there\n")
        assert await reader.readline() == b"hi there\n"
        writer.close()
    assert harness.events[0] == {
        "sandbox_id": SBX,
        "kind": "connection",
        "verdict": "allow",
        "reason": "sni_allowed",
        "name": "api.openai.com",
        "address": OPENAI,
        "port": 443,
        "protocol": "tcp",
    }


@pytest.mark.parametrize(
    ("sni", "dst", "reason"),
    [
        ("evil.com", OPENAI, "sni_not_allowed"),  # allowed IP, denied name
        ("other.example.org", OPENAI, "sni_not_resolved"),  # SNI spoofing
        (None, OPENAI, "no_sni"),
    ],
)
async def test_tls_refusals_reset_the_client(
    harness: Harness, ca: trustme.CA, sni: str | None, dst: str, reason: str
) -> None:
    server, port = await serve(hello_handler, server_ctx(ca))
    harness.routes[(dst, 443)] = port
    async with server:
        harness.next_dst = (dst, 443)
        await expect_reset(
            asyncio.open_connection(
                "127.0.0.1",
                harness.proxy.port,
                ssl=client_ctx(ca, verify=sni is not None),
                server_hostname=sni or "",
            )
        )
    assert harness.reasons() == [("deny", reason)]
    assert harness.events[0]["name"] == sni


async def test_ip_literal_sni_is_refused(harness: Harness) -> None:
    hello = real_hello("example.com").replace(b"example.com", b"203.0.113.1")
    reader, writer = await harness.connect((OPENAI, 443))
    writer.write(hello)
    await expect_reset(reader.read(10))
    assert harness.reasons() == [("deny", "ip_literal_sni")]


async def test_hello_split_in_many_segments_passes(harness: Harness, ca: trustme.CA) -> None:
    got: list[bytes] = []

    async def raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await reader.read(65536))
        writer.close()

    server, port = await serve(raw)
    harness.routes[(OPENAI, 443)] = port
    hello = real_hello("api.openai.com")[5:]
    wire = b"".join(
        b"\x16\x03\x01" + struct.pack("!H", len(hello[i : i + 50])) + hello[i : i + 50]
        for i in range(0, len(hello), 50)
    )
    async with server:
        reader, writer = await harness.connect((OPENAI, 443))
        for i in range(0, len(wire), 30):
            writer.write(wire[i : i + 30])
            await writer.drain()
            await asyncio.sleep(0)
        await reader.read()
        writer.close()
    assert got == [wire]
    assert harness.reasons() == [("allow", "sni_allowed")]


# HTTP -------------------------------------------------------------------------------


def http_server(
    seen: list[bytes],
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                seen.append(head)
                for line in head.lower().split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        seen.append(await reader.readexactly(int(line.split(b":")[1])))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return handler


async def read_response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    return head + await reader.readexactly(2)


async def test_keep_alive_second_request_to_denied_host_is_cut(harness: Harness) -> None:
    seen: list[bytes] = []
    server, port = await serve(http_server(seen))
    harness.routes[(OPENAI, 80)] = port
    async with server:
        reader, writer = await harness.connect((OPENAI, 80))
        writer.write(b"GET /a HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
        assert (await read_response(reader)).startswith(b"HTTP/1.1 200")
        writer.write(b"GET /b HTTP/1.1\r\nHost: evil.com\r\n\r\n")
        await expect_reset(reader.read(100))
    assert [h.split(b"\r\n")[0] for h in seen] == [b"GET /a HTTP/1.1"]
    assert harness.reasons() == [("allow", "host_allowed"), ("deny", "host_not_allowed")]


async def test_pipelined_requests_with_bodies_pass(harness: Harness) -> None:
    seen: list[bytes] = []
    server, port = await serve(http_server(seen))
    harness.routes[(OPENAI, 80)] = port
    body = b"x" * 100_000
    async with server:
        reader, writer = await harness.connect((OPENAI, 80))
        writer.write(b"POST /1 HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 100000\r\n\r\n")
        writer.write(body)
        writer.write(b"GET /2 HTTP/1.1\r\nHost: API.openai.com:80\r\n\r\n")
        await writer.drain()
        for _ in range(2):
            assert (await read_response(reader)).startswith(b"HTTP/1.1 200")
        writer.close()
    assert [x[:7] for x in seen] == [b"POST /1", body[:7], b"GET /2 "]
    assert seen[1] == body
    assert harness.reasons() == [("allow", "host_allowed")]  # one event per name


@pytest.mark.parametrize(
    ("request_bytes", "reason"),
    [
        (b"CONNECT evil.com:443 HTTP/1.1\r\nHost: evil.com:443\r\n\r\n", "connect_refused"),
        (
            b"GET http://evil.com/ HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",
            "absolute_form_not_allowed",
        ),
        (b"GET / HTTP/1.0\r\n\r\n", "no_host"),
        (b"GET / HTTP/1.1\r\nHost: other.example.org\r\n\r\n", "host_not_resolved"),
        (b"GET / HTTP/1.1\r\nHost: api.openai.com\r\nHost: evil.com\r\n\r\n", "duplicate_host"),
    ],
)
async def test_http_refusals(harness: Harness, request_bytes: bytes, reason: str) -> None:
    seen: list[bytes] = []
    server, port = await serve(http_server(seen))
    harness.routes[(OPENAI, 80)] = port
    async with server:
        reader, writer = await harness.connect((OPENAI, 80))
        writer.write(request_bytes)
        await expect_reset(reader.read(100))
    assert seen == []
    assert harness.reasons() == [("deny", reason)]


# Opaque streams ----------------------------------------------------------------------


async def banner_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 smtp.example ready\r\n")
    await writer.drain()
    await reader.read()
    writer.close()


async def test_server_first_protocol_passes_to_a_resolved_address(harness: Harness) -> None:
    server, port = await serve(banner_handler)
    harness.routes[(OPENAI, 25)] = port
    async with server:
        reader, writer = await harness.connect((OPENAI, 25))
        assert await reader.readline() == b"220 smtp.example ready\r\n"
        writer.close()
    assert harness.reasons() == [("allow", "opaque_resolved")]
    assert harness.events[0]["name"] == "api.openai.com"


async def test_server_first_protocol_to_unresolved_address_is_reset(harness: Harness) -> None:
    server, port = await serve(banner_handler)
    harness.routes[(UNRESOLVED, 25)] = port
    async with server:
        reader, _ = await harness.connect((UNRESOLVED, 25))
        await expect_reset(reader.read(100))
    assert harness.reasons() == [("deny", "opaque_not_resolved")]
    assert harness.proxy.stats()["active"] == 0


async def test_opaque_bulk_transfer_with_half_close(harness: Harness) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.write_eof()  # after the client's EOF we still send, then FIN
        writer.close()

    server, port = await serve(echo)
    harness.routes[(OPENAI, 22)] = port
    payload = b"SSH-2.0-test\r\n" + bytes(range(256)) * 20_000
    async with server:
        reader, writer = await harness.connect((OPENAI, 22))

        async def send() -> None:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        received = await reader.read(-1)
        await sender
        writer.close()
    assert received == payload
    stats = harness.proxy.stats()
    assert stats["bytes_up"] == len(payload) == stats["bytes_down"]


async def test_partial_hello_at_peek_timeout_is_reset(harness: Harness) -> None:
    reader, writer = await harness.connect((OPENAI, 443))
    writer.write(b"\x16\x03\x01\x02\x00\x01")
    await expect_reset(reader.read(100))
    assert harness.reasons() == [("deny", "peek_timeout")]


# Admission ---------------------------------------------------------------------------


async def test_unknown_client_and_non_public_destinations_are_reset(harness: Harness) -> None:
    harness.view = None
    reader, _ = await harness.connect((OPENAI, 443))
    await expect_reset(reader.read(10))
    assert harness.events == []  # no sandbox to attribute it to
    harness.view = SandboxView(SBX, POLICY)
    for dst in ("10.1.2.3", "169.254.169.254", "198.18.0.1"):
        reader, _ = await harness.connect((dst, 80))
        await expect_reset(reader.read(10))
    assert harness.reasons() == [("deny", "non_public")] * 3
    reader, _ = await harness.connect(("127.0.0.1", harness.proxy.port))
    await expect_reset(reader.read(10))
    assert harness.reasons()[-1] == ("deny", "proxy_address")
    assert harness.proxy.stats()["reasons"]["unknown_client"] == 1


async def test_per_sandbox_cap(harness: Harness) -> None:
    harness.proxy.max_conns_per_sandbox = 2
    held = [await harness.connect((OPENAI, 443)) for _ in range(2)]
    await asyncio.sleep(0.05)
    reader, _ = await harness.connect((OPENAI, 443))
    await expect_reset(reader.read(10))
    assert ("deny", "too_many_connections") in harness.reasons()
    for _, w in held:
        w.close()


async def test_cut_resets_only_connections_no_longer_allowed(harness: Harness) -> None:
    server, port = await serve(banner_handler)
    harness.routes[(OPENAI, 25)] = port
    harness.routes[(OTHER, 25)] = port
    async with server:
        r1, w1 = await harness.connect((OPENAI, 25))
        assert await r1.readline()
        r2, w2 = await harness.connect((OTHER, 25))
        assert await r2.readline()
        n = harness.proxy.cut(SBX, lambda name, ip, port: name == "other.example.org")
        assert n == 1
        await expect_reset(r1.read(10))
        w2.write(b"still here\r\n")
        await w2.drain()
        assert harness.proxy.stats()["active"] == 1
        w2.close()
    assert ("deny", "policy_changed") in harness.reasons()


@pytest.mark.parametrize("gated", [False, True])
async def test_network_gate_is_asked_only_for_a_sandbox_it_gates(gated: bool) -> None:
    """The custom network policy's gate runs (on an executor thread) only for a sandbox
    `network_gated` names: for the others the dial goes ahead without the hop, and the gate
    is never called."""
    asked: list[tuple[str, str | None, str, int]] = []

    def gate(sid: str, name: str | None, ip: str, port: int) -> Verdict | None:
        asked.append((sid, name, ip, port))
        return Verdict(False, "custom_policy", name, messages=("no",))

    options = {"network_gate": gate, "network_gated": lambda sid: gated and sid == SBX}
    async with running_harness(peek_timeout=0.3, **options) as h:
        seen: list[bytes] = []
        server, port = await serve(http_server(seen))
        h.routes[(OPENAI, 80)] = port
        async with server:
            reader, writer = await h.connect((OPENAI, 80))
            writer.write(b"GET /a HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
            if gated:
                await expect_reset(reader.read(100))
            else:
                assert (await read_response(reader)).startswith(b"HTTP/1.1 200")
                writer.close()
    if gated:
        assert asked == [(SBX, "api.openai.com", OPENAI, 80)]
        assert seen == []  # denied before the dial: the server saw no request
        assert ("deny", "custom_policy") in h.reasons()
    else:
        assert asked == []
        assert [x.split(b"\r\n")[0] for x in seen] == [b"GET /a HTTP/1.1"]
        assert h.reasons() == [("allow", "host_allowed")]
