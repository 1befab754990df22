"""DNS latency through the gateway resolver vs a direct query to the lab DNS (p50/p95).

Builds the integration test's namespace topology (instance "dcwtgw"), starts the gateway
daemon, then times N sequential A queries for one allowed name from the sandbox netns
(through the resolver: the first goes upstream and is admitted, the rest are answered from
the sandbox's cache) and N queries straight to the upstream from the gateway netns. The
cold path (distinct names) is measured by bench_resolver.py against the lab's wildcard zone.
Needs root. Usage: .venv/bin/python bench/bench_dns.py [N]
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _topology_module() -> Any:
    path = REPO / "tests" / "integration" / "test_egress_gateway.py"
    spec = importlib.util.spec_from_file_location("egress_gateway_topology", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def percentiles(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * len(ordered)) - 1)]
    return statistics.median(ordered) * 1000, p95 * 1000


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    topo_mod = _topology_module()
    topo = topo_mod.Topology(Path(tempfile.mkdtemp(prefix="bench-dns-")))
    try:
        topo.setup()
        topo.start_daemon()
        lab = topo_mod.LAB_DNS
        via = topo.client(op="bench", name="api.openai.com", server=lab, n=n)["times"]
        direct = topo.client_in(topo_mod.GW, op="bench", name="api.openai.com", server=lab, n=n)[
            "times"
        ]
    finally:
        topo.teardown()
    r50, r95 = percentiles(via)
    d50, d95 = percentiles(direct)
    print(f"queries: {n} sequential A api.openai.com (cached after the first)")
    print(f"through resolver: p50 {r50:.3f} ms  p95 {r95:.3f} ms")
    print(f"direct upstream : p50 {d50:.3f} ms  p95 {d95:.3f} ms")
    print(f"ratio           : p50 {r50 / d50:.2f}x  p95 {r95 / d95:.2f}x")


if __name__ == "__main__":
    main()
