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
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

from declawd import metrics
from declawd.config import Settings
from declawd.egress.policy import EgressPolicy
from declawd.errors import Busy, Conflict, DeclawdError, NotFound
from declawd.node import create as creating
from declawd.node import inspection as inspecting
from declawd.node import pausing
from declawd.node import snapshots as snapshotting
from declawd.node.create import CreateRequest
from declawd.node.envd_client import EnvdClient
from declawd.node.metrics import MetricsSampler
from declawd.node.parts import NodeParts, build_parts
from declawd.node.pool import Resolve, WarmPools
from declawd.node.reaper import Reaper
from declawd.node.reconcile import reconcile
from declawd.node.release import release_and_record
from declawd.runtime import cgroups as cg
from declawd.runtime import dir_size
from declawd.store import SandboxRecord, SandboxState, Store, store_read
from declawd.store.nodes import LOST_PREFIX
from declawd.store.snapshots import SnapshotRecord
from declawd.templates.model import Template
from declawd.vault import bindings_for

log = logging.getLogger(__name__)

KILLABLE = (SandboxState.RUNNING, SandboxState.PAUSED)
UPSTREAM_FILE = "upstream"
DISK_WALK_EVERY_S = 30.0  # the metrics series' disk figure is at most this old


class Need(enum.Enum):
    """What a route needs of the sandbox it names."""

    RECORD = "record"  # any sandbox that ever ran, killed ones too (audit)
    LIVE = "live"  # one users can see: creating, running or paused
    RUNNING = "running"  # one that can run commands and serve files now


def check_need(rec: SandboxRecord | None, sandbox_id: str, need: Need) -> SandboxRecord:
    """The record if a caller that `need`s it may act on it, else the error it gets: the one
    definition, shared by `Node.lookup` and cluster mode's `RemoteNode.lookup`. A paused
    sandbox passes `RUNNING` only with auto-resume (the caller resumes it first)."""
    if rec is None or (rec.started_at is None and rec.state is not SandboxState.CREATING):
        raise NotFound(f"sandbox '{sandbox_id}' not found")
    if need is Need.RECORD:
        return rec
    if not rec.is_live:
        if rec.error and rec.error.startswith(LOST_PREFIX):
            raise NotFound(f"sandbox '{sandbox_id}' not found: {rec.error}")
        raise NotFound(f"sandbox '{sandbox_id}' not found")
    if need is Need.RUNNING:
        if rec.state is SandboxState.CREATING:
            raise Busy(f"sandbox '{sandbox_id}' is still being created")
        if rec.state is SandboxState.PAUSED and not rec.auto_resume:
            raise Conflict(
                f"sandbox is paused: '{sandbox_id}' (resume it, or create it with"
                " lifecycle auto_resume)",
                code="sandbox_paused",
            )
    return rec


class Node:
    def __init__(self, parts: NodeParts) -> None:
        self.parts = parts
        self.settings = parts.settings
        self.store = parts.store
        self._reaper = Reaper(
            parts, self._kill_with_error, self.background, pause=self._timed_pause
        )
        self._reaper_task: asyncio.Task[None] | None = None
        self._periodic_task: asyncio.Task[None] | None = None
        # Disk use is a walk of each sandbox's upper dir: every DISK_WALK_EVERY_S in the
        # series (with 500 sandboxes, a walk of every one each 5 s was a third of the
        # sampler's time); cgroup figures every interval; a live read walks at once.
        self._metrics = MetricsSampler(
            parts,
            self.settings.metrics_interval_s,
            functools.partial(self.metrics, disk_max_age_s=DISK_WALK_EVERY_S),
        )
        self._background: set[asyncio.Task[Any]] = set()
        # The pause snapshot being written of each paused sandbox (a resume cancels it).
        self._pause_snapshots: dict[str, asyncio.Task[Any]] = {}
        # Policy, security and inspection changes: one at a time, so two of them never
        # interleave their store, nft and gateway writes.
        self._policy_lock = asyncio.Lock()
        self.pools: WarmPools | None = None

    @classmethod
    def on_this_machine(cls, settings: Settings, store: Store) -> Node:
        return cls(build_parts(settings, store))

    # start / stop -----------------------------------------------------------------
    async def start(
        self, *, templates: Resolve | None = None, builtins: Sequence[str] = ()
    ) -> None:
        """Reconcile, start the gateway daemon and the background work; with `templates`
        (alias → ready template, or None) the warm pools the settings ask for start
        filling (`builtins` are the names `auto` pools)."""
        parts = self.parts
        await asyncio.to_thread(parts.host.prepare_node)
        self.settings.gateway_dir.mkdir(parents=True, exist_ok=True)
        # `declawd down` reads which upstream the gateway was made with, to undo exactly it.
        (self.settings.gateway_dir / UPSTREAM_FILE).write_text(parts.upstream.name + "\n")
        await parts.networks.ensure_gateway()
        parts.daemon.load()
        keep = await reconcile(parts)
        await inspecting.resync(parts, keep)
        await snapshotting.recover(parts)
        await parts.daemon.start()
        parts.daemon.supervise()
        self._reaper_task = asyncio.get_running_loop().create_task(self._reaper.run())
        if self.settings.snapshot_interval_s > 0:
            periodic = snapshotting.PeriodicSnapshots(parts, self.settings.snapshot_interval_s)
            self._periodic_task = asyncio.get_running_loop().create_task(periodic.run())
        self._metrics.start()
        # Always made, also with pools off: it kills what a previous run's pools left.
        self.pools = WarmPools.from_settings(parts, builtins, self._kill_parked, templates)
        await self.pools.start()

    async def close(self) -> None:
        """Stop background work; sandboxes and the gateway daemon keep running."""
        if self.pools is not None:
            await self.pools.stop()
        if self._reaper_task is not None:
            self._reaper_task.cancel()
            await asyncio.gather(self._reaper_task, return_exceptions=True)
        if self._periodic_task is not None:
            self._periodic_task.cancel()
            await asyncio.gather(self._periodic_task, return_exceptions=True)
        await self._metrics.stop()
        await self.parts.daemon.close()
        for t in list(self._background):
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.parts.sessions.close()
        await asyncio.to_thread(self.parts.host.close)

    def background(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` after the request that started it has been answered."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # lookup -----------------------------------------------------------------------
    async def lookup(self, team_id: str, sandbox_id: str, need: Need = Need.LIVE) -> SandboxRecord:
        rec = await store_read(self.store, self.store.get_sandbox, sandbox_id, team_id)
        found = check_need(rec, sandbox_id, need)
        if need is Need.RUNNING and found.state is SandboxState.PAUSED:
            return await self.resume(found, at_least_s=pausing.AUTO_RESUME_MIN_S)
        return found

    # lifecycle --------------------------------------------------------------------
    async def create(self, req: CreateRequest) -> SandboxRecord:
        """A sandbox as `req` asks: a warm pool's, bound to the request, when one is ready
        for its template and runtime; else made now (a cold create)."""
        began = time.monotonic()
        start = "warm"
        rec = await self.pools.claim(req) if self.pools is not None else None
        if rec is None:
            start = "cold"
            rec = await creating.create(self.parts, req)
        ms = (time.monotonic() - began) * 1000
        log.info("created %s in %.0f ms (%s, %s)", rec.sandbox_id, ms, start, rec.runtime)
        return rec

    async def _kill_parked(self, sandbox_id: str) -> bool:
        return await self._kill(sandbox_id, None, wait=True)

    def pool_status(self) -> list[dict[str, Any]]:
        """The warm pools: per template and runtime, target and ready sizes."""
        return self.pools.status() if self.pools is not None else []

    def pool_summary(self) -> dict[str, Any]:
        """The pools, and what their sandboxes use against the budget (blocking)."""
        pools = self.pools
        if pools is None:
            return {"pools": [], "parked": 0, "memory_bytes": 0, "budget_bytes": 0}
        return {
            "pools": pools.status(),
            "parked": pools.parked,
            "memory_bytes": pools.memory_bytes(),
            "budget_bytes": pools.budget_bytes,
        }

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
        if not before.pooled:
            metrics.sandbox_killed(rec.runtime, _kill_reason(before, error, fields["killed_at"]))
        await self._cancel_pause_snapshot(sandbox_id)
        await self.parts.sessions.drop(sandbox_id)
        self.parts.locks.forget(sandbox_id)
        if wait:
            await release_and_record(self.parts, rec)
        else:
            self.background(release_and_record(self.parts, rec))
        return True

    async def pause(self, rec: SandboxRecord) -> SandboxRecord:
        """Freeze a running sandbox (no CPU; processes, files, PTYs and rules kept); its
        timeout clock stops until it is resumed. Returns once it is frozen; its pause
        snapshot is written in the background afterwards."""
        paused = await pausing.pause(self.parts, rec)
        task = self.background(self._pause_snapshot(paused))
        self._pause_snapshots[rec.sandbox_id] = task
        task.add_done_callback(lambda _t: self._forget_pause_snapshot(rec.sandbox_id, task))
        return paused

    async def _pause_snapshot(self, rec: SandboxRecord) -> None:
        try:
            await snapshotting.capture(self.parts, rec, "pause", already_frozen=True)
        except DeclawdError as exc:  # e.g. another snapshot still being written
            log.warning("pause snapshot of %s not taken: %s", rec.sandbox_id, exc.message)

    def _forget_pause_snapshot(self, sandbox_id: str, task: asyncio.Task[Any]) -> None:
        if self._pause_snapshots.get(sandbox_id) is task:
            del self._pause_snapshots[sandbox_id]

    async def _cancel_pause_snapshot(self, sandbox_id: str) -> None:
        task = self._pause_snapshots.pop(sandbox_id, None)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def resume(self, rec: SandboxRecord, *, at_least_s: float = 0.0) -> SandboxRecord:
        """Thaw a paused sandbox with the time it had left (at least `at_least_s`); a pause
        snapshot still being written is cancelled (the sandbox is about to change)."""
        await self._cancel_pause_snapshot(rec.sandbox_id)
        return await pausing.resume(self.parts, rec, at_least_s=at_least_s)

    async def snapshot(
        self, rec: SandboxRecord, source: str = "manual"
    ) -> snapshotting.SnapshotRecord:
        """Capture the filesystem of a running (frozen for the copy) or paused sandbox."""
        return await snapshotting.take(self.parts, rec, source)

    async def delete_snapshot(self, rec: SandboxRecord, snapshot_id: str) -> bool:
        """Delete one of the sandbox's snapshots; False when it has none of that id."""
        return await snapshotting.delete(self.parts, rec, snapshot_id)

    async def _timed_pause(self, sandbox_id: str) -> None:
        """The reaper's action at the deadline of a sandbox whose lifecycle says pause."""
        rec = await asyncio.to_thread(self.store.get_sandbox, sandbox_id)
        if rec is not None and rec.state is SandboxState.RUNNING:
            await self.pause(rec)

    async def restore(
        self, rec: SandboxRecord, snap: SnapshotRecord, template: Template
    ) -> SandboxRecord:
        """Bring a killed sandbox back under its own id from one of its snapshots: the
        snapshot's template, policy (never a wider one than it had), envs, metadata,
        lifecycle and timeout, and its files exactly as captured (read from the blob store,
        so in a cluster with a shared one any node restores it; the record then names this
        node and a slot of its own)."""
        from declawd.node.snapshots import materialize

        if rec.is_live:
            raise Conflict(
                f"sandbox '{rec.sandbox_id}' is {rec.state.value}; restore needs a killed sandbox"
            )
        if snap.sandbox_id != rec.sandbox_id or not snap.is_ready:
            raise NotFound(f"snapshot '{snap.snapshot_id}' not found")
        settings, blobs = self.settings, self.parts.blobs
        if await asyncio.to_thread(creating.lost_elsewhere, self.parts, rec):
            # Its old node died: a snapshot it was writing then stays `writing` for good.
            await asyncio.to_thread(snapshotting.interrupt_writing, self.parts, rec.sandbox_id)
        req = CreateRequest(
            team_id=rec.team_id,
            template=template,
            timeout=snap.timeout or settings.default_timeout,
            metadata=dict(snap.metadata),
            envs=dict(snap.envs),
            policy=EgressPolicy.from_wire(dict(snap.network)),
            security=snap.security,
            runtime=snap.runtime,
            lifecycle=dict(snap.lifecycle),
            sandbox_id=rec.sandbox_id,
            prefill=lambda upper: materialize(blobs, snap, upper),
            # Its own secrets again, with their scopes as they are now (a new CA, though).
            vault=await asyncio.to_thread(bindings_for, self.store, rec.sandbox_id),
        )
        self.parts.faults.point("restore.before_create")
        return await creating.create(self.parts, req)

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
        async with self._policy_lock:
            inspection = await asyncio.to_thread(inspecting.stored_inspection, self.parts, rec)
            await asyncio.to_thread(
                self.store.update_sandbox, rec.sandbox_id, network=policy.to_wire()
            )
            await inspecting.apply(self.parts, rec, policy, inspection, network_changed=True)

    async def update_security(
        self,
        team_id: str,
        sandbox_id: str,
        security: Mapping[str, Any],
        *,
        network: EgressPolicy | None = None,
    ) -> SandboxRecord:
        """Replace the sections of the sandbox's SecurityPolicy that `security` carries (the
        SDK's `to_dict()` shape, validated by the caller) and apply it live. With a
        `network` section (or `network` given, already parsed) the egress policy changes
        exactly as with `update_policy`; without, it stays as it is."""
        rec = await self.lookup(team_id, sandbox_id, Need.RUNNING)
        if rec.slot is None or rec.address is None:
            raise Busy(f"sandbox '{sandbox_id}' has no network yet")
        raw_network = security.get("network")
        if network is None and isinstance(raw_network, Mapping):
            network = EgressPolicy.parse(
                raw_network.get("allow_out") or [], raw_network.get("deny_out") or []
            )
        merged = {**(rec.security or {}), **security}
        if network is not None:
            merged["network"] = network.to_wire()
        async with self._policy_lock:
            # Computed before anything is stored: a section that does not parse changes nothing.
            inspection = await asyncio.to_thread(
                inspecting.stored_inspection, self.parts, rec, merged
            )
            policy = network or EgressPolicy.from_wire(dict(rec.network))
            fields: dict[str, Any] = {"security": merged}
            if network is not None:
                fields["network"] = network.to_wire()
            await asyncio.to_thread(self.store.update_sandbox, sandbox_id, **fields)
            await inspecting.apply(
                self.parts, rec, policy, inspection, network_changed=network is not None
            )
        return await asyncio.to_thread(self._get, sandbox_id)

    async def refresh_inspection(self, sandbox_ids: Sequence[str]) -> None:
        """Recompute and apply the inspection of these sandboxes (their vault secrets' scopes
        changed, or a secret was deleted); ids that are not live with a network are skipped.
        Every sandbox is tried; the first failure is raised afterwards."""
        failures: list[tuple[str, Exception]] = []
        for sandbox_id in dict.fromkeys(sandbox_ids):
            try:
                async with self._policy_lock:
                    rec = await asyncio.to_thread(self.store.get_sandbox, sandbox_id)
                    if rec is None or not rec.is_live or rec.slot is None:
                        continue
                    if rec.state is SandboxState.CREATING:
                        continue  # its create reads the bindings once they are attached
                    inspection = await asyncio.to_thread(
                        inspecting.stored_inspection, self.parts, rec
                    )
                    policy = EgressPolicy.from_wire(dict(rec.network))
                    await inspecting.apply(
                        self.parts, rec, policy, inspection, network_changed=False
                    )
            except Exception as exc:
                log.error("inspection of %s not refreshed: %s", sandbox_id, exc)
                failures.append((sandbox_id, exc))
        if failures:
            raise failures[0][1]

    def _get(self, sandbox_id: str) -> SandboxRecord:
        rec = self.store.get_sandbox(sandbox_id)
        if rec is None:
            raise NotFound(f"sandbox '{sandbox_id}' not found")
        return rec

    # sessions ---------------------------------------------------------------------
    def envd(self, rec: SandboxRecord) -> EnvdClient:
        return self.parts.sessions.client(rec.sandbox_id)

    def envs(self, rec: SandboxRecord) -> dict[str, str]:
        """Environment every process started in the sandbox gets."""
        return creating.envs_of(self.parts, rec)

    def netns_of(self, rec: SandboxRecord) -> str:
        """The nsfs path of the sandbox's network namespace (no I/O): where the ports route
        opens its connections, so servers bound to the sandbox's loopback are reachable."""
        if rec.slot is None:
            raise Busy(f"sandbox '{rec.sandbox_id}' has no network yet")
        return self.parts.networks.plan(rec.sandbox_id, rec.slot).netns_path

    async def connect_port(
        self, rec: SandboxRecord, port: int, connect: Callable[..., Awaitable[Any]]
    ) -> Any:
        """The ports route's connection to `port` inside the sandbox: `connect`
        (ports/upstream.py `connect_in_netns`) from the sandbox's network namespace."""
        from declawd.ports.upstream import candidates

        what = f"sandbox {rec.sandbox_id}"
        return await connect(self.netns_of(rec), port, candidates(rec.address), what=what)

    def pty_since(self, rec: SandboxRecord, pid: int) -> int:
        return self.parts.sessions.pty_since(rec.sandbox_id, pid)

    async def is_running(self, rec: SandboxRecord) -> bool:
        if rec.state is not SandboxState.RUNNING:
            return False
        runtime = self.parts.runtimes[rec.runtime]
        return await runtime.state(rec.sandbox_id) == "running"

    def metrics(self, rec: SandboxRecord, *, disk_max_age_s: float = 0.0) -> dict[str, float]:
        """CPU %, memory and disk use now (blocking: reads cgroup files and walks the upper
        dir; the sampler lets the walk's figure be up to `disk_max_age_s` old)."""
        res = self.parts.host.resources(rec.sandbox_id)
        stats = cg.read_stats(res.cgroups_path)
        disk = self.parts.sessions.disk_bytes(
            rec.sandbox_id, lambda: dir_size(res.upper), disk_max_age_s
        )
        return {
            "cpu_usage_percent": self.parts.sessions.cpu_percent(
                rec.sandbox_id, stats.cpu_usage_ns, rec.cpu_count
            ),
            "memory_usage_mb": round(stats.memory_bytes / 2**20, 2),
            "disk_usage_mb": round(disk / 2**20, 2),
        }

    # operations -------------------------------------------------------------------
    async def gateway_healthy(self) -> bool:
        return await self.parts.daemon.ping()

    @property
    def gateway_restarts(self) -> int:
        return self.parts.daemon.restarts

    def gateway_stats(self) -> dict[str, Any] | None:
        """The gateway daemon's counters, or None when it does not answer (blocking)."""
        return self.parts.daemon.stats()

    async def destroy_all(self) -> int:
        """Kill every sandbox and remove the gateway: `declawd down`, and test teardown.
        Warm pools stop first and are drained with the rest."""
        if self.pools is not None:
            await self.pools.stop()
        count = 0
        for rec in await asyncio.to_thread(self.store.list_live_sandboxes, self.settings.node_id):
            if await self._kill(rec.sandbox_id, None, wait=True) and not rec.pooled:
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
        await asyncio.to_thread(self.parts.host.unpin)
        return count


def _kill_reason(before: SandboxRecord, error: str | None, at: float) -> str:
    """The metrics' reason of a kill: an error (the reaper found it dead), its timeout (the
    reaper kills at `end_at`, with no error), or a request."""
    if error:
        return "error"
    running = before.state is SandboxState.RUNNING
    if running and before.end_at is not None and before.end_at <= at:
        return "timeout"
    return "requested"
