"""Benchmark 4: egress through the L7 proxy vs a direct (NAT-only) path to the same lab host.

Two `python` sandboxes on runc: one with allow_out=["big.lab"], deny_out=[ALL_TRAFFIC] (TCP
is redirected to the proxy, which checks Host/SNI and splices), one with an open policy
(accepted through NAT, no proxy). In each, a client script downloads big.lab/bytes/N over
HTTP and HTTPS and makes C sequential connects + a small request (GET /ping, Connection:
close). The client runs inside the sandbox; only the lab is ever reached.

Both sandboxes are alive throughout and the two sides alternate: downloads in ROUNDS rounds
(N / ROUNDS bytes each, one side then the other), connects in rounds of CONNECT_ROUND. A
drift of the shared, noisy machine then shows on both sides instead of on one block.
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

MODE = sys.argv[4]
if MODE == "warm":
    download(False)  # warm-up: resolver, datapath sets, page cache
    print(json.dumps({}))
elif MODE == "download":
    print(json.dumps({"http_mbps": download(False), "https_mbps": download(True)}))
else:
    print(json.dumps({"tcp_ms": latency(False), "tls_ms": latency(True)}))
"""
ROUNDS = 4  # download rounds per side
CONNECT_ROUND = 20  # connects per side and round


def run_client(s: Sandbox, mode: str, size: int = 0, connects: int = 0) -> dict[str, Any]:
    r = s.commands.run(
        f"python3 /tmp/egress_client.py {HOST} {size} {connects} {mode}", timeout=900
    )
    if r.exit_code != 0:
        raise RuntimeError(f"egress client failed ({r.exit_code}): {r.stderr[-2000:]}")
    doc: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return doc


def measure(sides: dict[str, Sandbox], size: int, connects: int) -> dict[str, dict[str, Any]]:
    """Each side's download rates (MB/s, one a round) and connect latencies (ms), the two
    sides alternating round by round."""
    got: dict[str, dict[str, list[float]]] = {
        side: {"http_mbps": [], "https_mbps": [], "tcp_ms": [], "tls_ms": []} for side in sides
    }
    for sbx in sides.values():
        sbx.files.write("/tmp/egress_client.py", CLIENT)
        run_client(sbx, "warm", size // ROUNDS)
    for _ in range(ROUNDS):
        for side, sbx in sides.items():
            for key, value in run_client(sbx, "download", size // ROUNDS).items():
                got[side][key].append(float(value))
    for _ in range(max(1, connects // CONNECT_ROUND)):
        for side, sbx in sides.items():
            for key, values in run_client(sbx, "latency", 0, CONNECT_ROUND).items():
                got[side][key].extend(values)
    return got


def main(server: Server, quick: bool) -> Report:
    size = (64 if quick else 1024) << 20
    connects = 40 if quick else 200
    report = Report(
        "egress",
        params={
            "bytes": size,
            "connects": connects,
            "host": HOST,
            "runtime": RUNTIME,
            "download_rounds": ROUNDS,
            "connect_round": CONNECT_ROUND,
        },
    )
    header(
        f"4. egress to {HOST}: proxy vs direct NAT ({size >> 20} MiB in {ROUNDS} rounds, "
        f"{connects} connects in rounds of {CONNECT_ROUND}, alternating)"
    )
    locked = SecurityPolicy(network=NetworkPolicy(allow_out=[HOST], deny_out=[ALL_TRAFFIC]))
    sides: dict[str, Sandbox] = {}
    try:
        for side, policy in (("proxied", locked), ("direct", None)):
            sides[side] = Sandbox.create(
                template="python",
                timeout=1200,
                metadata={"declaw.runtime": RUNTIME},
                security=policy,
            )
        got = measure(sides, size, connects)
    finally:
        for sbx in sides.values():
            sbx.kill(wait=True)
    proxied, direct = got["proxied"], got["direct"]
    report.extra = {"proxied": proxied, "direct": direct}
    for key, label in (("http_mbps", "HTTP download MB/s"), ("https_mbps", "HTTPS download MB/s")):
        # The rate of all the bytes of a side: total bytes over the total time of its rounds.
        report.add(
            f"proxy: {label}",
            _overall(proxied[key]),
            _overall(direct[key]),
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


def _overall(rates: list[float]) -> float:
    """Equal-sized rounds: the overall rate is the harmonic mean of the rounds' rates."""
    return len(rates) / sum(1.0 / r for r in rates)


if __name__ == "__main__":
    run_standalone(main)
