"""The builder: turns a BuildPlan into cached layers, one step at a time.

Layer 0 comes from mmdebstrap on the host; every later step runs as root in a build
container of the chosen OCI runtime, in the HOST network namespace (apt and pip must reach
the package registries; see docs/templates.md), over an overlay of the layers below plus a
fresh upper dir that becomes the new layer. Invariant: a failed step leaves no mount, no
container and no partial layer, and raises `StepFailed` with the step, exit code and log tail.
With a shared blob store (a `LayerDistributor`), a step whose layer another host published
is fetched rather than built, and every layer built here is published right after its commit.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from declawd.host import stream
from declawd.runtime import Limits, Mount, OciRuntime, build_spec, mount_overlay, unmount
from declawd.templates.distribute import LayerDistributor
from declawd.templates.layers import LayerCache, LayerInfo
from declawd.templates.plan import (
    CONTEXT_MOUNT,
    HOST_CA_ENV,
    HOST_CA_MOUNT,
    BuildPlan,
    Step,
    step_command,
)

Log = Callable[[str], None]
# on_step(index, total, label, state) with state "start" | "cached" | "done"
OnStep = Callable[[int, int, str, str], None]
BUILD_MEMORY_MB = 4096
BUILD_PIDS = 4096
TAIL_LINES = 20
_RESOLV_CONF = Path("/etc/resolv.conf")
_HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


class StepFailed(Exception):
    def __init__(self, index: int, total: int, step: Step, exit_code: int, tail: list[str]) -> None:
        self.index, self.total, self.step, self.exit_code, self.tail = (
            index,
            total,
            step,
            exit_code,
            tail,
        )
        super().__init__(f"step {index}/{total} ({step.label}) failed with exit code {exit_code}")


@dataclass
class BuildResult:
    keys: list[str]
    layer_paths: list[Path]
    size_bytes: int
    seconds: float
    cached_steps: int


class _Tail:
    """Forwards lines to the build log and remembers the last few for error reports."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.log(line)
        self.lines.append(line)
        del self.lines[:-TAIL_LINES]


class Builder:
    # One lock per layer key across every Builder in this process: two builds needing the
    # same layer build it once.
    _locks: dict[str, asyncio.Lock] = {}

    def __init__(
        self,
        templates_path: Path,
        run_dir: Path,
        *,
        runtime_name: str = "runc",
        instance: str = "declawd",
        contexts_dir: Path | None = None,
    ) -> None:
        self.cache = LayerCache(templates_path)
        # Set (by TemplateService) when the blob store is shared: fetch, and publish.
        self.distributor: LayerDistributor | None = None
        self.runtime = OciRuntime(runtime_name, run_dir / runtime_name)  # type: ignore[arg-type]
        self.runtime_name = runtime_name
        self.instance = instance
        self.contexts_dir = contexts_dir or templates_path / "contexts"

    async def build(self, plan: BuildPlan, log: Log, on_step: OnStep | None = None) -> BuildResult:
        start = time.monotonic()
        self.cache.sweep_stale()
        keys = plan.keys
        total = len(plan.steps)
        log(plan.base.note)
        cached = 0
        parent = ""
        for i, (step, key) in enumerate(zip(plan.steps, keys, strict=True), start=1):
            lock = self._locks.setdefault(key, asyncio.Lock())
            async with lock:
                if self.cache.exists(key):
                    cached += 1
                    log(f"step {i}/{total}: {step.label} [cached {key[:12]}]")
                    if on_step:
                        on_step(i, total, step.label, "cached")
                elif self.distributor is not None and await asyncio.to_thread(
                    self.distributor.published, key
                ):
                    await asyncio.to_thread(self.distributor.fetch, key)
                    cached += 1
                    log(f"step {i}/{total}: {step.label} [fetched {key[:12]} from the blob store]")
                    if on_step:
                        on_step(i, total, step.label, "cached")
                else:
                    log(f"step {i}/{total}: {step.label}")
                    if on_step:
                        on_step(i, total, step.label, "start")
                    info = await self._build_layer(i, total, step, key, parent, keys[: i - 1], log)
                    if self.distributor is not None:
                        await asyncio.to_thread(self.distributor.publish, key)
                    log(
                        f"step {i}/{total}: done in {info.build_seconds:.1f}s, "
                        f"layer {key[:12]} {info.size_bytes / 1e6:.1f} MB"
                    )
                    if on_step:
                        on_step(i, total, step.label, "done")
            parent = key
        size = sum(i.size_bytes for i in map(self.cache.info, keys) if i is not None)
        return BuildResult(
            keys=keys,
            layer_paths=[self.cache.fs(k) for k in keys],
            size_bytes=size,
            seconds=round(time.monotonic() - start, 3),
            cached_steps=cached,
        )

    async def _build_layer(
        self, index: int, total: int, step: Step, key: str, parent: str, below: list[str], log: Log
    ) -> LayerInfo:
        tail = _Tail(log)
        t0 = time.monotonic()
        with self.cache.staging(key) as tmp:
            if step.kind == "bootstrap":
                code = await self._bootstrap(step, tmp / "fs", tail)
            else:
                code = await self._run_in_container(step, key, tmp, below, tail)
            if code != 0:
                raise StepFailed(index, total, step, code, tail.lines)
            return self.cache.commit(tmp, key, parent, step.label, time.monotonic() - t0)

    async def _bootstrap(self, step: Step, target: Path, log: Log) -> int:
        c = step.content
        cmd = ["mmdebstrap", "--variant=minbase", "--mode=root", "--format=directory"]
        if c["packages"]:
            cmd.append("--include=" + ",".join(c["packages"]))
        cmd += [c["suite"], str(target), c["mirror"]]
        return await stream(*cmd, on_line=log)  # a cancelled build kills mmdebstrap

    async def _run_in_container(
        self, step: Step, key: str, tmp: Path, below: list[str], log: Log
    ) -> int:
        upper, work, rootfs = tmp / "fs", tmp / "work", tmp / "rootfs"
        for d in (upper, work, rootfs):
            d.mkdir()
        args, env = step_command(step)
        mounts: list[Mount] = []
        if step.network:
            mounts.append(Mount("/etc/resolv.conf", str(_RESOLV_CONF.resolve())))
            if _HOST_CA.is_file():
                mounts.append(Mount(HOST_CA_MOUNT, str(_HOST_CA.resolve())))
                env = [*env, *HOST_CA_ENV]
        if step.kind == "copy":
            ctx = self.contexts_dir / step.content["context"] / "files"
            if not ctx.is_dir():
                log(f"build context {step.content['context']} is gone")
                return 125
            mounts.append(Mount(CONTEXT_MOUNT, str(ctx)))
        suffix = f"{key[:12]}-{secrets.token_hex(3)}"
        container_id = f"{self.instance}-build-{suffix}"
        spec = build_spec(
            sandbox_id=f"build-{suffix}",
            rootfs=rootfs,
            hostname="declawd-build",
            args=args,
            env=env,
            netns_path=None,
            limits=Limits(
                memory_mb=BUILD_MEMORY_MB, cpu_count=float(os.cpu_count() or 1), pids=BUILD_PIDS
            ),
            mounts=mounts,
            cgroups_path=f"/{self.instance}/{container_id}",
            runtime=self.runtime_name,
        )
        (tmp / "config.json").write_text(json.dumps(spec))
        mount_overlay([self.cache.fs(k) for k in below], upper, work, rootfs)
        try:
            return await self.runtime.run_foreground(tmp, container_id, None, log=log)
        finally:
            unmount(rootfs)
