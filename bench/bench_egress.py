"""Benchmark 4: egress through the L7 proxy vs a direct (NAT-only) path to the same lab host.

Two `python` sandboxes on runc: one with allow_out=["big.lab"], deny_out=[ALL_TRAFFIC] (TCP
is redirected to the proxy, which checks Host/SNI and splices), one with an open policy
(accepted through NAT, no proxy). In each, a client script downloads big.lab/bytes/N over
HTTP and HTTPS and makes C sequential connects + a small request (GET /ping, Connection:
close). The client runs inside the sandbox; only the lab is ever reached.
Usage: .venv/bin/python bench/bench_egress.py [--quick]
"""

from __future__ import annotations

import json
from typing import Any

from common import Report, header
from declaw import ALL_TRAFFIC, NetworkPolicy, Sandbox, SecurityPolicy
from harness import Server, run_standalone

HOST = "big.lab"
RUNTIME = "runc"
CLIENT = r"""
import json, socket, ssl, sys, time

HOST = sys.argv[1]
SIZE = int(sys.argv[2])
CONNECTS = int(sys.argv[3])
CTX = ssl.create_default_context()

def addr():
    return socket.getaddrinfo(HOST, 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]

def open_conn(ip, tls):
    s = socket.create_connection((ip, 443 if tls else 80), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return CTX.wrap_socket(s, server_hostname=HOST) if tls else s

def download(tls):
    ip = addr()
    start = time.perf_counter()
    s = open_conn(ip, tls)
    s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (SIZE, HOST.encode()))
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    head = b""
    while b"\r\n\r\n" not in head:
        n = s.recv_into(view)
        if not n:
            raise RuntimeError("no response head")
        head += bytes(view[:n])
    head, _, rest = head.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head[:100])
    got = len(rest)
    while got < SIZE:
        n = s.recv_into(view)
        if not n:
            raise RuntimeError("short body: %d of %d" % (got, SIZE))
        got += n
    secs = time.perf_counter() - start
    s.close()
    return SIZE / secs / 1e6

def latency(tls):
    ip = addr()
    req = b"GET /ping HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % HOST.encode()
    out = []
    for _ in range(CONNECTS):
        start = time.perf_counter()
        s = open_conn(ip, tls)
        s.sendall(req)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        if not data.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(data[:100])
        out.append((time.perf_counter() - start) * 1000)
    return out

download(False)  # warm-up: resolver, datapath sets, page cache
print(json.dumps({
    "http_mbps": download(False),
    "https_mbps": download(True),
    "tcp_ms": latency(False),
    "tls_ms": latency(True),
}))
"""


def run_client(s: Sandbox, size: int, connects: int) -> dict[str, Any]:
    s.files.write("/tmp/egress_client.py", CLIENT)
    r = s.commands.run(f"python3 /tmp/egress_client.py {HOST} {size} {connects}", timeout=900)
    if r.exit_code != 0:
        raise RuntimeError(f"egress client failed ({r.exit_code}): {r.stderr[-2000:]}")
    doc: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return doc


def measure(policy: SecurityPolicy | None, size: int, connects: int) -> dict[str, Any]:
    s = Sandbox.create(
        template="python", timeout=1200, metadata={"declaw.runtime": RUNTIME}, security=policy
    )
    try:
        return run_client(s, size, connects)
    finally:
        s.kill(wait=True)


def main(server: Server, quick: bool) -> Report:
    size = (64 if quick else 1024) << 20
    connects = 30 if quick else 200
    report = Report(
        "egress",
        params={"bytes": size, "connects": connects, "host": HOST, "runtime": RUNTIME},
    )
    header(f"4. egress to {HOST}: proxy vs direct NAT ({size >> 20} MiB, {connects} connects)")
    locked = SecurityPolicy(network=NetworkPolicy(allow_out=[HOST], deny_out=[ALL_TRAFFIC]))
    proxied = measure(locked, size, connects)
    direct = measure(None, size, connects)
    report.extra = {"proxied": proxied, "direct": direct}
    for key, label in (("http_mbps", "HTTP download MB/s"), ("https_mbps", "HTTPS download MB/s")):
        report.add(
            f"proxy: {label}",
            float(proxied[key]),
            float(direct[key]),
            "MB/s",
            "direct (NAT)",
        )
    for key, label in (("tcp_ms", "connect+GET (HTTP) ms"), ("tls_ms", "connect+TLS+GET ms")):
        report.add_pcts(
            f"proxy: {label}",
            list(proxied[key]),
            list(direct[key]),
            "ms",
            "direct (NAT)",
        )
    report.write()
    return report


if __name__ == "__main__":
    run_standalone(main)
