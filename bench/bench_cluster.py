"""Benchmark (issue 14): the cluster's API server against the single-process default.

In one run, (a) the harness's single-process server (`declawd server --lab`; its warm pool
is of python, so every create here asks for `base` and neither side is warm) and (b) a
cluster of bench/cluster_harness.py (PostgreSQL, `declawd server --cluster`, NODES node
agents, warm pools off). Through the official SDK, each side: N sequential
`Sandbox.create(template="base")` timed (kill untimed), and the API server's CPU time
(utime + stime of its process, /proc/<pid>/stat) over those N creates and kills / N;
M x `commands.run("true")` on one warm sandbox, and M x `EnvdClient.run("true")` straight
over that sandbox's envd socket (what both round trips share, so the rest is the API hop).
The cluster's CPU row is also given with its node agents' CPU added (the work moved out of
the API server). The two sides alternate in ROUNDS blocks (a, b, a, b) so drift of the
shared machine falls on both. Goals: create p50 and command p50 at most 1.3x the
single-process figure.
Usage: .venv/bin/python bench/bench_cluster.py [--quick]   (DECLAWD_BENCH_CLUSTER_NODES=N)
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster_harness import Cluster, running_cluster
from common import Report, header
from declaw import Sandbox
from harness import Server, run_standalone
from tests.e2e import leaks

from declawd.node.envd_client import EnvdClient

NODES = int(os.environ.get("DECLAWD_BENCH_CLUSTER_NODES", "3"))
ROUNDS = 2
GOAL = 1.3
TICK_S = 1 / os.sysconf("SC_CLK_TCK")
SINGLE = "single-process server"


def cpu_s(pid: int) -> float:
    """utime + stime of a process, all its threads, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S  # fields 14 and 15 of stat(5)


@dataclass
class Side:
    """One API server under test: where the SDK goes, whose CPU is counted, the samples."""

    name: str
    api_key: str
    domain: str
    pids: Callable[[], dict[str, int]]  # "api" first; the cluster adds its node agents
    envd_socket: Callable[[str], Path]  # a sandbox's envd socket on the host it runs on
    creates: list[float] = field(default_factory=list)
    commands: list[float] = field(default_factory=list)
    envd: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    n_cpu: int = 0
    ids: list[str] = field(default_factory=list)

    def create(self) -> Sandbox:
        return Sandbox.create(
            template="base", timeout=300, api_key=self.api_key, domain=self.domain
        )

    def create_block(self, n: int) -> None:
        pids = self.pids()
        before = {k: cpu_s(p) for k, p in pids.items()}
        for _ in range(n):
            t = time.perf_counter()
            s = self.create()
            self.creates.append((time.perf_counter() - t) * 1000)
            self.ids.append(s.sandbox_id)
            s.kill(wait=True)
        for k, p in pids.items():
            self.cpu[k] = self.cpu.get(k, 0.0) + cpu_s(p) - before[k]
        self.n_cpu += n

    def command_block(self, s: Sandbox, n: int) -> None:
        for _ in range(n):
            t = time.perf_counter()
            r = s.commands.run("true")
            self.commands.append((time.perf_counter() - t) * 1000)
            if r.exit_code != 0:
                raise RuntimeError(f"{self.name}: true exited {r.exit_code}")

    async def envd_block(self, sandbox_id: str, n: int) -> None:
        """The same `true` straight over the sandbox's envd socket: no API server, no node
        agent; what both sides' round trips have in common."""
        async with EnvdClient(str(self.envd_socket(sandbox_id))) as client:
            for _ in range(n):
                t = time.perf_counter()
                r = await client.run("true", user="user", timeout=30)
                self.envd.append((time.perf_counter() - t) * 1000)
                if r.exit_code != 0:
                    raise RuntimeError(f"{self.name}: true exited {r.exit_code} over envd")

    def cpu_ms_per_create(self, key: str) -> float:
        return self.cpu[key] / self.n_cpu * 1000


def single_side(server: Server) -> Side:
    pid = leaks.server_pid_on(int(server.domain.rsplit(":", 1)[1]))
    if pid is None:
        raise RuntimeError(f"no `declawd server --port` process for {server.domain}")
    return Side(SINGLE, server.key, server.domain, lambda: {"api": pid}, server.envd_socket)


def cluster_side(c: Cluster) -> Side:
    def pids() -> dict[str, int]:
        return {"api": c.server.pid, **{n.instance: n.agent.pid for n in c.nodes}}

    def envd_socket(sandbox_id: str) -> Path:
        node = next(n for n in c.nodes if n.instance == c.node_of(sandbox_id))
        return node.state_dir / "sandboxes" / sandbox_id / "disk" / "envd" / "envd.sock"

    return Side("cluster API server", c.key, c.domain, pids, envd_socket)


def measure(sides: tuple[Side, Side], n_create: int, n_command: int) -> None:
    for side in sides:  # warm-up: connections, page cache, first use of runc on each node
        side.create_block(2)
        side.creates.clear()
        side.ids.clear()
        side.cpu.clear()
        side.n_cpu = 0
    for _ in range(ROUNDS):
        for side in sides:
            side.create_block(n_create // ROUNDS)
    warm = [side.create() for side in sides]
    try:
        for side, s in zip(sides, warm, strict=True):
            side.command_block(s, 10)
            side.commands.clear()
            asyncio.run(side.envd_block(s.sandbox_id, 10))
            side.envd.clear()
        for _ in range(ROUNDS):
            for side, s in zip(sides, warm, strict=True):
                side.command_block(s, n_command // ROUNDS)
                asyncio.run(side.envd_block(s.sandbox_id, n_command // ROUNDS))
    finally:
        for s in warm:
            s.kill(wait=True)


def goal_note(value: float, baseline: float) -> str:
    ratio = value / baseline
    return f"goal <= {GOAL}x: {'met' if ratio <= GOAL else 'NOT met'}"


def main(server: Server, quick: bool) -> Report:
    n_create = 6 if quick else 30
    n_command = 30 if quick else 200
    report = Report(
        "cluster",
        params={
            "nodes": NODES,
            "n_create": n_create,
            "n_command": n_command,
            "rounds": ROUNDS,
            "template": "base",
            "runtime": "runc",
            "cluster_warm_pool": "off",
            "single_warm_pool": "python only (base creates are cold on both sides)",
        },
    )
    header(f"cluster (issue 14): {NODES} node agents vs the single-process server")
    with running_cluster(NODES) as c:
        single, cluster = single_side(server), cluster_side(c)
        measure((single, cluster), n_create, n_command)
        placed = Counter(c.node_of(sid) for sid in cluster.ids)
    report.extra["placement"] = dict(placed)
    report.add_pcts("SDK create(base) ms", cluster.creates, single.creates, "ms", SINGLE)
    report.add_pcts("SDK run(true) ms", cluster.commands, single.commands, "ms", SINGLE)
    for row in report.rows:
        if row.metric.endswith("p50"):
            row.note = goal_note(row.value, row.baseline)
    for side in (cluster, single):  # where the round trip goes: the hop over envd itself
        report.add_pcts(
            f"{side.name}: SDK run(true) ms", side.commands, side.envd, "ms", "EnvdClient on node"
        )
    report.add(
        "API server CPU ms per create+kill",
        cluster.cpu_ms_per_create("api"),
        single.cpu_ms_per_create("api"),
        "ms",
        SINGLE,
    )
    report.add(
        "API server + agents CPU ms per create+kill",
        sum(cluster.cpu_ms_per_create(k) for k in cluster.cpu),
        single.cpu_ms_per_create("api"),
        "ms",
        SINGLE,
    )
    extra: dict[str, Any] = {
        side.name: {k: round(v * 1000, 1) for k, v in side.cpu.items()}
        for side in (single, cluster)
    }
    report.extra["cpu_ms_total"] = extra
    report.extra["cpu_creates"] = cluster.n_cpu
    for row in report.rows:
        if row.note:
            print(f"  {row.metric}: x{row.ratio:.2f}, {row.note}", flush=True)
    print(f"  cluster creates per node: {dict(placed)}", flush=True)
    report.write()
    return report


if __name__ == "__main__":
    run_standalone(main)
