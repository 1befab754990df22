"""The passthrough pump on real loopback sockets: alone (a Pump between two TCP pairs, as the
adapter wires it) and through SniProxy (a stub original destination, a loopback upstream).
Integrity both ways, half close, resets, a policy cut while streaming, byte counts, and no
file descriptor left behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from declawd.egress.proxy.splice import Mode, Outcome, Pump, Side
from tests.unit.test_egress_proxy import OPENAI, SBX, running_harness, serve

pytestmark = pytest.mark.timeout(60)
MODES: tuple[Mode, ...] = ("splice", "copy")


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        near = socket.create_connection(listener.getsockname())
        far, _ = listener.accept()
    return near, far


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@dataclass
class Wired:
    """client <-> [proxy_client | pump | proxy_upstream] <-> server."""

    pump: Pump
    client: socket.socket
    server: socket.socket
    proxy_client: socket.socket
    proxy_upstream: socket.socket
    reports: list[tuple[Side, Outcome]] = field(default_factory=list)
    reported: threading.Condition = field(default_factory=threading.Condition)

    def report(self, side: Side, outcome: Outcome) -> None:
        with self.reported:
            self.reports.append((side, outcome))
            self.reported.notify_all()

    def wait_reports(self, n: int, timeout: float = 10) -> list[tuple[Side, Outcome]]:
        with self.reported:
            assert self.reported.wait_for(lambda: len(self.reports) >= n, timeout), self.reports
            return list(self.reports)

    def close(self) -> None:
        for sock in (self.client, self.server, self.proxy_client, self.proxy_upstream):
            sock.close()


@contextlib.contextmanager
def wired(pump: Pump, *sides: Side) -> Iterator[Wired]:
    client, proxy_client = tcp_pair()
    proxy_upstream, server = tcp_pair()
    for sock in (proxy_client, proxy_upstream):
        sock.setblocking(False)
    w = Wired(pump, client, server, proxy_client, proxy_upstream)
    c, u = proxy_client.fileno(), proxy_upstream.fileno()
    ends = {"up": (c, u), "down": (u, c)}
    link = pump.splice([(side, *ends[side]) for side in sides or ("up", "down")], w.report)
    try:
        yield w
    finally:
        link.release()
        w.close()


def send_chunks(sock: socket.socket, data: bytes, sizes: list[int]) -> threading.Thread:
    def run() -> None:
        pos, i = 0, 0
        while pos < len(data):
            n = sizes[i % len(sizes)]
            sock.sendall(data[pos : pos + n])
            pos, i = pos + n, i + 1
        sock.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def read_all(sock: socket.socket) -> bytes:
    out = bytearray()
    while chunk := sock.recv(1 << 16):
        out += chunk
    return bytes(out)


@pytest.fixture(params=MODES)
def pump(request: pytest.FixtureRequest) -> Iterator[Pump]:
    pump = Pump(request.param, pipe_size=64 * 1024)
    yield pump
    pump.stop()


# The pump alone --------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    up=st.binary(min_size=0, max_size=300_000),
    down=st.binary(min_size=1, max_size=300_000),
    sizes=st.lists(st.integers(1, 70_000), min_size=1, max_size=8),
)
def test_bytes_pass_intact_both_ways_whatever_the_chunks(
    mode: Mode, up: bytes, down: bytes, sizes: list[int]
) -> None:
    pump = Pump(mode, pipe_size=64 * 1024)
    try:
        with wired(pump) as w:
            senders = [send_chunks(w.client, up, sizes), send_chunks(w.server, down, sizes)]
            got_up, got_down = read_all(w.server), read_all(w.client)
            for sender in senders:
                sender.join()
            assert sorted(w.wait_reports(2)) == [("down", "eof"), ("up", "eof")]
        assert got_up == up and got_down == down
        assert pump.totals == {"bytes_up": len(up), "bytes_down": len(down)}
        assert pump.links == 0
    finally:
        pump.stop()


def test_a_half_close_passes_after_the_last_byte_while_the_other_way_flows(
    pump: Pump,
) -> None:
    with wired(pump) as w:
        w.client.sendall(b"request")
        w.client.shutdown(socket.SHUT_WR)
        assert read_all(w.server) == b"request"  # then EOF: the FIN came after the bytes
        assert w.wait_reports(1) == [("up", "eof")]
        for i in range(50):  # the other way still flows after the half close
            w.server.sendall(b"%d," % i)
        w.server.shutdown(socket.SHUT_WR)
        assert read_all(w.client) == b"".join(b"%d," % i for i in range(50))
        assert w.wait_reports(2) == [("up", "eof"), ("down", "eof")]
    assert pump.links == 0


def test_a_reset_peer_is_reported_and_the_link_dropped(pump: Pump) -> None:
    with wired(pump) as w:
        w.server.sendall(b"x" * 1000)
        assert w.client.recv(1000)
        reset(w.server)
        (report,) = w.wait_reports(1)
        assert report[1] in ("src_reset", "dst_reset")  # reading or writing found it
        assert pump.links == 0  # the adapter resets the other side; the pump let go


def test_after_release_the_pump_no_longer_moves_bytes(pump: Pump) -> None:
    client, proxy_client = tcp_pair()
    proxy_upstream, server = tcp_pair()
    for sock in (proxy_client, proxy_upstream):
        sock.setblocking(False)
    link = pump.splice([("up", proxy_client.fileno(), proxy_upstream.fileno())], print)
    client.sendall(b"before")
    server.settimeout(5)
    assert server.recv(100) == b"before"
    link.release()
    link.release()  # idempotent
    client.sendall(b"after")
    server.settimeout(0.3)
    with pytest.raises(TimeoutError):
        server.recv(100)
    assert proxy_client.recv(100) == b"after"  # still there for whoever owns the socket
    for sock in (client, server, proxy_client, proxy_upstream):
        sock.close()


def test_a_destination_that_does_not_read_stops_the_reading(pump: Pump) -> None:
    with wired(pump, "up") as w:
        w.client.setblocking(False)
        sent = 0
        with contextlib.suppress(BlockingIOError):
            for _ in range(10_000):
                sent += w.client.send(b"\0" * 65536)
        assert sent < 10_000 * 65536  # back-pressure reached the sender
        # In flight: socket buffers on both legs and at most one pipe, nothing unbounded.
        assert pump.totals["bytes_up"] < sent


def test_no_file_descriptor_is_left_after_stop() -> None:
    before = open_fds()
    pump = Pump("splice")
    for _ in range(3):
        with wired(pump) as w:
            w.client.sendall(b"ping")
            w.client.shutdown(socket.SHUT_WR)
            assert read_all(w.server) == b"ping"
            w.server.shutdown(socket.SHUT_WR)
            assert read_all(w.client) == b""
            w.wait_reports(2)
    with wired(pump) as w:  # one released with bytes still in flight
        w.client.sendall(b"\0" * 100_000)
    pump.stop()
    pump.stop()
    assert open_fds() == before


# Through the proxy ------------------------------------------------------------------


async def echo_then_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.write(b"<after eof>")  # the half-closed way still flows
    await writer.drain()
    writer.close()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("after", [0, 64 * 1024])
async def test_an_opaque_stream_is_spliced_both_ways_with_half_close(
    mode: Mode, after: int
) -> None:
    payload = b"SSH-2.0-test\r\n" + os.urandom(3 << 20)
    async with running_harness(peek_timeout=0.3, splice=mode, splice_after=after) as h:
        server, port = await serve(echo_then_eof)
        h.routes[(OPENAI, 22)] = port
        async with server:
            reader, writer = await h.connect((OPENAI, 22))

            async def send() -> None:
                for i in range(0, len(payload), 100_000):
                    writer.write(payload[i : i + 100_000])
                    await writer.drain()
                writer.write_eof()

            sender = asyncio.create_task(send())
            received = await reader.read(-1)
            await sender
            writer.close()
        assert received == payload + b"<after eof>"
        stats = h.proxy.stats()
        assert stats["bytes_up"] == len(payload)
        assert stats["bytes_down"] == len(payload) + len(b"<after eof>")
        assert h.proxy.pump is not None and h.proxy.pump.totals["bytes_down"] > 0
        assert h.reasons() == [("allow", "opaque_resolved")]


async def test_http_responses_are_spliced_and_every_request_is_still_checked() -> None:
    body = os.urandom(1 << 20)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(head + body)
                await writer.drain()

    async with running_harness(peek_timeout=0.3) as h:
        server, port = await serve(big)
        h.routes[(OPENAI, 80)] = port
        async with server:
            reader, writer = await h.connect((OPENAI, 80))
            for _ in range(2):  # keep-alive: both responses whole, the second spliced
                writer.write(b"GET / HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
                await reader.readuntil(b"\r\n\r\n")
                assert await reader.readexactly(len(body)) == body
            assert h.proxy.stats()["spliced"] == 1
            writer.write(b"GET / HTTP/1.1\r\nHost: evil.com\r\n\r\n")
            with pytest.raises(ConnectionResetError):
                await reader.read(100)
            writer.close()
    assert h.reasons() == [("allow", "host_allowed"), ("deny", "host_not_allowed")]
    assert h.proxy.stats()["bytes_down"] == 2 * len(head + body)


async def test_an_upstream_reset_reaches_the_sandbox_as_a_reset() -> None:
    async def reset_midway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"\0" * (1 << 20))
        await writer.drain()
        await asyncio.sleep(0.1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async with running_harness(peek_timeout=0.3, splice_after=0) as h:
        server, port = await serve(reset_midway)
        h.routes[(OPENAI, 22)] = port
        async with server:
            reader, writer = await h.connect((OPENAI, 22))
            writer.write(b"SSH-2.0-test\r\n")
            with pytest.raises(ConnectionResetError):
                while await reader.read(1 << 16):
                    pass
            writer.close()
        assert h.proxy.stats()["active"] == 0
        assert h.proxy.stats()["spliced"] == 0


async def test_a_policy_cut_resets_a_spliced_stream() -> None:
    stop = asyncio.Event()

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.readline()
            while not stop.is_set():
                writer.write(b"\0" * 65536)
                await writer.drain()
        writer.close()

    async with running_harness(peek_timeout=0.3) as h:
        server, port = await serve(stream)
        h.routes[(OPENAI, 22)] = port
        async with server:
            reader, writer = await h.connect((OPENAI, 22))
            writer.write(b"SSH-2.0-test\r\n")
            for _ in range(20):
                await reader.readexactly(65536)
            assert h.proxy.stats()["spliced"] == 1
            assert h.proxy.cut(SBX, lambda name, ip, port: False) == 1
            with pytest.raises(ConnectionResetError):
                while await reader.read(1 << 16):
                    pass
            stop.set()
            writer.close()
        assert h.proxy.stats()["cut"] == 1 and h.proxy.stats()["spliced"] == 0
    assert h.reasons() == [("allow", "opaque_resolved"), ("deny", "policy_changed")]


async def test_no_file_descriptor_is_left_by_spliced_connections() -> None:
    async def http_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + b"\0" * 300_000)
        await writer.drain()
        writer.close()

    server, port = await serve(http_once)
    before = open_fds()
    async with server, running_harness(peek_timeout=0.3) as h:
        h.routes[(OPENAI, 80)] = port
        for _ in range(5):
            reader, writer = await h.connect((OPENAI, 80))
            writer.write(b"GET / HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
            assert len(await reader.read(-1)) > 300_000
            writer.close()
            await writer.wait_closed()
        assert h.proxy.pump is not None and h.proxy.pump.totals["bytes_down"] > 0
        held, _ = await h.connect((OPENAI, 80))  # one still open at stop
    await asyncio.sleep(0.05)
    assert open_fds() <= before
