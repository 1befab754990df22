"""Benchmark 2: round trip of `true` on a warm sandbox, SDK vs envd directly vs the host.

Per runtime, one warm `base` sandbox: N x `commands.run("true")` through the official SDK
(client → REST server → envd), N x `EnvdClient.run("true")` straight over envd's unix
socket (no REST hop), the two alternating in rounds of 10, against N x fork+exec of `true`
on the host with `subprocess`. To show where time goes: the mean cost of `bash -l -c true`
measured inside the sandbox by a shell loop (envd runs every command under a login shell),
next to EnvdClient's mean.
Usage: .venv/bin/python bench/bench_command.py [--quick]
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time

from common import Report, header
from declaw import Sandbox
from harness import Server, run_standalone

from declawd.node.envd_client import EnvdClient
from declawd.runtime import RuntimeName

RUNTIMES: tuple[RuntimeName, ...] = ("runc", "runsc")
ROUND = 10  # SDK and envd runs alternate in rounds of this many


def host_runs(argv: list[str], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(argv, check=True)
        out.append((time.perf_counter() - t) * 1000)
    return out


def sdk_runs(s: Sandbox, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = s.commands.run("true")
        out.append((time.perf_counter() - t) * 1000)
        if r.exit_code != 0:
            raise RuntimeError(f"true exited {r.exit_code}")
    return out


class EnvdDirect:
    """One `EnvdClient` on one event loop, kept across batches (as the SDK keeps its
    connection pool): no batch pays a connection the other side does not."""

    def __init__(self, socket_path: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = EnvdClient(socket_path)
        self.loop.run_until_complete(self.client.__aenter__())

    def runs(self, n: int) -> list[float]:
        return self.loop.run_until_complete(self._runs(n))

    async def _runs(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            r = await self.client.run("true", user="user", timeout=30)
            out.append((time.perf_counter() - t) * 1000)
            if r.exit_code != 0:
                raise RuntimeError(f"true exited {r.exit_code}")
        return out

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.client.__aexit__(None, None, None))
        finally:
            self.loop.close()


def in_sandbox_login_shell_ms(s: Sandbox, n: int) -> float:
    """Mean ms of `bash -l -c true` forked inside the sandbox (no envd in the loop)."""
    script = (
        f"s=$(date +%s%N); for i in $(seq {n}); do bash -l -c true; done; "
        f"e=$(date +%s%N); echo $(( (e - s) / {n} ))"
    )
    r = s.commands.run(script, timeout=600)
    if r.exit_code != 0:
        raise RuntimeError(f"login shell loop failed: {r.stderr[-500:]}")
    return int(r.stdout.strip()) / 1e6


def main(server: Server, quick: bool) -> Report:
    n = 30 if quick else 200
    report = Report("command", params={"n": n, "template": "base", "runtimes": list(RUNTIMES)})
    header(f"2. command round trip of `true` on a warm sandbox ({n} runs each)")
    host_runs(["true"], 10)
    host_true = host_runs(["true"], n)
    for runtime in RUNTIMES:
        s = Sandbox.create(template="base", timeout=600, metadata={"declaw.runtime": runtime})
        try:
            direct = EnvdDirect(str(server.envd_socket(s.sandbox_id)))
            try:
                sdk_runs(s, 10)  # warm: connection pools, page cache inside the sandbox
                direct.runs(10)
                sdk, envd = [], []
                for _ in range(n // ROUND):  # alternating: a drift shows on both sides
                    sdk += sdk_runs(s, ROUND)
                    envd += direct.runs(ROUND)
            finally:
                direct.close()
            shell = in_sandbox_login_shell_ms(s, n)
        finally:
            s.kill(wait=True)
        label = f"{runtime}: "
        report.add_pcts(label + "SDK run(true) ms", sdk, host_true, "ms", "host fork+exec true")
        report.add_pcts(
            label + "EnvdClient run(true) ms", envd, host_true, "ms", "host fork+exec true"
        )
        report.add(
            label + "EnvdClient run(true) mean ms",
            statistics.fmean(envd),
            shell,
            "ms",
            "bash -l -c true in sandbox",
        )
        report.add_pcts(label + "SDK run(true) ms", sdk, envd, "ms", "EnvdClient run(true)")
    report.write()
    return report


if __name__ == "__main__":
    run_standalone(main)
