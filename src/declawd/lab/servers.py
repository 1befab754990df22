"""The lab's hosts: HTTP/HTTPS (HTTP/1.1, and HTTP/2 by ALPN on h2 hosts), TCP echo,
server-first banners and UDP echo, in asyncio.

Runs inside the lab netns. Every listener binds one host address (not 0.0.0.0), so a
connection's local address names the host and a port a host does not serve is refused by
the kernel. HTTPS picks the leaf by SNI and falls back to the local host's certificate. The
HTTP API is pure (`httpapi`); h11 and h2 drive it (`http1`, `http2`); this module only binds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from typing import cast

from declawd.addresses import LAB_DNS_ADDRESS
from declawd.config import Settings
from declawd.lab.ca import LabCA, ensure_ca
from declawd.lab.config import LabConfig
from declawd.lab.dns import DnsServer
from declawd.lab.http1 import IDLE_TIMEOUT, MAX_HEAD, close_writer, serve_http1
from declawd.lab.http2 import serve_http2
from declawd.lab.httpapi import HttpService, Pace
from declawd.lab.querylog import QueryLog, query_log_path
from declawd.lab.requestlog import RequestLog, request_log_dir

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def http_handler(service: HttpService) -> Handler:
    """The connection handler of one host's port 80 or 443: HTTP/2 when ALPN chose it."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sslobj = writer.get_extra_info("ssl_object")
        client = (writer.get_extra_info("peername") or ("",))[0]
        if sslobj is not None and sslobj.selected_alpn_protocol() == "h2":
            await serve_http2(reader, writer, service, client)
        else:
            await serve_http1(reader, writer, service, tls=sslobj is not None, client=client)

    return handler


async def serve_tcp_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        await close_writer(writer)


async def serve_banner(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, banner: str
) -> None:
    """Server-first protocol (SMTP-like): banner at once, then `250 ok` per line, QUIT ends."""
    try:
        writer.write(banner.encode() + b"\r\n")
        await writer.drain()
        while line := await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT):
            if line.strip().upper() == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            writer.write(b"250 ok\r\n")
            await writer.drain()
    except (TimeoutError, ConnectionError, ValueError):
        pass
    finally:
        await close_writer(writer)


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


def tls_contexts(ca: LabCA, config: LabConfig) -> dict[str, ssl.SSLContext]:
    """One server context per HTTPS host, reachable by every name that leads to it. Its leaf
    is the lab CA's for the host's names, unless the host is configured with a bad one."""
    by_name: dict[str, ssl.SSLContext] = {}

    def pick(sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        # Unknown or missing SNI keeps the listener's own host certificate.
        chosen = by_name.get((server_name or "").lower())
        if chosen is not None:
            sslobj.context = chosen

    for host in config.hosts:
        if not host.https:
            continue
        cert_names = config.certificate_names(host)
        issue = ca.self_signed if host.cert_issuer == "self-signed" else ca.leaf
        cert, key = issue(cert_names)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["h2", "http/1.1"] if host.h2 else ["http/1.1"])
        ctx.sni_callback = pick
        for name in config.names_for_host(host):
            by_name[name] = ctx
    return by_name


class LabServer:
    """Every listener of the lab: DNS, and per host address HTTP/HTTPS/banner/echo."""

    def __init__(self, settings: Settings, config: LabConfig, pace: Pace = asyncio.sleep) -> None:
        self.settings, self.config, self.pace = settings, config, pace
        self._servers: list[asyncio.Server] = []
        self._udp: list[asyncio.DatagramTransport] = []
        self._log: QueryLog | None = None
        self._requests: RequestLog | None = None
        self._dns: DnsServer | None = None

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        ca = ensure_ca(self.settings)
        contexts = await asyncio.to_thread(tls_contexts, ca, self.config)
        self._log = QueryLog(query_log_path(self.settings))
        self._requests = RequestLog(request_log_dir(self.settings))
        self._dns = DnsServer(self.config, self._log, LAB_DNS_ADDRESS)
        await self._dns.start()
        loop = asyncio.get_running_loop()
        for host in self.config.hosts:
            if not host.serves:
                continue
            web = http_handler(HttpService(host, self._requests, self.pace))
            for ip in host.addresses:
                addr = str(ip)
                if host.http:
                    await self._listen(addr, 80, web)
                if host.https:
                    await self._listen(addr, 443, web, contexts[host.name])
                for port, banner in host.banner_ports.items():
                    await self._listen(addr, port, _bind_banner(banner))
                for port in host.tcp_echo_ports:
                    await self._listen(addr, port, serve_tcp_echo)
                for port in host.udp_echo_ports:
                    transport, _ = await loop.create_datagram_endpoint(
                        _UdpEcho, local_addr=(addr, port)
                    )
                    self._udp.append(transport)

    async def _listen(
        self, addr: str, port: int, handler: Handler, tls: ssl.SSLContext | None = None
    ) -> None:
        server = await asyncio.start_server(
            handler, addr, port, ssl=tls, limit=MAX_HEAD, reuse_address=True, backlog=512
        )
        self._servers.append(server)

    async def stop(self) -> None:
        """Idempotent: closes every listener, the query log and the request log."""
        for server in self._servers:
            server.close()
        for transport in self._udp:
            transport.close()
        if self._dns is not None:
            await self._dns.stop()
            self._dns = None
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2)
        self._servers.clear()
        self._udp.clear()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._requests is not None:
            self._requests.close()
            self._requests = None


def _bind_banner(banner: str) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_banner(reader, writer, banner)

    return handler
