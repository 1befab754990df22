"""Benchmark: N idle sandboxes alive on this machine at once (100 quick, 500 full).

Through the official SDK, N idle runc sandboxes of template `base` (no warm pool involved)
with a domain policy like the seed's are created a few at a time. With all N alive: a new
create + `commands.run("echo ok")` is timed against the same measured with no other of our
sandboxes alive, before the fill and again after the kill (same run: the two blocks
bracket the one at N, so a drift of the shared machine does not land on one side only), and
a command in the first and the last sandbox must answer.
Memory per idle sandbox: the drop of MemAvailable / N, the mean cgroup memory of a sandbox,
the server's and the gateway daemon's RSS growth / N. Also create p50/p95 of the first
sandboxes against the last ones, and the server's fds and threads. Then everything is killed
and the host's counts (netns, veths, nft chains, cgroups, mounts, containers, processes;
tests/e2e/leaks.py) must be back to the baseline taken before; a leak fails the run.
Usage: .venv/bin/python bench/bench_density.py [--quick]   (DECLAWD_BENCH_DENSITY_N=... overrides N)
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import Report, header, pct, summary
from declaw import ALL_TRAFFIC, NetworkPolicy, Sandbox, SecurityPolicy
from harness import INSTANCE, POOL, STATE_DIR, Server, run_standalone

from declawd.config import Settings
from declawd.runtime import read_stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.e2e.leaks
from tests.e2e import leaks

POLICY = SecurityPolicy(
    network=NetworkPolicy(allow_out=["api.openai.com", "pypi.org"], deny_out=[ALL_TRAFFIC])
)
PARALLEL = 4  # creates in flight at once (2 cores: more only queues in the server)
EDGE = 50  # the first / last creates compared for p50/p95
PROBES = 20  # create + echo ok samples at N, and before the fill and after the kill each
SANDBOX_TIMEOUT_S = 3600
SETTLE_S = 10.0
MIB = 1 << 20


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def proc_figures(pid: int) -> dict[str, float]:
    """RSS (MiB), open fds and threads of one process."""
    return {
        "rss_mib": _status_kib(pid, "VmRSS") / 1024,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": _status_kib(pid, "Threads"),
    }


def mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def gateway_pid(server: Server) -> int:
    return int((server.state_dir / "gateway" / "gateway.pid").read_text().strip())


def reload_ms(server: Server, tries: int = 5) -> float:
    """Median ms of the gateway daemon's `reload` (it re-reads state.json: every sandbox)."""
    took = []
    for _ in range(tries):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(str(server.state_dir / "gateway" / "control.sock"))
            t0 = time.perf_counter()
            sock.sendall(b"reload\n")
            if sock.recv(64).strip() != b"ok":
                raise RuntimeError("the gateway daemon did not acknowledge a reload")
            took.append((time.perf_counter() - t0) * 1000)
    return pct(took, 50)


def mounts() -> int:
    return len(Path("/proc/self/mountinfo").read_text().splitlines())


def create_one() -> tuple[Sandbox, float]:
    t0 = time.perf_counter()
    s = Sandbox.create(
        template="base",
        timeout=SANDBOX_TIMEOUT_S,
        metadata={"declaw.runtime": "runc", "bench": "density"},
        security=POLICY,
    )
    return s, (time.perf_counter() - t0) * 1000


def probe() -> float:
    """ms of a create + `echo ok` to its output; the sandbox is killed untimed."""
    t0 = time.perf_counter()
    s, _ = create_one()
    try:
        answer(s)
        return (time.perf_counter() - t0) * 1000
    finally:
        s.kill(wait=True)


def answer(s: Sandbox) -> None:
    r = s.commands.run("echo ok", timeout=60)
    if r.stdout.strip() != "ok":
        raise RuntimeError(f"{s.sandbox_id}: unexpected output {r.stdout!r} (exit {r.exit_code})")


def quiet(settings: Settings, timeout: float = 180) -> dict[str, int]:
    """Host counts once three snapshots a second apart agree (a kill's teardown may still
    run). Not leaks.quiet_snapshot: that also waits for no live sandbox in the store, and
    the warm pool's sandboxes are live for as long as the server runs."""
    deadline = time.monotonic() + timeout
    seen = [leaks.snapshot(settings)]
    while time.monotonic() < deadline and not (len(seen) >= 3 and seen[-1] == seen[-2] == seen[-3]):
        time.sleep(1.0)
        seen.append(leaks.snapshot(settings))
    return seen[-1]


def main(server: Server, quick: bool) -> Report:
    n = int(os.environ.get("DECLAWD_BENCH_DENSITY_N", "100" if quick else "500"))
    report = Report("density", params={"idle_sandboxes": n, "parallel": PARALLEL, "edge": EDGE})
    header(f"density: {n} idle runc sandboxes of base at once")
    settings = leaks.settings_for(INSTANCE, STATE_DIR, POOL)
    spid = leaks.server_pid_on(int(server.domain.rsplit(":", 1)[1]))
    if spid is None:
        raise RuntimeError("the bench server's pid was not found")
    before = quiet(settings)
    boxes: list[Sandbox] = []
    try:
        alone = [probe() for _ in range(PROBES)]
        reload0, mounts0 = reload_ms(server), mounts()
        time.sleep(SETTLE_S)
        mem0, srv0, gw0 = mem_available_mib(), proc_figures(spid), proc_figures(gateway_pid(server))
        create_ms: list[float] = []
        t0 = time.monotonic()
        fill(n, boxes, create_ms, t0)
        fill_s = time.monotonic() - t0
        time.sleep(SETTLE_S)
        mem1, srv1, gw1 = mem_available_mib(), proc_figures(spid), proc_figures(gateway_pid(server))
        cg = [read_stats(server.cgroup(s.sandbox_id)).memory_bytes / MIB for s in boxes]
        at_n = [probe() for _ in range(PROBES)]
        reload1, mounts1 = reload_ms(server), mounts()
        answer(boxes[0])
        answer(boxes[-1])
        edge = min(EDGE, max(1, n // 4))
        report.add_pcts(
            "create (SDK), last sandboxes",
            create_ms[-edge:],
            create_ms[:edge],
            "ms",
            f"first {edge} creates",
        )
        report.add("MemAvailable drop / sandbox", (mem0 - mem1) / n, 0, "MiB", "none")
        report.add("cgroup memory of a sandbox (mean)", summary(cg)["mean"], 0, "MiB", "none")
        report.add("server RSS growth / sandbox", (srv1["rss_mib"] - srv0["rss_mib"]) / n, 0,
                   "MiB", "none")  # fmt: skip
        report.add("gateway RSS growth / sandbox", (gw1["rss_mib"] - gw0["rss_mib"]) / n, 0,
                   "MiB", "none")  # fmt: skip
        report.add(f"server fds with {n} alive", srv1["fds"], srv0["fds"], "", "with 0 alive")
        report.add(f"server threads with {n} alive", srv1["threads"], srv0["threads"], "",
                   "with 0 alive")  # fmt: skip
        report.add(f"gateway fds with {n} alive", gw1["fds"], gw0["fds"], "", "with 0 alive")
        report.add(f"gateway reload with {n} alive", reload1, reload0, "ms", "with 0 alive")
        report.add(f"host mounts with {n} alive", mounts1, mounts0, "", "with 0 alive")
        report.add(f"fill: {n} creates, {PARALLEL} at a time", fill_s, 0, "s", "none")
        report.samples["create (SDK), all"] = summary(create_ms)
        report.samples["cgroup memory MiB"] = summary(cg)
        report.extra.update(
            mem_available_mib={"before": mem0, "after": mem1},
            server={"before": srv0, "after": srv1},
            gateway={"before": gw0, "after": gw1},
            create_ms=create_ms,
            cgroup_p95_mib=pct(cg, 95),
        )
    finally:
        t_kill = time.monotonic()
        kill_all(boxes)
        kill_s = time.monotonic() - t_kill
    report.add(f"kill: {len(boxes)} sandboxes, {PARALLEL} at a time", kill_s, 0, "s", "none")
    quiet(settings)
    alone_after = [probe() for _ in range(PROBES)]
    report.add_pcts(
        f"create + echo ok with {n} alive",
        at_n,
        alone + alone_after,
        "ms",
        "with 0 alive (before the fill and after the kill)",
    )
    report.extra["alone_ms"] = {"before": alone, "after": alone_after}
    after = quiet(settings)
    report.extra["host_before"], report.extra["host_after"] = before, after
    report.add("host resources left after kill (sum)",
               sum(abs(after[k] - before.get(k, 0)) for k in after), 0, "", "none")  # fmt: skip
    report.write()
    if after != before:
        diff = {k: (before.get(k), v) for k, v in after.items() if before.get(k) != v}
        raise RuntimeError(f"host not back to its baseline: {diff}")
    return report


def fill(n: int, boxes: list[Sandbox], create_ms: list[float], t0: float) -> None:
    """Create n sandboxes PARALLEL at a time into `boxes`, in submission order. On the first
    failure nothing more is started, and every create already made is still collected."""
    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = [pool.submit(create_one) for _ in range(n)]
        try:
            for future in futures:
                s, ms = future.result()
                boxes.append(s)
                create_ms.append(ms)
                if len(boxes) % 50 == 0:
                    print(f"  .. {len(boxes)} alive, {time.monotonic() - t0:.0f} s", flush=True)
        except BaseException:
            for future in futures:
                future.cancel()
            for future in futures:
                if not future.cancelled() and future.exception() is None:
                    made = future.result()[0]
                    if made not in boxes:
                        boxes.append(made)
            raise


def kill_all(boxes: list[Sandbox]) -> None:
    """Kill every sandbox made, whatever failed before (the harness's down() is the last resort)."""

    def kill(s: Sandbox) -> Any:
        with contextlib.suppress(Exception):
            s.kill(wait=True)

    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(kill, boxes))


if __name__ == "__main__":
    run_standalone(main)
