"""Run the whole benchmark suite: datapath first, then the rest against one lab + server.

`python bench/run_all.py [--quick] [--only create,egress,...]`. The datapath benchmark uses
its own instance and no server; the others share one `harness.running()` lab + server, which
is stopped (and `declawd down` run) at the end whatever happens. Every figure is also in
bench/results/<name>.json; a Markdown table of all rows goes to bench/results/summary.md.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable

import bench_cluster
import bench_command
import bench_create
import bench_datapath
import bench_density
import bench_egress
import bench_guard_latency
import bench_inspect
import bench_memory
import bench_nft_control
import bench_persistence
import bench_resolver
import harness
from common import RESULTS_DIR, Report

SERVER_BENCHES: dict[str, Callable[[harness.Server, bool], Report]] = {
    "create": bench_create.main,
    "command": bench_command.main,
    "memory": bench_memory.main,
    "egress": bench_egress.main,
    "inspect": bench_inspect.main,
    "guard_latency": bench_guard_latency.main,
    "resolver": bench_resolver.main,
    "persistence": bench_persistence.main,
    "density": bench_density.main,
    "cluster": bench_cluster.main,
}
ALL = ("datapath", "nft_control", *SERVER_BENCHES)


def markdown(reports: list[Report]) -> str:
    lines = [
        "| benchmark | metric | value | baseline (same run) | ratio |",
        "|---|---|---|---|---|",
    ]
    for r in reports:
        for row in r.rows:
            ratio = f"{row.ratio:.2f}" if row.baseline else "n/a"
            lines.append(
                f"| {r.name} | {row.metric} | {row.value:.3g} {row.unit} | "
                f"{row.baseline_label}: {row.baseline:.3g} {row.unit} | {ratio} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sample sizes")
    parser.add_argument("--only", default=",".join(ALL), help="comma-separated: " + ",".join(ALL))
    args = parser.parse_args()
    wanted = [name for name in args.only.split(",") if name]
    unknown = sorted(set(wanted) - set(ALL))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    started = time.monotonic()
    reports: list[Report] = []
    failed: list[str] = []
    if "datapath" in wanted:
        try:
            reports.append(bench_datapath.main(args.quick))
        except Exception:
            traceback.print_exc()
            failed.append("datapath")
    if "nft_control" in wanted:
        try:
            reports.append(bench_nft_control.main(args.quick))
        except Exception:
            traceback.print_exc()
            failed.append("nft_control")
    todo = [name for name in SERVER_BENCHES if name in wanted]
    if todo:
        with harness.running() as server:
            for name in todo:
                try:
                    reports.append(SERVER_BENCHES[name](server, args.quick))
                except Exception:
                    traceback.print_exc()
                    failed.append(name)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "summary.md").write_text(markdown(reports))
    print(f"\nsuite done in {time.monotonic() - started:.0f} s; table in bench/results/summary.md")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
