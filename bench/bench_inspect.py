"""Benchmark: content inspection (TLS interception) against SNI passthrough, same proxy.

Two `python` sandboxes on runc behind one server, both allowed big.lab and *.wild.lab only:
`plain` (SNI passthrough) and `inspected` (the same network policy plus a transformation, so
every connection is intercepted: two TLS ends and the HTTP layer in the gateway's proxy).
The same in-sandbox client measures, in each: an HTTPS download of /bytes/<n>; requests on
new connections and on one keep-alive connection (the leaf already cached); the first TLS
request to each of K fresh names against the second one (the leaf mint); POSTs of a 1 MiB
JSON body the rules rewrite. The gateway daemon's RSS is read before and after the sandbox
holds N idle keep-alive connections open (inspected first: cold, an upper bound). The rules
engine alone on the same 1 MiB document runs in this process. Figures only, no pass/fail.
Usage: .venv/bin/python bench/bench_inspect.py [--quick]
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

from common import Report, header, pct
from declaw import ALL_TRAFFIC, NetworkPolicy, Sandbox, SecurityPolicy, TransformationRule
from harness import Server, run_standalone

from declawd.inspect.model import TransformRule
from declawd.inspect.rules import compile_rules

HOST = "big.lab"
RUNTIME = "runc"
NEEDLE, PIN = r"needle-(\d+)", r"pin-\1"  # the benchmark's rule: rewrites every item
ITEMS = 7300  # items of the JSON body: about 1 MiB
GOALS = {"download ratio": ">= 0.5", "added p50 latency": "<= 1.5 ms"}

CLIENT = r"""
import http.client, json, os, socket, ssl, sys, time

CTX = ssl.create_default_context()
HOST = sys.argv[2]
BUF = bytearray(1 << 20)

def conn(host=HOST, addr=None):
    c = http.client.HTTPSConnection(host, context=CTX, timeout=120)
    raw = socket.create_connection((addr or host, 443), timeout=120)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sock = CTX.wrap_socket(raw, server_hostname=host)
    return c

def get(c, path, close=False):
    c.request("GET", path, headers={"Connection": "close"} if close else {})
    r = c.getresponse()
    n = 0
    while True:
        k = r.readinto(BUF)
        if not k:
            break
        n += k
    if r.status != 200:
        raise RuntimeError("%s -> %d" % (path, r.status))
    return n

def download(size):
    c = conn()
    start = time.perf_counter()
    got = get(c, "/bytes/%d" % size)
    secs = time.perf_counter() - start
    c.close()
    assert got == size, (got, size)
    return size / secs / 1e6

def new_conn_ms(count):
    out = []
    for _ in range(count):
        start = time.perf_counter()
        c = conn()
        get(c, "/ping", close=True)
        c.close()
        out.append((time.perf_counter() - start) * 1000)
    return out

def keepalive_ms(count):
    c = conn()
    get(c, "/ping")  # handshake (and leaf) out of the way
    out = []
    for _ in range(count):
        start = time.perf_counter()
        get(c, "/ping")
        out.append((time.perf_counter() - start) * 1000)
    c.close()
    return out

def mint_ms(count, tag):
    # first and second TLS request to each fresh name; names resolved beforehand, untimed
    names = ["n%d-%s.wild.lab" % (i, tag) for i in range(count)]
    addrs = [socket.getaddrinfo(n, 443, socket.AF_INET)[0][4][0] for n in names]
    first, second = [], []
    for name, addr in zip(names, addrs):
        for out in (first, second):
            start = time.perf_counter()
            c = conn(name, addr)
            get(c, "/ping", close=True)
            c.close()
            out.append((time.perf_counter() - start) * 1000)
    return {"first": first, "second": second}

def json_post_ms(reps, items):
    doc = {"items": [{"id": i, "text": "lorem ipsum dolor needle-%d sit amet " % i * 3}
                     for i in range(items)]}
    body = json.dumps(doc).encode()
    c = conn()
    out, rewritten = [], 0
    for _ in range(reps):
        start = time.perf_counter()
        c.request("POST", "/echo", body=body, headers={"Content-Type": "application/json"})
        echoed = c.getresponse().read()
        out.append((time.perf_counter() - start) * 1000)
        rewritten = echoed.count(b"pin-")
    c.close()
    return {"ms": out, "bytes": len(body), "rewritten": rewritten}

def hold(count, ready, release):
    held = [conn() for _ in range(count)]
    for c in held:
        get(c, "/ping")  # each connection fully set up (leaf, upstream, HTTP layer)
    with open(ready + ".tmp", "w") as f:
        f.write(str(len(held)))
    os.rename(ready + ".tmp", ready)
    while not os.path.exists(release):
        time.sleep(0.1)
    for c in held:
        c.close()
    return len(held)

print(json.dumps(eval(sys.argv[1])))
"""


def _policy(inspect: bool) -> SecurityPolicy:
    network = NetworkPolicy(allow_out=[HOST, "*.wild.lab"], deny_out=[ALL_TRAFFIC])
    rules = [TransformationRule(match=NEEDLE, replace=PIN, direction="outbound")]
    return SecurityPolicy(network=network, transformations=rules if inspect else [])


def _run(s: Sandbox, expr: str, timeout: int = 1200) -> Any:
    r = s.commands.run(
        f"python3 /tmp/inspect_client.py {shlex.quote(expr)} {HOST}", timeout=timeout
    )
    if r.exit_code != 0:
        raise RuntimeError(f"client failed ({r.exit_code}): {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _gateway_pid(server: Server) -> int:
    return int((server.state_dir / "gateway" / "gateway.pid").read_text().strip())


def held_rss_delta(server: Server, s: Sandbox, count: int) -> int:
    """Gateway RSS growth while `s` holds `count` idle keep-alive connections open."""
    pid = _gateway_pid(server)
    for f in ("/tmp/held", "/tmp/release"):
        s.commands.run(f"rm -f {f}")
    before = _rss(pid)
    expr = shlex.quote(f"hold({count}, '/tmp/held', '/tmp/release')")
    s.commands.run(f"python3 /tmp/inspect_client.py {expr} {HOST}", background=True)
    deadline = time.monotonic() + 300
    while not s.files.exists("/tmp/held"):
        if time.monotonic() > deadline:
            raise RuntimeError("connections not held in time")
        time.sleep(0.2)
    after = _rss(pid)
    s.files.write("/tmp/release", "")
    return after - before


def engine_mb_s(items: int, reps: int) -> tuple[float, int]:
    """The rules alone (RE2) over every string value of the 1 MiB document, in-process."""
    rules = compile_rules([TransformRule(NEEDLE, PIN, "outbound")]).for_direction("outbound")
    texts = [f"lorem ipsum dolor needle-{i} sit amet " * 3 for i in range(items)]
    size = len(json.dumps({"items": [{"id": i, "text": t} for i, t in enumerate(texts)]}))
    secs, count = [], 0
    for _ in range(reps):
        start = time.perf_counter()
        count = sum(rules.apply(t)[1] for t in texts)
        secs.append(time.perf_counter() - start)
    return size / pct(secs, 50) / 1e6, count


def measure(server: Server, inspect: bool, quick: bool) -> dict[str, Any]:
    size = (16 if quick else 64) << 20
    n = 30 if quick else 200
    s = Sandbox.create(
        template="python",
        timeout=3600,
        metadata={"declaw.runtime": RUNTIME},
        security=_policy(inspect),
    )
    try:
        s.files.write("/tmp/inspect_client.py", CLIENT)
        tag = "i" if inspect else "p"
        _run(s, "download(1 << 20)")  # warm-up: resolver, datapath sets, leaf
        return {
            "rss_delta": held_rss_delta(server, s, 50 if quick else 200),
            "held": 50 if quick else 200,
            "download_mbps": _run(s, f"download({size})"),
            "new_conn_ms": _run(s, f"new_conn_ms({n})"),
            "keepalive_ms": _run(s, f"keepalive_ms({n * 2})"),
            "mint_ms": _run(s, f"mint_ms({10 if quick else 40}, {tag!r})"),
            "json": _run(s, f"json_post_ms({5 if quick else 20}, {ITEMS})"),
        }
    finally:
        s.kill(wait=True)


def main(server: Server, quick: bool) -> Report:
    report = Report("inspect", params={"host": HOST, "runtime": RUNTIME, "quick": quick})
    header("inspection: intercepted (per-sandbox CA, h11, rules) vs SNI passthrough, same proxy")
    inspected = measure(server, True, quick)
    plain = measure(server, False, quick)
    report.extra = {"inspected": inspected, "passthrough": plain, "goals": GOALS}
    base = "passthrough (same proxy)"
    report.add(
        "HTTPS download MB/s",
        inspected["download_mbps"],
        plain["download_mbps"],
        "MB/s",
        base,
        note=f"goal ratio {GOALS['download ratio']}",
    )
    for key, label in (
        ("new_conn_ms", "connect+TLS+GET ms"),
        ("keepalive_ms", "keep-alive GET ms"),
    ):
        report.add_pcts(label, list(inspected[key]), list(plain[key]), "ms", base)
        added = pct(inspected[key], 50) - pct(plain[key], 50)
        report.add(f"added p50: {label}", added, pct(plain[key], 50), "ms", f"{base} p50",
                   note=f"goal {GOALS['added p50 latency']}")  # fmt: skip
    mint = inspected["mint_ms"]
    report.add_pcts("first TLS request to a new name ms", mint["first"], mint["second"], "ms",
                    "second request, leaf cached")  # fmt: skip
    report.add(
        "leaf mint cost (p50 first - second) ms",
        pct(mint["first"], 50) - pct(mint["second"], 50),
        pct(plain["mint_ms"]["first"], 50) - pct(plain["mint_ms"]["second"], 50),
        "ms",
        "same difference, passthrough",
    )
    body = inspected["json"]["bytes"]
    assert inspected["json"]["rewritten"] > 0 and plain["json"]["rewritten"] == 0
    report.add(
        "1 MiB JSON POST (rules rewrite it) MB/s",
        body / pct(inspected["json"]["ms"], 50) * 1000 / 1e6,
        body / pct(plain["json"]["ms"], 50) * 1000 / 1e6,
        "MB/s",
        base,
        note=f"{body / 2**20:.2f} MiB, {inspected['json']['rewritten']} replacements per body",
    )
    engine, count = engine_mb_s(ITEMS, 5 if quick else 20)
    report.add("rules engine alone on that body MB/s", engine, 0, "MB/s", "(in-process, no baseline)",
               note=f"{count} replacements")  # fmt: skip
    per = inspected["held"]
    report.add(
        "gateway RSS per open connection KiB",
        inspected["rss_delta"] / per / 1024,
        plain["rss_delta"] / plain["held"] / 1024,
        "KiB",
        "passthrough connection",
        note=f"{per} idle keep-alive connections held",
    )
    report.write()
    return report


if __name__ == "__main__":
    run_standalone(main)
