"""Benchmark 3: memory of a warm idle sandbox (runc and runsc), 10 idle sandboxes at once.

Per sandbox: the container cgroup's memory usage (`declawd.runtime.read_stats`; page cache
charged to it included, its RSS share reported apart from memory.stat) plus the RSS of host
processes that serve it but sit outside that cgroup (runsc's sandbox/gofer processes; none
for runc once started). Baseline, same run: as many bare containers of the same rootfs
running `sleep` under the same runtime, measured the same way.
Usage: .venv/bin/python bench/bench_memory.py [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from bare import BareBundle, remove_root, template_layers
from common import Report, header, summary
from declaw import Sandbox
from harness import TEMPLATES_DIR, Server, run_standalone

from declawd.runtime import RuntimeName, read_stats
from declawd.runtime.cgroups import _hierarchies

RUNTIMES: tuple[RuntimeName, ...] = ("runc", "runsc")
SETTLE_S = 3.0


def _rss_bytes(pid: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _memory_cgroup(pid: str) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "memory" in controllers.split(",") or controllers == "":
                return path
    return ""


def _processes() -> Iterator[tuple[str, str]]:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            yield pid, cmdline


def host_side(container_id: str, cgroup: str) -> dict[str, int]:
    """RSS and number of the runtime's host processes for this container (their command
    line names it: runsc's sandbox and gofer), outside and inside its memory cgroup."""
    found = {"out_rss": 0, "out_procs": 0, "in_rss": 0, "in_procs": 0}
    for pid, cmdline in _processes():
        if container_id not in cmdline:
            continue
        with contextlib.suppress(OSError):
            where = "in" if _memory_cgroup(pid).rstrip("/") == cgroup.rstrip("/") else "out"
            found[f"{where}_rss"] += _rss_bytes(pid)
            found[f"{where}_procs"] += 1
    return found


def cgroup_rss(cgroup: str) -> int:
    memory = _hierarchies().get("memory")
    if memory is None:
        return 0
    with contextlib.suppress(OSError):
        for line in (memory / cgroup.strip("/") / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "total_rss":
                return int(value)
    return 0


def measure(container_id: str, cgroup: str) -> dict[str, float]:
    usage = read_stats(cgroup).memory_bytes
    host = host_side(container_id, cgroup)
    mib = 1 << 20
    return {
        "cgroup_usage_mib": usage / mib,
        "cgroup_rss_mib": cgroup_rss(cgroup) / mib,
        "host_procs_rss_mib": host["out_rss"] / mib,
        "host_procs": host["out_procs"],
        "runtime_procs_in_cgroup": host["in_procs"],
        "runtime_procs_in_cgroup_rss_mib": host["in_rss"] / mib,
        "total_mib": (usage + host["out_rss"]) / mib,
    }


def sandboxes(server: Server, runtime: str, n: int) -> list[dict[str, float]]:
    boxes: list[Sandbox] = []
    try:
        for _ in range(n):
            boxes.append(
                Sandbox.create(template="base", timeout=600, metadata={"declaw.runtime": runtime})
            )
        for s in boxes:  # a command each, so envd has served one like a warm sandbox
            s.commands.run("true")
        time.sleep(SETTLE_S)
        return [measure(s.sandbox_id, server.cgroup(s.sandbox_id)) for s in boxes]
    finally:
        for s in boxes:
            with contextlib.suppress(Exception):
                s.kill(wait=True)


async def bare(server: Server, runtime: str, n: int) -> list[dict[str, float]]:
    layers = template_layers(TEMPLATES_DIR, "base")
    root = server.state_dir / "bare"
    parent = f"{server.instance}-bare"
    bundles = [BareBundle(root, layers, runtime, ["/bin/sleep", "3600"], parent) for _ in range(n)]
    try:
        for b in bundles:
            await b.start_detached()
        await asyncio.sleep(SETTLE_S)
        return [measure(b.id, b.cgroups_path) for b in bundles]
    finally:
        for b in bundles:
            await b.close()
        remove_root(root, parent)


def main(server: Server, quick: bool) -> Report:
    n = 3 if quick else 10
    report = Report("memory", params={"idle_sandboxes": n, "settle_s": SETTLE_S})
    header(f"3. memory of a warm idle sandbox ({n} idle at once, MiB per sandbox)")
    for runtime in RUNTIMES:
        sbx = sandboxes(server, runtime, n)
        base = asyncio.run(bare(server, runtime, n))
        report.extra[runtime] = {"sandboxes": sbx, "bare": base}
        for key in ("total_mib", "cgroup_usage_mib", "cgroup_rss_mib", "host_procs_rss_mib"):
            a = summary([m[key] for m in sbx])["mean"]
            b = summary([m[key] for m in base])["mean"]
            report.add(f"{runtime}: {key} (mean)", a, b, "MiB", f"bare {runtime} sleep")
        print(
            f"  {runtime}: {n} sandboxes total {sum(m['total_mib'] for m in sbx):.1f} MiB; "
            f"runtime processes per sandbox: {sbx[0]['host_procs']} outside the cgroup, "
            f"{sbx[0]['runtime_procs_in_cgroup']} inside it "
            f"({sbx[0]['runtime_procs_in_cgroup_rss_mib']:.1f} MiB RSS, counted in the cgroup)",
            flush=True,
        )
    report.write()
    return report


if __name__ == "__main__":
    run_standalone(main)
