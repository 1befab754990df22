"""Benchmark 2: round trip of `true` on a warm sandbox, SDK vs envd directly vs the host.

Per runtime, one warm `base` sandbox: N × `commands.run("true")` through the official SDK
(client → REST server → envd), N × `EnvdClient.run("true")` straight over envd's unix
socket (no REST hop), against N × fork+exec of `true` on the host with `subprocess`, and of
`bash -l -c true` (envd runs every command under a login shell) to show where time goes.
Usage: .venv/bin/python bench/bench_command.py [--quick]
"""

from __future__ import annotations

import asyncio
import subprocess
import time

from common import Report, header
from declaw import Sandbox
from harness import Server, run_standalone

from declawd.node.envd_client import EnvdClient

RUNTIMES = ("runc", "runsc")


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


async def envd_runs(socket_path: str, n: int) -> list[float]:
    out = []
    async with EnvdClient(socket_path) as client:
        for _ in range(n):
            t = time.perf_counter()
            r = await client.run("true", user="user", timeout=30)
            out.append((time.perf_counter() - t) * 1000)
            if r.exit_code != 0:
                raise RuntimeError(f"true exited {r.exit_code}")
    return out


def main(server: Server, quick: bool) -> Report:
    n = 30 if quick else 200
    report = Report("command", params={"n": n, "template": "base", "runtimes": list(RUNTIMES)})
    header(f"2. command round trip of `true` on a warm sandbox ({n} runs each)")
    host_runs(["true"], 10)
    host_true = host_runs(["true"], n)
    host_bash = host_runs(["bash", "-l", "-c", "true"], n)
    for runtime in RUNTIMES:
        s = Sandbox.create(template="base", timeout=600, metadata={"declaw.runtime": runtime})
        try:
            sock = str(server.envd_socket(s.sandbox_id))
            sdk_runs(s, 10)  # warm: connection pools, page cache inside the sandbox
            asyncio.run(envd_runs(sock, 10))
            sdk = sdk_runs(s, n)
            envd = asyncio.run(envd_runs(sock, n))
        finally:
            s.kill(wait=True)
        label = f"{runtime}: "
        report.add_pcts(label + "SDK run(true) ms", sdk, host_true, "ms", "host fork+exec true")
        report.add_pcts(label + "EnvdClient run(true) ms", envd, host_true, "ms", "host fork+exec true")
        report.add_pcts(label + "EnvdClient run(true) ms", envd, host_bash, "ms", "host bash -l -c true")
        report.add_pcts(label + "SDK run(true) ms", sdk, envd, "ms", "EnvdClient run(true)")
    report.write()
    return report


if __name__ == "__main__":
    run_standalone(main)
