"""Benchmark 5: DNS latency through the gateway resolver vs a direct query to the lab DNS.

Through: N sequential UDP A queries for an allowed name (big.lab) from inside a runc `python`
sandbox with allow_out=["big.lab"], deny_out=[ALL_TRAFFIC], to the nameserver in its
/etc/resolv.conf (policy check, upstream query, nft set admission before the answer).
Baseline, same run: the same client script, in the gateway netns (`nsenter --net`), asking
the lab DNS (198.51.100.53) directly. The lab never forwards anything to a real resolver.
Usage: .venv/bin/python bench/bench_resolver.py [--quick]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from typing import Any

from common import Report, header
from declaw import ALL_TRAFFIC, NetworkPolicy, Sandbox, SecurityPolicy
from harness import Server, run_standalone

NAME = "big.lab"
LAB_DNS = "198.51.100.53"
CLIENT = r"""
import json, os, random, socket, struct, sys, time

name, server, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if server == "resolv.conf":
    server = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.connect((server, 53))
out = []
for i in range(n + 10):
    qid = random.randrange(65536)
    start = time.perf_counter()
    s.send(struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1))
    while True:
        data = s.recv(4096)
        if struct.unpack("!H", data[:2])[0] == qid:
            break
    elapsed = (time.perf_counter() - start) * 1000
    rcode = data[3] & 0xF
    answers = struct.unpack("!H", data[6:8])[0]
    if rcode != 0 or answers == 0:
        raise SystemExit("bad answer: rcode %d, %d answers" % (rcode, answers))
    if i >= 10:  # the first 10 warm the path
        out.append(elapsed)
print(json.dumps({"server": server, "ms": out}))
"""


def through_resolver(n: int) -> dict[str, Any]:
    policy = SecurityPolicy(network=NetworkPolicy(allow_out=[NAME], deny_out=[ALL_TRAFFIC]))
    s = Sandbox.create(
        template="python", timeout=600, metadata={"declaw.runtime": "runc"}, security=policy
    )
    try:
        s.files.write("/tmp/dns_client.py", CLIENT)
        r = s.commands.run(f"python3 /tmp/dns_client.py {NAME} resolv.conf {n}", timeout=600)
        if r.exit_code != 0:
            raise RuntimeError(f"dns client in sandbox failed: {r.stderr[-2000:]}")
        doc: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
        return doc
    finally:
        s.kill(wait=True)


def direct(server: Server, n: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".py") as f:
        f.write(CLIENT)
        f.flush()
        r = subprocess.run(
            [
                "nsenter",
                f"--net=/var/run/netns/{server.gateway_netns}",
                sys.executable,
                f.name,
                NAME,
                LAB_DNS,
                str(n),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
    if r.returncode != 0:
        raise RuntimeError(f"direct dns client failed: {r.stderr[-2000:]}")
    doc: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return doc


def main(server: Server, quick: bool) -> Report:
    n = 50 if quick else 500
    report = Report("resolver", params={"queries": n, "name": NAME, "runtime": "runc"})
    header(f"5. DNS A {NAME}: through the resolver vs direct to the lab DNS ({n} queries)")
    via = through_resolver(n)
    base = direct(server, n)
    report.extra = {"resolver": via["server"], "direct": base["server"]}
    report.add_pcts(
        "resolver query ms",
        list(via["ms"]),
        list(base["ms"]),
        "ms",
        "direct to lab DNS (gw netns)",
    )
    report.write()
    return report


if __name__ == "__main__":
    run_standalone(main)
