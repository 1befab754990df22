"""Warm pools: sandboxes made ahead of time, so a create only binds what the request asks.

Per (template, runtime) a pool keeps a number of sandboxes fully made (network, rootfs, CA
and trust bundle, container, envd answering) and parked: no egress at all (deny-all rules
and gateway entry), no deadline, owned by `POOL_TEAM`, which no API key belongs to. A
create that a pooled sandbox can serve (`CreateRequest.poolable`) claims one and binds it
(`bind`): its record becomes the team's with the request's template alias, timeout,
metadata, envs, lifecycle and security; its vault bindings are attached; its egress policy
and inspection are applied to the datapath and the gateway exactly as a live policy change
applies them; then the request's copied volumes and the template's start command run, as
in a cold create. Only then does the create answer: a claimed sandbox is indistinguishable
from a cold one (same id form, hostname = id, environment, policy, audit, files).

Refill runs in the background, one create at a time, bounded by a memory budget (what the
pooled sandboxes' cgroups use now). Pools follow their template's alias: when the alias
moves to another template (a rebuilt built-in), the old template's pool drains. Pooled
sandboxes outlive a server restart like any other and are adopted at the next start, or
killed when no pool wants them any more. Invariant: a pooled sandbox never runs anything
but envd before it is claimed, and nothing of a claim's request reaches it before the
claim has taken it out of the pool.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from declawd import metrics
from declawd.egress.policy import EgressPolicy
from declawd.errors import DeclawdError, Internal
from declawd.node import create as creating
from declawd.node import inspection as inspecting
from declawd.node.create import CreateRequest
from declawd.node.parts import NodeParts
from declawd.node.poolspec import (
    PoolTarget,
    auto_budget,
    mem_total_bytes,
    parse_pool_spec,
    targets_for,
)
from declawd.runtime import cgroups as cg
from declawd.store import SandboxRecord, SandboxState
from declawd.store.model import POOL_TEAM
from declawd.templates.model import Template
from declawd.vault import attach

log = logging.getLogger(__name__)

# What a pooled sandbox may reach: nothing.
NO_EGRESS = EgressPolicy.parse([], ["0.0.0.0/0"])
TICK_S = 2.0
# The refill after a claim waits this long: the claimer's first commands (its SDK call comes
# a few ms after the create answered) go before the refill's create, which on a small host
# takes every core for ~100 ms (measured: `echo` on a just-claimed sandbox 17-29 ms while the
# refill ran, 12 ms after it).
REFILL_GRACE_S = 0.2
# Assumed use of a sandbox not made yet, until one has been measured.
FIRST_ESTIMATE_BYTES = 32 << 20
# A pool whose creates keep failing waits this long (doubling up to the cap) before trying.
BACKOFF_S, BACKOFF_MAX_S = 5.0, 300.0

Resolve = Callable[[str], Template | None]
Kill = Callable[[str], Awaitable[bool]]


class PoolMiss(Exception):
    """The pooled sandbox taken cannot serve the claim (it died meanwhile); try another."""


@dataclass
class BindProgress:
    """How far a `bind` got: once the record changed hands, the sandbox is the claimer's."""

    changed_hands: bool = False


@dataclass(frozen=True)
class PoolKey:
    template_id: str
    runtime: str


@dataclass
class _Pool:
    key: PoolKey
    alias: str
    template: Template
    size: int
    ready: collections.deque[str] = field(default_factory=collections.deque)
    filling: int = 0
    failures: int = 0
    retry_at: float = 0.0


class WarmPools:
    """The node's warm pools. `claim` is called by the create path; `run` refills."""

    def __init__(
        self,
        parts: NodeParts,
        targets: Sequence[PoolTarget],
        *,
        budget_bytes: int,
        kill: Kill,
        resolve: Resolve | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.parts = parts
        self.targets = tuple(targets)
        self.budget_bytes = budget_bytes
        self._kill = kill
        self._resolve = resolve
        self._clock = clock
        self._pools: dict[PoolKey, _Pool] = {}
        # Adopted or made, and not claimed or killed yet (ready or not yet placed in a pool).
        self._parked: dict[str, PoolKey] = {}
        self._wake = asyncio.Event()
        self._claimed_at: float | None = None  # the last hit not yet followed by a refill
        self._task: asyncio.Task[None] | None = None
        self._estimate = FIRST_ESTIMATE_BYTES
        self.stopped = False

    @classmethod
    def from_settings(
        cls, parts: NodeParts, builtins: Sequence[str], kill: Kill, resolve: Resolve | None
    ) -> WarmPools:
        settings = parts.settings
        total = mem_total_bytes()
        spec = parse_pool_spec(settings.warm_pool)
        budget = settings.warm_pool_memory_mb << 20 or auto_budget(total)
        targets = targets_for(spec, tuple(builtins), total)
        return cls(parts, targets, budget_bytes=budget, kill=kill, resolve=resolve)

    # --- start / stop ---------------------------------------------------------------
    async def start(self) -> None:
        """Adopt the pooled sandboxes a previous run left (reconcile kept the whole ones),
        then refill in the background."""
        for rec in await asyncio.to_thread(
            self.parts.store.list_live_sandboxes, self.parts.settings.node_id
        ):
            if rec.pooled and rec.state is SandboxState.RUNNING:
                self._parked[rec.sandbox_id] = PoolKey(rec.template_id, rec.runtime)
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        """Stop refilling; pooled sandboxes stay (a restart adopts them)."""
        self.stopped = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def drain(self) -> int:
        """Stop refilling and kill every pooled sandbox; returns how many."""
        await self.stop()
        ids = list(self._parked)
        for pool in self._pools.values():
            pool.ready.clear()
        self._parked.clear()
        for sandbox_id in ids:
            await self._kill(sandbox_id)
        return len(ids)

    # --- claim --------------------------------------------------------------------------
    async def claim(self, req: CreateRequest) -> SandboxRecord | None:
        """A pooled sandbox bound to `req`, or None when no ready one fits (cold create)."""
        if not req.poolable or req.pooled:
            return None
        settings = self.parts.settings
        runtime = req.runtime or req.template.runtime or settings.runtime
        pool = self._pools.get(PoolKey(req.template.template_id, runtime))
        if pool is None:
            return None
        while pool.ready:
            sandbox_id = pool.ready.popleft()
            key = self._parked.pop(sandbox_id, pool.key)
            progress = BindProgress()
            try:
                rec = await bind(self.parts, sandbox_id, req, progress)
            except PoolMiss as exc:
                log.warning("warm pool: %s could not be claimed (%s); next", sandbox_id, exc)
                continue
            except BaseException:
                if not progress.changed_hands and not self.stopped:
                    # Nothing of the request reached it (bad input, the caller's prepare
                    # failed, a cancel): it stays parked, first in line.
                    self._parked[sandbox_id] = key
                    pool.ready.appendleft(sandbox_id)
                raise
            finally:
                self._wake.set()
            self._claimed_at = time.monotonic()
            metrics.pool_claimed(runtime, hit=True)
            return rec
        metrics.pool_claimed(runtime, hit=False)
        return None

    # --- refill -------------------------------------------------------------------------
    async def run(self) -> None:
        while not self.stopped:
            try:
                await self.tick()
            except Exception:
                log.exception("warm pool")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=TICK_S)
            self._wake.clear()
            if self._claimed_at is not None:
                wait = self._claimed_at + REFILL_GRACE_S - time.monotonic()
                self._claimed_at = None
                if wait > 0:
                    await asyncio.sleep(wait)

    async def tick(self) -> None:
        """Align the pools with their targets: drain what no target wants, drop sandboxes
        that died, then make sandboxes one at a time while any pool is short and the
        budget allows."""
        await self._align()
        while not self.stopped:
            pool = self._short_pool()
            if pool is None or not await asyncio.to_thread(self._fits):
                return
            await self._fill(pool)

    async def _align(self) -> None:
        wanted: dict[PoolKey, tuple[PoolTarget, Template]] = {}
        for target in self.targets:
            tpl = await asyncio.to_thread(self._template, target.alias)
            if tpl is None or (tpl.runtime and tpl.runtime != target.runtime):
                continue
            key = PoolKey(tpl.template_id, target.runtime)
            if key not in wanted or wanted[key][0].size < target.size:
                wanted[key] = (target, tpl)
        for key in [k for k in self._pools if k not in wanted]:
            gone = self._pools.pop(key)
            log.info("warm pool of %s (%s) drains", gone.alias, key.template_id)
            for sandbox_id in list(gone.ready):
                self._parked.pop(sandbox_id, None)
                await self._kill(sandbox_id)
            gone.ready.clear()
        for key, (target, tpl) in wanted.items():
            have = self._pools.get(key)
            if have is None:
                self._pools[key] = _Pool(key, target.alias, tpl, target.size)
            else:
                have.size, have.alias = target.size, target.alias
        # Adopted sandboxes join their pool, or go when none wants them (and extras go).
        for sandbox_id, key in list(self._parked.items()):
            home = self._pools.get(key)
            if home is not None and sandbox_id in home.ready:
                continue
            if home is not None and len(home.ready) < home.size:
                home.ready.append(sandbox_id)
                continue
            self._parked.pop(sandbox_id, None)
            await self._kill(sandbox_id)
        # Sandboxes that died while parked (the reaper killed them) leave their pool.
        live = {
            r.sandbox_id
            for r in await asyncio.to_thread(
                self.parts.store.list_live_sandboxes, self.parts.settings.node_id
            )
            if r.pooled and r.state is SandboxState.RUNNING
        }
        for pool in self._pools.values():
            for sandbox_id in [s for s in pool.ready if s not in live]:
                pool.ready.remove(sandbox_id)
                self._parked.pop(sandbox_id, None)

    def _template(self, alias: str) -> Template | None:
        if self._resolve is None:
            return None
        try:
            return self._resolve(alias)
        except DeclawdError:
            return None  # not built (yet), or being rebuilt: no pool for now

    def _short_pool(self) -> _Pool | None:
        now = self._clock()
        short = [
            p
            for p in self._pools.values()
            if len(p.ready) + p.filling < p.size and p.retry_at <= now
        ]
        if not short:
            return None
        # The emptiest first, so every template gets its first sandbox early.
        return min(short, key=lambda p: (len(p.ready) + p.filling, p.alias))

    def _fits(self) -> bool:
        """Would one more pooled sandbox stay within the budget? (blocking: reads cgroups)"""
        used = self.memory_bytes()
        count = len(self._parked) + sum(p.filling for p in self._pools.values())
        if count:
            self._estimate = max(FIRST_ESTIMATE_BYTES // 4, used // max(1, len(self._parked)))
        return used + self._estimate <= self.budget_bytes

    def memory_bytes(self) -> int:
        """What the parked sandboxes' cgroups use now (blocking)."""
        total = 0
        for sandbox_id in list(self._parked):
            try:
                res = self.parts.host.resources(sandbox_id)
                total += cg.read_stats(res.cgroups_path).memory_bytes
            except OSError:
                continue
        return total

    async def _fill(self, pool: _Pool) -> None:
        pool.filling += 1
        try:
            rec = await creating.create(
                self.parts,
                CreateRequest(
                    team_id=POOL_TEAM,
                    template=pool.template,
                    timeout=self.parts.settings.max_timeout,
                    policy=NO_EGRESS,
                    runtime=pool.key.runtime,
                    pooled=True,
                ),
            )
        except Exception as exc:
            pool.failures += 1
            delay = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (pool.failures - 1))
            pool.retry_at = self._clock() + delay
            log.error(
                "warm pool of %s: create failed (%s); next try in %.0f s", pool.alias, exc, delay
            )
            return
        finally:
            pool.filling -= 1
        pool.failures = 0
        if self.stopped or self._pools.get(pool.key) is not pool:
            await self._kill(rec.sandbox_id)  # drained or stopped while it was being made
            return
        self._parked[rec.sandbox_id] = pool.key
        pool.ready.append(rec.sandbox_id)

    # --- what it holds ------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        """One entry per pool: alias, template id, runtime, target and ready sizes."""
        return [
            {
                "template": p.alias,
                "template_id": p.key.template_id,
                "runtime": p.key.runtime,
                "target": p.size,
                "ready": len(p.ready),
                "filling": p.filling,
                "failures": p.failures,
            }
            for p in sorted(self._pools.values(), key=lambda p: (p.alias, p.key.runtime))
        ]

    @property
    def parked(self) -> int:
        return len(self._parked)


async def bind(
    parts: NodeParts,
    sandbox_id: str,
    req: CreateRequest,
    progress: BindProgress | None = None,
) -> SandboxRecord:
    """Make the pooled sandbox `sandbox_id` the one `req` asks for, and return it running.

    Order: the request's security is parsed before anything changes; the caller's
    `prepare` runs; the record becomes the team's (`creating`, as a cold create's is until
    it is done, so a crash in between leaves a sandbox the reconcile sweep kills); the vault
    bindings are attached; the datapath and the gateway get the request's policy; copied
    volumes and the start command run. A failure after the record changed hands is undone
    as a cold create's is (the sandbox is killed with the error); before, the sandbox is
    simply not used (`PoolMiss` when it died, the error otherwise)."""
    store = parts.store
    began = time.monotonic()
    parked = await asyncio.to_thread(store.get_sandbox, sandbox_id)
    if parked is None or not parked.pooled or parked.state is not SandboxState.RUNNING:
        raise PoolMiss(f"{sandbox_id} is no longer parked")
    now = time.time()
    rec = creating.new_record(parts, replace(req, sandbox_id=sandbox_id), now).replace(
        slot=parked.slot, address=parked.address
    )
    policy = req.policy or EgressPolicy.parse([], [])
    inspection = await asyncio.to_thread(
        inspecting.inspection_of, parts.settings, rec.security, req.vault, rec.envs
    )
    if req.prepare is not None:
        await req.prepare(sandbox_id)
    row = {
        "team_id": rec.team_id,
        "template_alias": rec.template_alias,
        "created_at": now,
        "timeout": rec.timeout,
        "end_at": rec.end_at,
        "metadata": dict(rec.metadata),
        "envs": dict(rec.envs),
        "network": dict(rec.network),
        "security": dict(rec.security) if rec.security is not None else None,
        "lifecycle": dict(rec.lifecycle),
    }
    before = await asyncio.to_thread(
        store.transition, sandbox_id, [SandboxState.RUNNING], SandboxState.CREATING, **row
    )
    if before is None or not before.pooled:
        raise PoolMiss(f"{sandbox_id} died before it was claimed")
    if progress is not None:
        progress.changed_hands = True
    parts.faults.point("pool.after_claim")
    try:
        if req.vault:
            await asyncio.to_thread(attach, store, sandbox_id, req.vault)
            # The secrets' scopes as they are now (see the cold create).
            inspection = await asyncio.to_thread(inspecting.stored_inspection, parts, rec)
        await inspecting.apply(
            parts, rec, policy, inspection, network_changed=True, had_no_egress=True
        )
        parts.faults.point("pool.after_policy")
        client = parts.sessions.client(sandbox_id)
        await creating.run_after_start(parts, rec, req, client)
    except BaseException as exc:
        metrics.sandbox_create_failed(rec.runtime, exc)
        await creating.undo(parts, rec, exc)
        if isinstance(exc, DeclawdError):
            raise
        if isinstance(exc, Exception):
            raise Internal(f"sandbox create failed: {exc}") from exc
        raise
    started = time.time()
    await asyncio.to_thread(
        store.update_sandbox, sandbox_id, state=SandboxState.RUNNING, started_at=started
    )
    metrics.sandbox_created(
        rec.runtime, creating.template_kind(req.template), time.monotonic() - began, start="warm"
    )
    return rec.replace(state=SandboxState.RUNNING, started_at=started)
