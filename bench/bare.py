"""Baseline containers: a bare OCI bundle of the `base` template, run by runc/runsc directly.

No server, no envd, no network namespace: an overlay of the template's layers, the spec
`declawd.runtime.build_spec` makes (same capabilities, seccomp, cgroup limits), and the
runtime binary. `BareBundle` is a context manager; its exit kills the container, unmounts
the overlay and removes the cgroup and the bundle dir, also after a failure halfway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import time
from pathlib import Path
from types import TracebackType

from declawd.runtime import (
    Limits,
    OciRuntime,
    RuntimeName,
    build_spec,
    mount_overlay,
    remove_cgroup,
    unmount,
)
from declawd.templates.catalog import catalog_plan
from declawd.templates.layers import LayerCache

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def template_layers(templates_dir: Path, name: str = "base") -> list[Path]:
    """The built-in template's layer dirs (lowest first), as the template store resolves them."""
    cache = LayerCache(templates_dir)
    keys = catalog_plan(name).keys
    missing = [k for k in keys if not cache.exists(k)]
    if missing:
        raise RuntimeError(f"template {name!r} is not built (run `make templates`): {missing}")
    return [cache.fs(k) for k in keys]


class BareBundle:
    """One fresh bundle: overlay rootfs + config.json, run with `runtime` in the host netns."""

    def __init__(
        self,
        work_root: Path,
        layers: list[Path],
        runtime: RuntimeName,
        args: list[str],
        cgroup_parent: str,
    ) -> None:
        self.id = "bare-" + secrets.token_hex(6)
        self.dir = work_root / self.id
        self.layers = layers
        self.args = args
        self.cgroups_path = f"/{cgroup_parent}/{self.id}"
        self.runtime = OciRuntime(runtime, work_root / "run" / runtime)

    @property
    def rootfs(self) -> Path:
        return self.dir / "rootfs"

    def prepare(self) -> None:
        for sub in ("upper", "work", "rootfs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        mount_overlay(self.layers, self.dir / "upper", self.dir / "work", self.rootfs)
        spec = build_spec(
            sandbox_id=self.id,
            rootfs=self.rootfs,
            hostname=self.id,
            args=self.args,
            env=[PATH_ENV],
            netns_path=None,
            limits=Limits(memory_mb=512, cpu_count=1.0, pids=256),
            mounts=[],
            cgroups_path=self.cgroups_path,
            runtime=self.runtime.name,
        )
        (self.dir / "config.json").write_text(json.dumps(spec))

    async def first_line_ms(self, expect: str) -> float:
        """Prepare the bundle and run it; ms until `expect` appears on its stdout."""
        started = time.perf_counter()
        seen: list[float] = []
        lines: list[str] = []

        def on_line(line: str) -> None:
            lines.append(line)
            if line.strip() == expect and not seen:
                seen.append(time.perf_counter())

        await asyncio.to_thread(self.prepare)
        code = await self.runtime.run_foreground(self.dir, self.id, None, log=on_line)
        if not seen:
            raise RuntimeError(f"bare {self.runtime.name} run: exit {code}, output {lines[-5:]}")
        return (seen[0] - started) * 1000

    async def start_detached(self) -> None:
        await asyncio.to_thread(self.prepare)
        await self.runtime.run_detached(self.dir, self.id, None, log_path=self.dir / "out.log")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.runtime.kill(self.id)
        for attempt in range(20):
            try:
                unmount(self.rootfs)
                break
            except OSError:
                # runsc's gofer may still hold the rootfs for a moment after delete.
                await asyncio.sleep(0.1 * (attempt + 1))
        with contextlib.suppress(Exception):
            remove_cgroup(self.cgroups_path)
        shutil.rmtree(self.dir, ignore_errors=True)

    async def __aenter__(self) -> BareBundle:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(self.close())


def remove_root(work_root: Path, cgroup_parent: str) -> None:
    """Drop what every bundle shared: the runtimes' state roots and the parent cgroup."""
    with contextlib.suppress(Exception):
        remove_cgroup(f"/{cgroup_parent}")
    shutil.rmtree(work_root, ignore_errors=True)
