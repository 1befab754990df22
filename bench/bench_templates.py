"""Create latency against template size: `base`, `python` and a 2 GB template side by side.

Templates are read-only overlay lower layers and nothing is copied per sandbox, so the
p50 of `Sandbox.create` should not grow with the template's size. Talks to a running server
with the official SDK (DECLAW_DOMAIN, DECLAW_API_KEY); builds the 2 GB template (one RUN
writing 2 GiB of random bytes) under the alias `bench-2g` if it does not exist yet.

    .venv/bin/python bench/bench_templates.py [-n 20] [--runtime runc|runsc]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import httpx
from declaw import Sandbox, Template, TemplateBase

BIG_ALIAS = "bench-2g"
BIG_CMD = "head -c 2G /dev/urandom > /opt/big"


def _http() -> httpx.Client:
    domain = os.environ.get("DECLAW_DOMAIN", "localhost:8080")
    base = domain if domain.startswith("http") else f"http://{domain}"
    return httpx.Client(
        base_url=base, headers={"X-API-Key": os.environ.get("DECLAW_API_KEY", "")}, timeout=60
    )


def ensure_big(http: httpx.Client) -> None:
    if http.get(f"/templates/{BIG_ALIAS}").status_code == 200:
        return
    print(f"building {BIG_ALIAS} ({BIG_CMD}) ...", file=sys.stderr)
    t0 = time.monotonic()
    tpl = TemplateBase().from_base_image("debian:bookworm").run_cmd([BIG_CMD])
    Template.build(tpl, BIG_ALIAS)
    print(f"built {BIG_ALIAS} in {time.monotonic() - t0:.1f}s", file=sys.stderr)


def measure(template: str, n: int, runtime: str) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        sbx = Sandbox.create(template=template, timeout=60, metadata={"declaw.runtime": runtime})
        samples.append((time.perf_counter() - t0) * 1000)
        sbx.kill(wait=True)  # not timed
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20, help="creates per template")
    ap.add_argument("--runtime", default="runc", choices=["runc", "runsc"])
    args = ap.parse_args()
    with _http() as http:
        ensure_big(http)
        sizes = {t["alias"]: t["size_bytes"] for t in http.get("/templates").json()["templates"]}
    names = ["base", "python", BIG_ALIAS]
    for name in names:  # one warm-up create each: page cache, envd binary, first mount
        measure(name, 1, args.runtime)
    rows = []
    for name in names:
        s = measure(name, args.n, args.runtime)
        q = statistics.quantiles(s, n=20)
        rows.append((name, sizes.get(name, 0), statistics.median(s), q[18], min(s), max(s)))
    print(f"\ncreate latency, {args.runtime}, n={args.n} per template")
    print(f"{'template':<10} {'size':>9} {'p50 ms':>8} {'p95 ms':>8} {'min':>7} {'max':>7}")
    for name, size, p50, p95, lo, hi in rows:
        print(f"{name:<10} {size / 1e6:>6.0f} MB {p50:>8.1f} {p95:>8.1f} {lo:>7.1f} {hi:>7.1f}")
    ratio = rows[2][2] / rows[0][2]
    print(f"p50 {BIG_ALIAS} / p50 base = {ratio:.2f}")


if __name__ == "__main__":
    main()
