"""Benchmark 5: DNS latency through the gateway resolver vs a direct query to the lab DNS.

Through: N sequential UDP A queries, each waiting for its answer, from inside a runc `python`
sandbox with allow_out=["*.wild.lab"], deny_out=[ALL_TRAFFIC], to the nameserver in its
/etc/resolv.conf; cold = a distinct name of the lab's wildcard zone each time (policy check,
upstream query, nft admission before the answer), cached = one name again and again (answered
from the sandbox's cache once its admission is proven). Baseline, same run: the same client,
in the gateway netns (`nsenter --net`), asking the lab DNS (198.51.100.53) directly for the
same kind of names. Every query must be answered (NOERROR, one A): a REFUSED fails the run.
Usage: .venv/bin/python bench/bench_resolver.py [--quick]
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import tempfile
from typing import Any

from common import Report, header
from declaw import ALL_TRAFFIC, NetworkPolicy, Sandbox, SecurityPolicy
from harness import Server, run_standalone

ZONE = "wild.lab"  # the lab's wildcard zone: every name below it is 203.0.113.70
LAB_DNS = "198.51.100.53"
WARMUP = 10
CLIENT = r"""
import json, random, socket, struct, sys, time

server, n, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
names = open(sys.argv[4]).read().split()
if server == "resolv.conf":
    server = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]
def wire(name):
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.connect((server, 53))
out = []
for i in range(n + warmup):
    # One name for all (cached), or the i-th of a distinct series (cold).
    name = names[0] if len(names) == 1 else names[i]
    qid = random.randrange(65536)
    query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + wire(name) + struct.pack("!HH", 1, 1)
    start = time.perf_counter()
    s.send(query)
    while True:
        data = s.recv(4096)
        if struct.unpack("!H", data[:2])[0] == qid:
            break
    elapsed = (time.perf_counter() - start) * 1000
    rcode = data[3] & 0xF
    answers = struct.unpack("!H", data[6:8])[0]
    if rcode != 0 or answers != 1:
        raise SystemExit("query %d (%s): rcode %d, %d answers" % (i, name, rcode, answers))
    if i >= warmup:
        out.append(elapsed)
print(json.dumps({"server": server, "ms": out}))
"""


def names(kind: str, n: int, token: str) -> list[str]:
    """`n + WARMUP` distinct names (cold), or one name (cached), unique to this run."""
    if kind == "cold":
        return [f"c{i}-{token}.{ZONE}" for i in range(n + WARMUP)]
    return [f"hot-{token}.{ZONE}"]


def in_sandbox(s: Sandbox, n: int, series: list[str]) -> dict[str, Any]:
    s.files.write("/tmp/dns_names.txt", "\n".join(series))
    r = s.commands.run(
        f"python3 /tmp/dns_client.py resolv.conf {n} {WARMUP} /tmp/dns_names.txt", timeout=600
    )
    if r.exit_code != 0:
        raise RuntimeError(f"dns client in sandbox failed: {(r.stdout + r.stderr)[-2000:]}")
    doc: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return doc


def direct(server: Server, n: int, series: list[str]) -> dict[str, Any]:
    with (
        tempfile.NamedTemporaryFile("w", suffix=".py") as f,
        tempfile.NamedTemporaryFile("w", suffix=".txt") as listing,
    ):
        f.write(CLIENT)
        f.flush()
        listing.write("\n".join(series))
        listing.flush()
        netns = f"--net=/var/run/netns/{server.gateway_netns}"
        argv = [sys.executable, f.name, LAB_DNS, str(n), str(WARMUP), listing.name]
        r = subprocess.run(["nsenter", netns, *argv], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"direct dns client failed: {(r.stdout + r.stderr)[-2000:]}")
    doc: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return doc


def upstream_queries(server: Server, wanted: set[str]) -> int:
    """How many of the lab's logged queries (from anyone) asked for one of `wanted`."""
    try:
        lines = (server.state_dir / "lab" / "query.log").read_text().splitlines()
    except OSError:
        return -1
    count = 0
    for line in lines:
        try:
            count += json.loads(line).get("name") in wanted
        except ValueError:
            continue  # a line being written
    return count


def main(server: Server, quick: bool) -> Report:
    n = 50 if quick else 500
    token = secrets.token_hex(4)
    report = Report("resolver", params={"queries": n, "zone": f"*.{ZONE}", "runtime": "runc"})
    header(f"5. DNS A through the resolver vs direct to the lab DNS ({n} sequential queries)")
    policy = SecurityPolicy(network=NetworkPolicy(allow_out=[f"*.{ZONE}"], deny_out=[ALL_TRAFFIC]))
    s = Sandbox.create(
        template="python", timeout=600, metadata={"declaw.runtime": "runc"}, security=policy
    )
    try:
        s.files.write("/tmp/dns_client.py", CLIENT)
        cold_names, hot_names = names("cold", n, token), names("cached", n, token)
        cold = in_sandbox(s, n, cold_names)
        hot = in_sandbox(s, n, hot_names)
    finally:
        s.kill(wait=True)
    # The baseline asks other names of the same zone, so the lab log below counts ours only.
    base_cold = direct(server, n, names("cold", n, token + "d"))
    base_hot = direct(server, n, names("cached", n, token + "d"))
    report.extra = {
        "resolver": cold["server"],
        "direct": base_cold["server"],
        # Proof of what each series measured: every cold name went upstream once, the
        # cached one once in all.
        "upstream queries, cold series": upstream_queries(server, set(cold_names)),
        "upstream queries, cached series": upstream_queries(server, set(hot_names)),
    }
    report.add_pcts(
        "cold cache (distinct names) ms",
        list(cold["ms"]),
        list(base_cold["ms"]),
        "ms",
        "direct to lab DNS, distinct names",
    )
    report.add_pcts(
        "cached (one name) ms",
        list(hot["ms"]),
        list(base_hot["ms"]),
        "ms",
        "direct to lab DNS, one name",
    )
    print(
        f"  upstream queries: cold series {report.extra['upstream queries, cold series']} "
        f"of {n + WARMUP}, cached series {report.extra['upstream queries, cached series']}",
        flush=True,
    )
    report.write()
    return report


if __name__ == "__main__":
    run_standalone(main)
