"""The node: sandbox lifecycle on one machine, behind one public interface for the API.

Routes find a sandbox with `lookup(team, id, need=...)`, which is the single definition of
what a caller may do with a sandbox in each state, and act on it through the methods below;
nothing outside this package touches runtimes, sessions or the gateway daemon. A kill is
visible the moment it is accepted (the record is `killed` before teardown starts), so
`GET`, `connect` and the list never show a sandbox that is going away.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Coroutine
from typing import Any

from declawd.config import Settings
from declawd.egress.policy import EgressPolicy
from declawd.errors import Busy, Conflict, NotFound
from declawd.node import create as creating
from declawd.node import pausing
from declawd.node.create import CreateRequest
from declawd.node.envd_client import EnvdClient
from declawd.node.metrics import MetricsSampler
from declawd.node.parts import NodeParts, build_parts
from declawd.node.reaper import Reaper
from declawd.node.reconcile import reconcile
from declawd.node.release import release_and_record
from declawd.runtime import cgroups as cg
from declawd.runtime import dir_size
from declawd.store import SandboxRecord, SandboxState, Store

log = logging.getLogger(__name__)

KILLABLE = (SandboxState.RUNNING, SandboxState.PAUSED)
UPSTREAM_FILE = "upstream"


class Need(enum.Enum):
    """What a route needs of the sandbox it names."""

    RECORD = "record"  # any sandbox that ever ran, killed ones too (audit)
    LIVE = "live"  # one users can see: creating, running or paused
    RUNNING = "running"  # one that can run commands and serve files now


class Node:
    def __init__(self, parts: NodeParts) -> None:
        self.parts = parts
        self.settings = parts.settings
        self.store = parts.store
        self._reaper = Reaper(
            parts, self._kill_with_error, self.background, pause=self._timed_pause
        )
        self._reaper_task: asyncio.Task[None] | None = None
        self._metrics = MetricsSampler(parts, self.settings.metrics_interval_s, self.metrics)
        self._background: set[asyncio.Task[Any]] = set()

    @classmethod
    def on_this_machine(cls, settings: Settings, store: Store) -> Node:
        return cls(build_parts(settings, store))

    # start / stop -----------------------------------------------------------------
    async def start(self) -> None:
        parts = self.parts
        await asyncio.to_thread(parts.host.prepare_node)
        self.settings.gateway_dir.mkdir(parents=True, exist_ok=True)
        # `declawd down` reads which upstream the gateway was made with, to undo exactly it.
        (self.settings.gateway_dir / UPSTREAM_FILE).write_text(parts.upstream.name + "\n")
        await parts.networks.ensure_gateway()
        parts.daemon.load()
        await reconcile(parts)
        await parts.daemon.start()
        parts.daemon.supervise()
        self._reaper_task = asyncio.get_running_loop().create_task(self._reaper.run())
        self._metrics.start()

    async def close(self) -> None:
        """Stop background work; sandboxes and the gateway daemon keep running."""
        if self._reaper_task is not None:
            self._reaper_task.cancel()
            await asyncio.gather(self._reaper_task, return_exceptions=True)
        await self._metrics.stop()
        await self.parts.daemon.close()
        for t in list(self._background):
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.parts.sessions.close()

    def background(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` after the request that started it has been answered."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # lookup -----------------------------------------------------------------------
    async def lookup(self, team_id: str, sandbox_id: str, need: Need = Need.LIVE) -> SandboxRecord:
        rec = await asyncio.to_thread(self.store.get_sandbox, sandbox_id, team_id)
        if rec is None or (rec.started_at is None and rec.state is not SandboxState.CREATING):
            raise NotFound(f"sandbox '{sandbox_id}' not found")
        if need is Need.RECORD:
            return rec
        if not rec.is_live:
            raise NotFound(f"sandbox '{sandbox_id}' not found")
        if need is Need.RUNNING:
            if rec.state is SandboxState.CREATING:
                raise Busy(f"sandbox '{sandbox_id}' is still being created")
            if rec.state is SandboxState.PAUSED:
                if rec.auto_resume:
                    return await self.resume(rec, at_least_s=pausing.AUTO_RESUME_MIN_S)
                raise Conflict(
                    f"sandbox is paused: '{sandbox_id}' (resume it, or create it with"
                    " lifecycle auto_resume)",
                    code="sandbox_paused",
                )
        return rec

    # lifecycle --------------------------------------------------------------------
    async def create(self, req: CreateRequest) -> SandboxRecord:
        return await creating.create(self.parts, req)

    async def kill(self, sandbox_id: str, *, wait: bool = True) -> bool:
        """Kill a running or paused sandbox: from this call on it is gone for users; its
        teardown runs now (`wait`) or in the background. False if it was not killable."""
        return await self._kill(sandbox_id, None, wait=wait)

    async def _kill_with_error(self, sandbox_id: str, error: str | None) -> bool:
        return await self._kill(sandbox_id, error, wait=True)

    async def _kill(self, sandbox_id: str, error: str | None, *, wait: bool) -> bool:
        fields: dict[str, Any] = {"killed_at": time.time()}
        if error:
            fields["error"] = error
        before = await asyncio.to_thread(
            self.store.transition, sandbox_id, KILLABLE, SandboxState.KILLED, **fields
        )
        if before is None:
            return False
        rec = before.replace(state=SandboxState.KILLED, **fields)
        await self.parts.sessions.drop(sandbox_id)
        if wait:
            await release_and_record(self.parts, rec)
        else:
            self.background(release_and_record(self.parts, rec))
        return True

    async def pause(self, rec: SandboxRecord) -> SandboxRecord:
        """Freeze a running sandbox (no CPU; processes, files, PTYs and rules kept); its
        timeout clock stops until it is resumed."""
        return await pausing.pause(self.parts, rec)

    async def resume(self, rec: SandboxRecord, *, at_least_s: float = 0.0) -> SandboxRecord:
        """Thaw a paused sandbox with the time it had left (at least `at_least_s`)."""
        return await pausing.resume(self.parts, rec, at_least_s=at_least_s)

    async def _timed_pause(self, sandbox_id: str) -> None:
        """The reaper's action at the deadline of a sandbox whose lifecycle says pause."""
        rec = await asyncio.to_thread(self.store.get_sandbox, sandbox_id)
        if rec is not None and rec.state is SandboxState.RUNNING:
            await self.pause(rec)

    async def set_timeout(self, rec: SandboxRecord, seconds: int) -> float:
        """The sandbox now ends `seconds` from now; returns the new end time. A paused sandbox
        gets `seconds` of running time once it is resumed."""
        if rec.state is SandboxState.PAUSED:
            await asyncio.to_thread(self.store.update_sandbox, rec.sandbox_id, remaining_s=seconds)
            return time.time() + seconds
        end_at = time.time() + seconds
        await asyncio.to_thread(self.store.update_sandbox, rec.sandbox_id, end_at=end_at)
        return end_at

    async def update_policy(self, rec: SandboxRecord, policy: EgressPolicy) -> None:
        """Replace the egress policy atomically; flows no longer allowed are cut."""
        if rec.slot is None or rec.address is None:
            raise Busy(f"sandbox '{rec.sandbox_id}' has no network yet")
        wire = policy.to_wire()
        await asyncio.to_thread(self.store.update_sandbox, rec.sandbox_id, network=wire)
        await self.parts.networks.update_policy(rec.sandbox_id, rec.slot, policy)
        await self.parts.daemon.upsert(rec.sandbox_id, rec.slot, rec.address, wire)

    # sessions ---------------------------------------------------------------------
    def envd(self, rec: SandboxRecord) -> EnvdClient:
        return self.parts.sessions.client(rec.sandbox_id)

    def envs(self, rec: SandboxRecord) -> dict[str, str]:
        """Environment every process started in the sandbox gets."""
        return creating.envs_of(self.parts, rec)

    def pty_since(self, rec: SandboxRecord, pid: int) -> int:
        return self.parts.sessions.pty_since(rec.sandbox_id, pid)

    async def is_running(self, rec: SandboxRecord) -> bool:
        if rec.state is not SandboxState.RUNNING:
            return False
        runtime = self.parts.runtimes[rec.runtime]
        return await runtime.state(rec.sandbox_id) == "running"

    def metrics(self, rec: SandboxRecord) -> dict[str, float]:
        """CPU %, memory and disk use now (blocking: reads cgroup files and the upper dir)."""
        res = self.parts.host.resources(rec.sandbox_id)
        stats = cg.read_stats(res.cgroups_path)
        return {
            "cpu_usage_percent": self.parts.sessions.cpu_percent(
                rec.sandbox_id, stats.cpu_usage_ns, rec.cpu_count
            ),
            "memory_usage_mb": round(stats.memory_bytes / 2**20, 2),
            "disk_usage_mb": round(dir_size(res.upper) / 2**20, 2),
        }

    # operations -------------------------------------------------------------------
    async def gateway_healthy(self) -> bool:
        return await self.parts.daemon.ping()

    @property
    def gateway_restarts(self) -> int:
        return self.parts.daemon.restarts

    async def destroy_all(self) -> int:
        """Kill every sandbox and remove the gateway: `declawd down`, and test teardown."""
        count = 0
        for rec in await asyncio.to_thread(self.store.list_live_sandboxes):
            if await self._kill(rec.sandbox_id, None, wait=True):
                count += 1
        self.parts.daemon.load()
        await reconcile(self.parts)
        await self.parts.daemon.stop()
        await self.parts.networks.teardown_gateway()
        # The per-instance parent cgroup (`/<instance>` in every hierarchy) held only the
        # sandboxes' cgroups; remove it once empty so `down` leaves nothing behind.
        try:
            cg.remove_cgroup(f"/{self.settings.instance}")
        except OSError as exc:
            log.warning("down: instance cgroup not removed: %s", exc)
        return count
