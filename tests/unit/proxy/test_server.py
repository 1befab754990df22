"""SniProxy's asyncio adapter over loopback with interception configured: an inspected TLS
connection through real sockets (trustme certificates, a loopback TLS upstream, a fake HTTP
layer), an upstream whose certificate does not verify, and passthrough left untouched."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import trustme

from declawd.egress.proxy import Interception, SandboxView, SniProxy
from declawd.egress.resolved import ResolvedNames
from declawd.inspect.model import HttpAudit, HttpCommand, InspectContext, InspectionPolicy
from tests.unit.proxy.support import (
    ALPN,
    OPENAI,
    POLICY,
    SBX,
    TRANSFORM,
    FakeLayer,
    LayerFactory,
    Leaves,
    client_ctx,
    server_ctx,
)
from tests.unit.test_egress_proxy import Harness, running_harness, serve

pytestmark = pytest.mark.timeout(30)
HOST = "api.openai.com"


@dataclass
class Intercepting:
    harness: Harness
    factory: LayerFactory
    http: list[tuple[str, str, int, HttpAudit]]


@contextlib.asynccontextmanager
async def intercepting(
    sandbox_ca: trustme.CA, verify_with: trustme.CA, inspection: InspectionPolicy = TRANSFORM
) -> AsyncIterator[Intercepting]:
    factory = LayerFactory()
    http: list[tuple[str, str, int, HttpAudit]] = []
    upstream_tls = client_ctx(verify_with)
    async with running_harness(
        peek_timeout=0.3,
        leaf_contexts=Leaves(sandbox_ca),
        upstream_tls=upstream_tls,
        http_layer=factory,
        audit_http=lambda *args: http.append(args),
    ) as h:
        h.view = SandboxView(SBX, POLICY, inspection)
        yield Intercepting(h, factory, http)


async def line_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        line = await reader.readline()
        writer.write(b"upstream got " + line)
        await writer.drain()
    writer.close()


async def test_an_inspected_tls_connection_through_the_real_adapter(
    sandbox_ca: trustme.CA, upstream_ca: trustme.CA
) -> None:
    server, port = await serve(line_server, server_ctx(upstream_ca, HOST, alpn=["http/1.1"]))
    async with server, intercepting(sandbox_ca, upstream_ca) as it:
        it.harness.routes[(OPENAI, 443)] = port
        it.harness.next_dst = (OPENAI, 443)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            it.harness.proxy.port,
            ssl=client_ctx(sandbox_ca, ALPN),  # trusts only the sandbox's CA: our leaf
            server_hostname=HOST,
        )
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        writer.write(b"say hello\n")
        assert await reader.readline() == b"upstream got say HELLO\n"
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
    (layer,) = it.factory.made
    ctx = layer.context
    assert (ctx.host, ctx.scheme, ctx.client_proto, ctx.upstream_proto) == (
        HOST,
        "https",
        "h2",
        "h1",
    )
    assert it.harness.reasons() == [("allow", "sni_allowed")]
    assert it.http == [(SBX, OPENAI, 443, HttpAudit({"url": f"https://{HOST}/"}))]


async def test_an_upstream_with_an_untrusted_certificate_gets_a_502_and_a_deny_audit(
    sandbox_ca: trustme.CA, upstream_ca: trustme.CA
) -> None:
    server, port = await serve(line_server, server_ctx(upstream_ca, HOST))
    async with server, intercepting(sandbox_ca, trustme.CA()) as it:
        it.harness.routes[(OPENAI, 443)] = port
        it.harness.next_dst = (OPENAI, 443)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", it.harness.proxy.port, ssl=client_ctx(sandbox_ca), server_hostname=HOST
        )
        writer.write(b"say hello\n")
        answer = await reader.read()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway")
    assert b"certificate verify failed" in answer
    (layer,) = it.factory.made
    assert layer.context.upstream_proto is None
    assert it.harness.reasons() == [("allow", "sni_allowed"), ("deny", "upstream_tls_failed")]
    assert it.harness.proxy.stats()["active"] == 0


async def test_an_unreachable_upstream_gets_a_502(
    sandbox_ca: trustme.CA, upstream_ca: trustme.CA
) -> None:
    server, port = await serve(line_server)
    server.close()
    await server.wait_closed()  # nothing listens on `port` any more
    async with intercepting(sandbox_ca, upstream_ca) as it:
        it.harness.routes[(OPENAI, 443)] = port
        it.harness.next_dst = (OPENAI, 443)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", it.harness.proxy.port, ssl=client_ctx(sandbox_ca), server_hostname=HOST
        )
        writer.write(b"x\n")
        answer = await reader.read()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 502") and b"upstream unreachable" in answer
    assert it.harness.reasons()[-1] == ("deny", "upstream_unreachable")


async def test_a_sandbox_that_needs_no_inspection_keeps_the_real_certificate(
    sandbox_ca: trustme.CA, upstream_ca: trustme.CA
) -> None:
    server, port = await serve(line_server, server_ctx(upstream_ca, HOST))
    async with server, intercepting(sandbox_ca, upstream_ca, InspectionPolicy()) as it:
        it.harness.routes[(OPENAI, 443)] = port
        it.harness.next_dst = (OPENAI, 443)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", it.harness.proxy.port, ssl=client_ctx(upstream_ca), server_hostname=HOST
        )
        writer.write(b"say hello\n")
        assert await reader.readline() == b"upstream got say hello\n"
        writer.close()
    assert it.factory.made == []
    assert it.harness.reasons() == [("allow", "sni_allowed")]


async def test_plain_http_is_inspected_through_the_adapter(
    sandbox_ca: trustme.CA, upstream_ca: trustme.CA
) -> None:
    async def http_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(head) + head)
        await writer.drain()
        writer.close()

    server, port = await serve(http_once)
    async with server, intercepting(sandbox_ca, upstream_ca) as it:
        it.harness.routes[(OPENAI, 80)] = port
        reader, writer = await it.harness.connect((OPENAI, 80))
        writer.write(b"GET / HTTP/1.1\r\nHost: api.openai.com\r\nX-Say: hello\r\n\r\n")
        answer = await reader.read()
        writer.close()
    assert answer.endswith(b"X-Say: HELLO\r\n\r\n")
    assert it.factory.made[0].context.scheme == "http"


def test_the_upstream_context_is_given_alpn() -> None:
    upstream = ssl.create_default_context()
    SniProxy(lookup=lambda ip: None, resolved=ResolvedNames(), audit=print, upstream_tls=upstream)
    obj = upstream.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="x.com")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    assert b"\x02h2\x08http/1.1" in out.read()


async def test_a_slow_rewrite_runs_off_the_loop_so_other_connections_are_served(
    sandbox_ca: trustme.CA, upstream_ca: trustme.CA
) -> None:
    """The layer of connection 1 blocks (a rewrite that takes long) until connection 2 has
    been refused: had it run on the event loop, connection 2 could not be decided and the
    layer's wait would time out."""
    gate = threading.Event()
    waited: list[bool] = []

    class SlowFactory(LayerFactory):
        def __call__(self, context: InspectContext, policy: InspectionPolicy) -> FakeLayer:
            layer = super().__call__(context, policy)
            fast = layer.client_data

            def slow(data: bytes) -> list[HttpCommand]:
                waited.append(gate.wait(10))
                return fast(data)

            layer.client_data = slow  # type: ignore[method-assign]
            return layer

    async def http_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(head) + head)
        await writer.drain()
        writer.close()

    server, port = await serve(http_once)
    async with server, intercepting(sandbox_ca, upstream_ca) as it:
        it.harness.proxy.interception = Interception(None, None, SlowFactory())
        it.harness.routes[(OPENAI, 80)] = port
        r1, w1 = await it.harness.connect((OPENAI, 80))
        w1.write(b"GET / HTTP/1.1\r\nHost: api.openai.com\r\nX-Say: hello\r\n\r\n")
        r2, w2 = await it.harness.connect((OPENAI, 80))
        w2.write(b"GET / HTTP/1.1\r\nHost: evil.com\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):
            assert await r2.read() == b""
        gate.set()
        answer = await r1.read()
        w1.close()
        w2.close()
    assert waited == [True]
    assert answer.endswith(b"X-Say: HELLO\r\n\r\n")
    assert ("deny", "host_not_allowed") in it.harness.reasons()
