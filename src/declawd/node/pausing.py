"""Pause and resume: freeze a sandbox's processes, stop its timeout clock, and thaw it again.

A paused sandbox keeps its container (frozen by the cgroup freezer under runc, its tasks
stopped under runsc), its files, its network and its egress rules, untouched; only its CPU
stops. The record says `paused` before the freeze starts and `running` only after the thaw
finished, and the reconcile sweep makes a container agree with its record after a crash in
between, so the store and the host never disagree for long.
"""

from __future__ import annotations

import asyncio
import logging
import time

from declawd.errors import Busy, Conflict, NotFound
from declawd.node.parts import NodeParts
from declawd.store import SandboxRecord, SandboxState

log = logging.getLogger(__name__)

# What an auto-resumed sandbox gets at least (declaw-api.md §12.4).
AUTO_RESUME_MIN_S = 300.0


async def pause(parts: NodeParts, rec: SandboxRecord) -> SandboxRecord:
    """Freeze a running sandbox; returns once it uses no CPU."""
    async with parts.locks.of(rec.sandbox_id):
        return await _pause(parts, rec)


async def _pause(parts: NodeParts, rec: SandboxRecord) -> SandboxRecord:
    sandbox_id = rec.sandbox_id
    if rec.state is SandboxState.PAUSED:
        raise Conflict(f"sandbox '{sandbox_id}' is already paused")
    if rec.state is SandboxState.CREATING:
        raise Busy(f"sandbox '{sandbox_id}' is still being created")
    now = time.time()
    remaining = max(0.0, (rec.end_at or now) - now)
    fields = {"paused_at": now, "remaining_s": remaining}
    before = await asyncio.to_thread(
        parts.store.transition, sandbox_id, [SandboxState.RUNNING], SandboxState.PAUSED, **fields
    )
    if before is None:
        raise Conflict(f"sandbox '{sandbox_id}' is not running")
    runtime = parts.runtimes[rec.runtime]
    frozen = False
    try:
        parts.faults.point("pause.before_freeze")
        await runtime.pause(sandbox_id)
        frozen = True
        parts.faults.point("pause.after_freeze")
    except BaseException:
        if frozen:
            await asyncio.shield(runtime.resume(sandbox_id))
        await asyncio.to_thread(
            parts.store.transition,
            sandbox_id,
            [SandboxState.PAUSED],
            SandboxState.RUNNING,
            paused_at=None,
            remaining_s=None,
        )
        raise
    return before.replace(state=SandboxState.PAUSED, **fields)


def remaining_after_resume(rec: SandboxRecord, at_least_s: float) -> float:
    """Seconds the sandbox has once resumed: what it had left when paused (its clock was
    stopped), its own timeout when nothing was left (it was paused by its timeout)."""
    remaining = rec.remaining_s or 0.0
    if remaining <= 0:
        remaining = float(rec.timeout)
    return max(remaining, at_least_s)


async def resume(parts: NodeParts, rec: SandboxRecord, *, at_least_s: float = 0.0) -> SandboxRecord:
    """Thaw a paused sandbox; its processes continue where they stopped (after a snapshot
    still copying it, if one holds its freezer)."""
    async with parts.locks.of(rec.sandbox_id):
        fresh = await asyncio.to_thread(parts.store.get_sandbox, rec.sandbox_id)
        return await _resume(parts, fresh or rec, at_least_s)


async def _resume(parts: NodeParts, rec: SandboxRecord, at_least_s: float) -> SandboxRecord:
    sandbox_id = rec.sandbox_id
    if rec.state is not SandboxState.PAUSED:
        raise Conflict(f"sandbox '{sandbox_id}' is not paused")
    parts.faults.point("resume.before_thaw")
    await parts.runtimes[rec.runtime].resume(sandbox_id)
    parts.faults.point("resume.after_thaw")
    end_at = time.time() + remaining_after_resume(rec, at_least_s)
    fields = {"paused_at": None, "remaining_s": None, "end_at": end_at}
    before = await asyncio.to_thread(
        parts.store.transition, sandbox_id, [SandboxState.PAUSED], SandboxState.RUNNING, **fields
    )
    if before is None:
        # Killed meanwhile: the kill's teardown owns the container now.
        raise NotFound(f"sandbox '{sandbox_id}' not found")
    return before.replace(state=SandboxState.RUNNING, **fields)


async def align_container(parts: NodeParts, rec: SandboxRecord, state: str | None) -> bool:
    """After a restart: freeze or thaw the container so it matches the record (a crash
    between the record's change and the freeze or thaw); True when they agree now."""
    runtime = parts.runtimes[rec.runtime]
    want = "paused" if rec.state is SandboxState.PAUSED else "running"
    if state == want:
        return True
    try:
        if want == "paused" and state == "running":
            await runtime.pause(rec.sandbox_id)
        elif want == "running" and state == "paused":
            await runtime.resume(rec.sandbox_id)
        else:
            return False
    except Exception as exc:
        log.warning("reconcile: could not make %s %s: %s", rec.sandbox_id, want, exc)
        return False
    log.warning("reconcile: %s was %s, made it %s as its record says", rec.sandbox_id, state, want)
    return True
