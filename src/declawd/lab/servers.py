"""The lab's hosts: HTTP/HTTPS, TCP echo, server-first banners and UDP echo, in asyncio.

Runs inside the lab netns. Every listener binds one host address (not 0.0.0.0), so a
connection's local address names the host and a port a host does not serve is refused by
the kernel. HTTPS picks the leaf by SNI and falls back to the local host's certificate.
Request parsing and routing are pure (`parse_request_head`, `route`); sockets live in the
thin `serve_*` coroutines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

from declawd.addresses import LAB_DNS_ADDRESS
from declawd.config import Settings
from declawd.lab.ca import LabCA, ensure_ca
from declawd.lab.config import LabConfig, LabHost
from declawd.lab.dns import DnsServer
from declawd.lab.querylog import QueryLog, query_log_path

MAX_HEAD = 64 * 1024
MAX_ECHO_BODY = 64 * 1024 * 1024
MAX_BYTES = 1 << 40
IDLE_TIMEOUT = 60.0
_CHUNK = memoryview(bytes(1 << 20))  # one shared zero buffer: /bytes never allocates per request
_BYTES_PATH = re.compile(r"^/bytes/(\d{1,13})$")


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class HttpRequest:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    @property
    def keep_alive(self) -> bool:
        conn = (self.header("connection") or "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in conn
        return "close" not in conn

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@dataclass
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    stream_bytes: int = 0  # when set, the body is this many bytes streamed from _CHUNK

    def head(self, keep_alive: bool) -> bytes:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 413: "Too Large"}.get(
            self.status, "Error"
        )
        length = self.stream_bytes or len(self.body)
        lines = [
            f"HTTP/1.1 {self.status} {reason}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {length}",
            "Server: declawd-lab",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse_request_head(data: bytes) -> HttpRequest:
    """Parse request line and headers (data ends with the blank line)."""
    try:
        text = data.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
        raise HttpError(400, "undecodable head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, f"bad request line: {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, f"bad header line: {line[:80]!r}")
        headers.append((name, value.strip()))
    return HttpRequest(method=parts[0], target=parts[1], version=parts[2], headers=headers)


def body_length(request: HttpRequest) -> int | None:
    """Declared body length; None means chunked."""
    if "chunked" in (request.header("transfer-encoding") or "").lower():
        return None
    raw = request.header("content-length")
    if raw is None:
        return 0
    if not raw.isdigit():
        raise HttpError(400, "bad Content-Length")
    return int(raw)


def route(
    request: HttpRequest, body: bytes, *, host: LabHost | None, tls: bool, client: str
) -> HttpResponse:
    """The lab's whole HTTP API: /bytes/<n>, /echo, and an info document for anything else."""
    path = request.path
    m = _BYTES_PATH.match(path)
    if m:
        n = int(m.group(1))
        if n > MAX_BYTES:
            return HttpResponse(400, json.dumps({"error": "n too large"}).encode())
        if n == 0:
            return HttpResponse(200, b"", content_type="application/octet-stream")
        return HttpResponse(200, content_type="application/octet-stream", stream_bytes=n)
    if path == "/echo":
        return HttpResponse(200, body, content_type="application/octet-stream")
    info = {
        "host": request.header("host"),
        "server": host.name if host else None,
        "path": path,
        "method": request.method,
        "tls": tls,
        "client": client,
    }
    return HttpResponse(200, json.dumps(info).encode())


async def _read_body(reader: asyncio.StreamReader, request: HttpRequest) -> bytes:
    length = body_length(request)
    if length is not None:
        if length > MAX_ECHO_BODY:
            raise HttpError(413, "body too large")
        return await reader.readexactly(length)
    chunks: list[bytes] = []
    total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError:
            raise HttpError(400, "bad chunk size") from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return b"".join(chunks)
        total += size
        if total > MAX_ECHO_BODY:
            raise HttpError(413, "body too large")
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def serve_http(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: LabHost | None
) -> None:
    """One HTTP/1.1 connection: requests in sequence until close, error or idle timeout."""
    tls = writer.get_extra_info("ssl_object") is not None
    client = (writer.get_extra_info("peername") or ("",))[0]
    try:
        while True:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
                request = parse_request_head(head)
                body = await _read_body(reader, request)
            except HttpError as exc:
                err = HttpResponse(exc.status, json.dumps({"error": str(exc)}).encode())
                writer.write(err.head(keep_alive=False) + err.body)
                await writer.drain()
                return
            except asyncio.LimitOverrunError:
                err = HttpResponse(400, b'{"error": "head too large"}')
                writer.write(err.head(keep_alive=False) + err.body)
                await writer.drain()
                return
            response = route(request, body, host=host, tls=tls, client=client)
            keep = request.keep_alive
            writer.write(response.head(keep))
            if request.method != "HEAD":
                writer.write(response.body)
                remaining = response.stream_bytes
                while remaining:
                    n = min(remaining, len(_CHUNK))
                    writer.write(_CHUNK[:n])
                    remaining -= n
                    await writer.drain()
            await writer.drain()
            if not keep:
                return
    except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, ssl.SSLError):
        pass
    finally:
        await _close(writer)


async def serve_tcp_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        await _close(writer)


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
        await _close(writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 5)


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


def tls_contexts(ca: LabCA, config: LabConfig) -> dict[str, ssl.SSLContext]:
    """One server context per HTTPS host, reachable by every name that leads to it."""
    by_name: dict[str, ssl.SSLContext] = {}

    def pick(sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        # Unknown or missing SNI keeps the listener's own host certificate.
        chosen = by_name.get((server_name or "").lower())
        if chosen is not None:
            sslobj.context = chosen

    for host in config.hosts:
        if not host.https:
            continue
        names = config.names_for_host(host)
        cert, key = ca.leaf(names)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["http/1.1"])
        ctx.sni_callback = pick
        for name in names:
            by_name[name] = ctx
    return by_name


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class LabServer:
    """Every listener of the lab: DNS, and per host address HTTP/HTTPS/banner/echo."""

    def __init__(self, settings: Settings, config: LabConfig) -> None:
        self.settings, self.config = settings, config
        self._servers: list[asyncio.Server] = []
        self._udp: list[asyncio.DatagramTransport] = []
        self._log: QueryLog | None = None
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
        self._dns = DnsServer(self.config, self._log, LAB_DNS_ADDRESS)
        await self._dns.start()
        loop = asyncio.get_running_loop()
        for host in self.config.hosts:
            if not host.serves:
                continue
            for ip in host.addresses:
                addr = str(ip)
                if host.http:
                    await self._listen(addr, 80, _bind_http(host))
                if host.https:
                    tls_ctx = contexts[host.name]
                    await self._listen(addr, 443, _bind_http(host), tls_ctx)
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
        """Idempotent: closes every listener and the query log."""
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


def _bind_http(host: LabHost) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_http(reader, writer, host)

    return handler


def _bind_banner(banner: str) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_banner(reader, writer, banner)

    return handler
