"""Benchmark: SniProxy against a direct connection on loopback.

Figures: download throughput (opaque stream, server to client), upload throughput (HTTP
request body, parsed by the proxy as it flows), and connect latency (connect + one round
trip, p50/p95). The proxy runs in its own process with a stub original destination, as in
the unit tests, so no netns or root is needed.  Usage:
    .venv/bin/python bench/bench_proxy.py [--bytes 1073741824] [--connects 500]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import socket
import statistics
import threading
import time
from typing import Any

CHUNK = 1 << 20
LAB_ADDRESS = "203.0.113.10"
SBX = "sbx-000000000bench"


def source_server(listener: socket.socket, total: int) -> None:
    """Per connection: read the client's first line, then either send `total` bytes
    ("DOWN"), drain an HTTP body ("POST"), or answer one byte (latency probe)."""
    payload = b"\0" * CHUNK

    def handle(conn: socket.socket) -> None:
        with conn:
            first = conn.recv(65536)
            if first.startswith(b"DOWN"):
                left = total
                while left > 0:
                    n = min(left, CHUNK)
                    conn.sendall(payload[:n])
                    left -= n
            elif first.startswith(b"POST"):
                head, _, rest = first.partition(b"\r\n\r\n")
                left = total - len(rest)
                buf = bytearray(CHUNK)
                while left > 0:
                    n = conn.recv_into(buf)
                    if not n:
                        break
                    left -= n
                conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
            else:
                conn.sendall(b"!")

    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def run_proxy(server_port: int, ready: Any) -> None:
    from declawd.egress.policy import EgressPolicy
    from declawd.egress.proxy import SandboxView, SniProxy
    from declawd.egress.resolved import ResolvedNames

    async def main() -> None:
        resolved = ResolvedNames()
        resolved.record(SBX, "api.openai.com", [LAB_ADDRESS], 3600)
        view = SandboxView(SBX, EgressPolicy.parse(["api.openai.com"], ["0.0.0.0/0"]))
        proxy = SniProxy(
            lookup=lambda ip: view,
            resolved=resolved,
            audit=lambda event: None,
            original_dst=lambda sock: (LAB_ADDRESS, 80),
            upstream_address=lambda ip, port: ("127.0.0.1", server_port),
        )
        await proxy.start("127.0.0.1", 0)
        ready.send(proxy.port)
        await asyncio.Event().wait()

    asyncio.run(main())


def download(port: int, total: int) -> float:
    with socket.create_connection(("127.0.0.1", port)) as s:
        start = time.perf_counter()
        s.sendall(b"DOWN\r\n")
        buf = bytearray(CHUNK)
        got = 0
        while got < total:
            n = s.recv_into(buf)
            if not n:
                raise RuntimeError(f"short read: {got} of {total}")
            got += n
        return total / (time.perf_counter() - start)


def upload(port: int, total: int) -> float:
    with socket.create_connection(("127.0.0.1", port)) as s:
        start = time.perf_counter()
        s.sendall(
            b"POST /up HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: %d\r\n\r\n" % total
        )
        payload = b"\0" * CHUNK
        left = total
        while left > 0:
            n = min(left, CHUNK)
            s.sendall(payload[:n])
            left -= n
        if not s.recv(100).startswith(b"HTTP/1.1 204"):
            raise RuntimeError("upload not acknowledged")
        return total / (time.perf_counter() - start)


def connect_latency(port: int, count: int) -> list[float]:
    out = []
    for _ in range(count):
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(b"PING-probe\r\n")
            if s.recv(1) != b"!":
                raise RuntimeError("no answer")
        out.append(time.perf_counter() - start)
    return out


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bytes", type=int, default=1 << 30)
    parser.add_argument("--connects", type=int, default=500)
    args = parser.parse_args()

    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    server_port = listener.getsockname()[1]
    fork = mp.get_context("fork")
    # Separate processes: client, server and proxy must not share one GIL.
    server = fork.Process(target=source_server, args=(listener, args.bytes), daemon=True)
    server.start()
    parent, child = mp.Pipe()
    proc = fork.Process(target=run_proxy, args=(server_port, child), daemon=True)
    proc.start()
    try:
        proxy_port = parent.recv()
        gib = args.bytes / (1 << 30)
        print(f"transfer size {gib:.2f} GiB, {args.connects} connects, loopback")
        rows = []
        for label, fn in (("download", download), ("upload (HTTP body)", upload)):
            direct = fn(server_port, args.bytes)
            proxied = fn(proxy_port, args.bytes)
            rows.append((label, direct, proxied))
            print(
                f"{label:20s} direct {direct / 1e6:9.0f} MB/s   proxy {proxied / 1e6:9.0f} MB/s"
                f"   ratio {proxied / direct:5.2f}"
            )
        connect_latency(proxy_port, 20)  # warm-up
        direct_lat = connect_latency(server_port, args.connects)
        proxy_lat = connect_latency(proxy_port, args.connects)
        for q in (50, 95):
            d, p = pct(direct_lat, q) * 1e6, pct(proxy_lat, q) * 1e6
            print(
                f"connect+RTT p{q:<2d}      direct {d:9.0f} us     proxy {p:9.0f} us"
                f"     ratio {p / d:5.2f}"
            )
    finally:
        for worker in (proc, server):
            worker.terminate()
            worker.join()
        listener.close()


if __name__ == "__main__":
    main()
