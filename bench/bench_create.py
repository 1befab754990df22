"""Benchmark 1: create → first command output, official SDK vs a bare `runc run` / `runsc run`.

Per runtime, N sequential sandboxes: `Sandbox.create(template="base")` +
`commands.run("echo hi")`, timed until the output is back (kill is not timed). Baseline, same
run: a fresh bundle of the same rootfs (overlay of `base`'s layers, spec from
`declawd.runtime.build_spec`, no netns) running `/bin/echo hi`, timed until "hi" is read.
The two alternate, one of each per round, with a pause before each.
Also the server's own create time ("created <id> in N ms" in its log).

Warm rows (runc): the server keeps a warm pool of python sandboxes (harness.WARM_POOL);
each create asks for python with a timeout, metadata, envs and a domain policy (what a
claim binds), after the pool is full again (a claim's refill is a cold create in the
background: on 2 cores it would compete with the next claim). Each create's log line says
whether it was warm; only warm ones are counted, and the misses are reported.
Usage: .venv/bin/python bench/bench_create.py [--quick]
"""

from __future__ import annotations

import asyncio
import time

import httpx
from bare import BareBundle, remove_root, template_layers
from common import Report, header, summary
from declaw import ALL_TRAFFIC, NetworkPolicy, Sandbox, SecurityPolicy
from harness import TEMPLATES_DIR, Server, run_standalone

from declawd.runtime import RuntimeName

RUNTIMES: tuple[RuntimeName, ...] = ("runc", "runsc")
# Pause between a create and a baseline run (the machine is shared and noisy: measured in
# alternation, a drift shows on both sides instead of in the ratio).
SETTLE_S = 0.25


def sdk_once(runtime: str) -> tuple[float, float, str]:
    """(ms to create, ms to first output, sandbox id); the sandbox is killed untimed."""
    t0 = time.perf_counter()
    s = Sandbox.create(template="base", timeout=120, metadata={"declaw.runtime": runtime})
    t1 = time.perf_counter()
    try:
        r = s.commands.run("echo hi")
        t2 = time.perf_counter()
        if r.stdout.strip() != "hi":
            raise RuntimeError(f"unexpected output {r.stdout!r} (exit {r.exit_code})")
    finally:
        s.kill(wait=True)
    return (t1 - t0) * 1000, (t2 - t0) * 1000, s.sandbox_id


WARM_POLICY = SecurityPolicy(
    network=NetworkPolicy(allow_out=["api.openai.com"], deny_out=[ALL_TRAFFIC])
)


def pool_full(server: Server, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pools = httpx.get(
            server.url + "/pools", headers={"X-API-Key": server.key}, timeout=10
        ).json()["pools"]
        if pools and all(p["ready"] >= p["target"] for p in pools):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the warm pool did not fill within {timeout:.0f} s: {pools}")


def warm_once(server: Server) -> tuple[float, float, str]:
    """(ms to create, ms to first output, sandbox id) of a create the pool can serve."""
    pool_full(server)
    t0 = time.perf_counter()
    s = Sandbox.create(
        template="python",
        timeout=120,
        metadata={"bench": "warm"},
        envs={"BENCH": "1"},
        security=WARM_POLICY,
    )
    t1 = time.perf_counter()
    try:
        r = s.commands.run("echo hi")
        t2 = time.perf_counter()
        if r.stdout.strip() != "hi":
            raise RuntimeError(f"unexpected output {r.stdout!r} (exit {r.exit_code})")
    finally:
        s.kill(wait=True)
    return (t1 - t0) * 1000, (t2 - t0) * 1000, s.sandbox_id


def warm_rows(server: Server, report: Report, n: int, bare: list[float]) -> None:
    warm_once(server)  # warm-up
    creates, firsts, ids = [], [], []
    for _ in range(n):
        c, f, sid = warm_once(server)
        creates.append(c)
        firsts.append(f)
        ids.append(sid)
    warm = server.server_starts()
    hits = [i for i, sid in enumerate(ids) if warm.get(sid) == "warm"]
    report.params["warm_misses"] = n - len(hits)
    if not hits:
        raise RuntimeError("no create was served by the warm pool")
    report.add_pcts(
        "runc warm: SDK create() ms", [creates[i] for i in hits], bare, "ms", "bare runc run"
    )
    report.add_pcts(
        "runc warm: SDK create+run(echo hi) ms",
        [firsts[i] for i in hits],
        bare,
        "ms",
        "bare runc run",
    )
    logged = server.server_create_ms()
    server_side = [logged[ids[i]] for i in hits if ids[i] in logged]
    if server_side:
        report.add_pcts(
            "runc warm: server-side create ms", server_side, bare, "ms", "bare runc run"
        )
    print(
        f"  runc warm: {len(hits)} of {n} creates served by the pool; SDK create() p50 "
        f"{summary([creates[i] for i in hits])['p50']:.1f} ms",
        flush=True,
    )


async def bare_runs(server: Server, runtime: str, n: int) -> list[float]:
    layers = template_layers(TEMPLATES_DIR, "base")
    root = server.state_dir / "bare"
    parent = f"{server.instance}-bare"
    out: list[float] = []
    try:
        for _ in range(n):
            async with BareBundle(root, layers, runtime, ["/bin/echo", "hi"], parent) as b:
                out.append(await b.first_line_ms("hi"))
    finally:
        remove_root(root, parent)
    return out


def main(server: Server, quick: bool) -> Report:
    n = 5 if quick else 30
    report = Report("create", params={"n": n, "template": "base", "runtimes": list(RUNTIMES)})
    header(f"1. create -> first output ({n} sequential sandboxes per runtime)")
    for runtime in RUNTIMES:
        sdk_once(runtime)  # warm-up: page cache, first-use of the runtime binary
        asyncio.run(bare_runs(server, runtime, 1))
        creates, firsts, ids, bare = [], [], [], []
        for _ in range(n):
            # Alternating, each after the other's background work is done (a kill's teardown,
            # a ready disk made again): both see the machine as it is at that moment.
            time.sleep(SETTLE_S)
            c, f, sid = sdk_once(runtime)
            creates.append(c)
            firsts.append(f)
            ids.append(sid)
            time.sleep(SETTLE_S)
            bare.extend(asyncio.run(bare_runs(server, runtime, 1)))
        report.add_pcts(
            f"{runtime}: SDK create+run(echo hi) ms", firsts, bare, "ms", f"bare {runtime} run"
        )
        logged = server.server_create_ms()
        server_side = [logged[i] for i in ids if i in logged]
        report.samples[f"{runtime}: SDK create() ms"] = summary(creates)
        if server_side:
            report.samples[f"{runtime}: server-side create ms"] = summary(server_side)
            report.add_pcts(
                f"{runtime}: server-side create ms", server_side, bare, "ms", f"bare {runtime} run"
            )
        split = f"  {runtime}: SDK create() p50 {summary(creates)['p50']:.0f} ms"
        if server_side:
            split += f", of which server-side {summary(server_side)['p50']:.0f} ms"
        print(split + "; the rest of the first-output time is commands.run", flush=True)
        if runtime == "runc":
            warm_rows(server, report, n, bare)
    report.write()
    return report


if __name__ == "__main__":
    run_standalone(main)
