"""Snapshots of a sandbox's filesystem: capture, blobs on disk, periodic capture, start-up sweep.

A snapshot is the sandbox's writable overlay layer (its upper dir) archived with GNU tar,
keeping what overlayfs needs to read it back (whiteouts are 0:0 char devices, opaque dirs
carry `trusted.overlay.opaque`, sparse files stay sparse). Memory is not captured: see
docs/persistence.md. Invariants: a `ready` record always has a complete blob (written to a
partial file, fsynced, renamed, and only then marked ready); the sandbox is frozen while the
archive is read, so the copy is consistent; a capture that fails or is cancelled leaves no
blob behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from declawd.config import Settings
from declawd.errors import Busy, Conflict, Internal, NotFound
from declawd.host import run, run_sync
from declawd.node.parts import NodeParts
from declawd.store import SandboxRecord, SandboxState
from declawd.store.records import new_id
from declawd.store.snapshots import (
    SnapshotRecord,
    SnapshotSource,
    SnapshotState,
    snapshot_of,
)

log = logging.getLogger(__name__)

FS_BLOB = "fs.tar"
# Both directions: every xattr (trusted.overlay.* included), ACLs, numeric ids (the
# sandbox's uids mean nothing on the host), holes kept as holes.
TAR_FLAGS: tuple[str, ...] = (
    "--xattrs",
    "--xattrs-include=*",
    "--acls",
    "--numeric-owner",
    "--sparse",
)
PERIODIC_TICK_S = 5.0
# How long a snapshot on request waits for one being written (the pause snapshot of a
# sandbox paused a moment ago takes about as long as its layer takes to read).
WAIT_S = 60.0
_WAIT_POLL_S = 0.2


def snapshot_dir(settings: Settings, snapshot_id: str) -> Path:
    return settings.snapshots_dir / snapshot_id


def fs_blob(settings: Settings, snapshot_id: str) -> Path:
    return snapshot_dir(settings, snapshot_id) / FS_BLOB


# Blobs --------------------------------------------------------------------------------
async def archive(upper: Path, dest: Path) -> None:
    """Archive the directory `upper` into `dest.partial` (not renamed yet; see `publish`).

    Cancelled or failed, tar is killed and the partial file removed.
    """
    partial = _partial(dest)
    try:
        await run("tar", *TAR_FLAGS, "-cpf", str(partial), "-C", str(upper), ".")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def publish(dest: Path) -> int:
    """Make the archive written by `archive` durable and visible as `dest` (blocking);
    returns its size. A crash before the rename leaves only a partial file."""
    partial = _partial(dest)
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    partial.rename(dest)
    fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return dest.stat().st_size


def _partial(dest: Path) -> Path:
    return dest.with_name(dest.name + ".partial")


def materialize(settings: Settings, snap: SnapshotRecord, upper: Path) -> None:
    """Extract the snapshot's filesystem into the empty directory `upper` (blocking), so an
    overlay of the template's layers under it shows exactly the captured files."""
    if not snap.is_ready:
        raise Conflict(f"snapshot '{snap.snapshot_id}' is {snap.state.value}, not ready")
    blob = fs_blob(settings, snap.snapshot_id)
    if not blob.is_file():
        raise Internal(f"snapshot '{snap.snapshot_id}': its filesystem blob is missing")
    if any(upper.iterdir()):
        raise ValueError(f"upper: {upper} is not empty")
    run_sync("tar", *TAR_FLAGS, "-xpf", str(blob), "-C", str(upper))


async def delete_snapshot_blobs(settings: Settings, snapshot_id: str) -> None:
    """Remove the snapshot's directory; idempotent."""
    await asyncio.to_thread(_remove_blobs, settings, snapshot_id)


def _remove_blobs(settings: Settings, snapshot_id: str) -> None:
    directory = snapshot_dir(settings, snapshot_id)
    if directory.parent != settings.snapshots_dir or not snapshot_id:
        raise ValueError(f"snapshot_id: {snapshot_id!r} is not a snapshot directory name")
    with contextlib.suppress(FileNotFoundError):  # already gone
        shutil.rmtree(directory)


# Capture ------------------------------------------------------------------------------
async def capture(
    parts: NodeParts, rec: SandboxRecord, source: str, *, already_frozen: bool
) -> SnapshotRecord:
    """Snapshot the sandbox's filesystem; returns the ready record.

    Unless `already_frozen` (a paused sandbox), the container is frozen for the copy and
    thawed after it. Another snapshot of the sandbox still being written → `Busy`. On
    failure the record is `failed` with the error (no blob); cancelled (a resume cancelling
    a pause snapshot), the record and blob are deleted and CancelledError propagates.
    """
    settings, store = parts.settings, parts.store
    snap = snapshot_of(rec, source, snapshot_id=new_id("snap"), created_at=time.time())
    await asyncio.to_thread(store.insert_snapshot, snap)
    dest = fs_blob(settings, snap.snapshot_id)
    try:
        await asyncio.to_thread(_make_dir, settings.snapshots_dir, dest.parent)
        parts.faults.point("snapshot.before_archive")
        frozen_ms = await _archive_consistently(parts, rec, dest, already_frozen)
        parts.faults.point("snapshot.before_publish")
        size = await asyncio.to_thread(publish, dest)
        parts.faults.point("snapshot.before_ready")
        ready = {"state": SnapshotState.READY, "fs_bytes": size, "pause_duration_ms": frozen_ms}
        await asyncio.to_thread(store.update_snapshot, snap.snapshot_id, **ready)
    except asyncio.CancelledError:
        # Synchronous on purpose: a second cancellation must not skip the cleanup.
        _remove_blobs(settings, snap.snapshot_id)
        store.delete_snapshot(snap.snapshot_id)
        raise
    except Exception as exc:
        error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        log.warning("snapshot %s of %s failed: %s", snap.snapshot_id, rec.sandbox_id, error)
        try:
            _remove_blobs(settings, snap.snapshot_id)
        except OSError as cleanup:
            log.error("snapshot %s: blobs not removed: %s", snap.snapshot_id, cleanup)
        store.update_snapshot(snap.snapshot_id, state=SnapshotState.FAILED, error=error)
        raise Internal(f"snapshot of sandbox '{rec.sandbox_id}' failed: {error}") from exc
    return snap.replace(**ready)


async def take(
    parts: NodeParts, rec: SandboxRecord, source: str = "manual", *, wait_s: float = WAIT_S
) -> SnapshotRecord:
    """A snapshot on request of a running or paused sandbox. While another snapshot of it
    is being written (typically its pause snapshot, right after a pause) this waits up to
    `wait_s` for it, then captures the sandbox as it is by then (paused or not)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        if rec.state is SandboxState.CREATING:
            raise Busy(f"sandbox '{rec.sandbox_id}' is still being created")
        if not rec.is_live:
            raise NotFound(f"sandbox '{rec.sandbox_id}' not found")
        try:
            async with parts.locks.of(rec.sandbox_id):
                # Under the freezer's lock the state cannot change: re-read it.
                now = await asyncio.to_thread(parts.store.get_sandbox, rec.sandbox_id)
                if now is None or not now.is_live:
                    raise NotFound(f"sandbox '{rec.sandbox_id}' not found")
                frozen = now.state is SandboxState.PAUSED
                return await capture(parts, now, source, already_frozen=frozen)
        except Busy:
            if loop.time() >= deadline:
                raise
        await asyncio.sleep(_WAIT_POLL_S)
        fresh = await asyncio.to_thread(parts.store.get_sandbox, rec.sandbox_id, rec.team_id)
        if fresh is None:
            raise NotFound(f"sandbox '{rec.sandbox_id}' not found")
        rec = fresh


def _make_dir(parent: Path, directory: Path) -> None:
    # Blobs hold whatever the sandbox wrote, secrets included: root only.
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.mkdir(mode=0o700)


async def _archive_consistently(
    parts: NodeParts, rec: SandboxRecord, dest: Path, already_frozen: bool
) -> int:
    """Archive the upper dir with the container frozen; returns how long this froze it (ms)."""
    upper = parts.host.resources(rec.sandbox_id).upper
    if already_frozen:
        await archive(upper, dest)
        return 0
    runtime = parts.runtimes[rec.runtime]
    started = time.monotonic()
    await runtime.pause(rec.sandbox_id)
    try:
        await archive(upper, dest)
    finally:
        await asyncio.shield(_thaw(parts, rec))
    return round((time.monotonic() - started) * 1000)


async def _thaw(parts: NodeParts, rec: SandboxRecord) -> None:
    """Thaw what `_archive_consistently` froze, unless the sandbox was paused meanwhile (the
    pause owns the freeze now) or killed (the kill's teardown owns the container)."""
    now = await asyncio.to_thread(parts.store.get_sandbox, rec.sandbox_id)
    if now is not None and now.state is SandboxState.PAUSED:
        log.info("snapshot of %s: left frozen, it was paused meanwhile", rec.sandbox_id)
        return
    try:
        await parts.runtimes[rec.runtime].resume(rec.sandbox_id)
    except Exception:
        now = await asyncio.to_thread(parts.store.get_sandbox, rec.sandbox_id)
        if now is not None and now.state is SandboxState.RUNNING:
            raise
        log.info("snapshot of %s: not thawed, it is %s now", rec.sandbox_id, now and now.state)


# Deletion -----------------------------------------------------------------------------
async def delete(parts: NodeParts, rec: SandboxRecord, snapshot_id: str) -> bool:
    """Delete one of the sandbox's snapshots; False when it has none of that id (another
    sandbox's or team's snapshot counts as none). The pause snapshot of a paused sandbox
    (its resume may need it) and a snapshot still being written → Conflict."""
    store = parts.store
    snap = await asyncio.to_thread(store.get_snapshot, snapshot_id, rec.team_id)
    if snap is None or snap.sandbox_id != rec.sandbox_id:
        return False
    if snap.state is SnapshotState.WRITING:
        raise Busy(f"snapshot '{snapshot_id}' is still being written", retry_after=2.0)
    if (
        snap.source is SnapshotSource.PAUSE
        and rec.state is SandboxState.PAUSED
        and snap.created_at >= (rec.paused_at or 0.0)
    ):
        raise Conflict(
            f"snapshot '{snapshot_id}' is the pause snapshot of paused sandbox"
            f" '{rec.sandbox_id}': resume or kill the sandbox first"
        )
    # Record first: a crash in between leaves a blob without a record (swept at start),
    # never a record without its blob.
    deleted = await asyncio.to_thread(store.delete_snapshot, snapshot_id)
    await delete_snapshot_blobs(parts.settings, snapshot_id)
    return deleted


# Periodic snapshots -------------------------------------------------------------------
Take = Callable[[NodeParts, SandboxRecord, str], Awaitable[SnapshotRecord]]


async def _take_periodic(parts: NodeParts, rec: SandboxRecord, source: str) -> SnapshotRecord:
    async with parts.locks.of(rec.sandbox_id):
        now = await asyncio.to_thread(parts.store.get_sandbox, rec.sandbox_id)
        if now is None or now.state is not SandboxState.RUNNING:
            raise NotFound(f"sandbox '{rec.sandbox_id}' is not running")
        return await capture(parts, now, source, already_frozen=False)


class PeriodicSnapshots:
    """Every `interval_s`, a `periodic` snapshot of each running sandbox; only the newest
    periodic snapshot of a sandbox is kept. One capture at a time (each freezes a sandbox
    and reads its whole layer), and a failed one waits a full interval before its retry."""

    def __init__(
        self,
        parts: NodeParts,
        interval_s: float,
        *,
        take: Take = _take_periodic,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s: must be positive (0 means no periodic snapshots)")
        self.parts = parts
        self.interval_s = interval_s
        self._take = take
        self._clock = clock
        self._failed_at: dict[str, float] = {}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(min(self.interval_s, PERIODIC_TICK_S))
            try:
                await self.tick()
            except Exception:
                log.exception("periodic snapshots")

    async def tick(self) -> list[SnapshotRecord]:
        """Snapshot every running sandbox that is due; returns the snapshots taken."""
        store = self.parts.store
        taken = []
        live = await asyncio.to_thread(store.list_live_sandboxes, self.parts.settings.node_id)
        running = [r for r in live if r.state is SandboxState.RUNNING and not r.pooled]
        ids = {r.sandbox_id for r in running}
        self._failed_at = {k: v for k, v in self._failed_at.items() if k in ids}
        for rec in running:
            if not await self._due(rec):
                continue
            try:
                snap = await self._take(self.parts, rec, SnapshotSource.PERIODIC)
            except Busy:
                continue  # a manual or pause snapshot is being written: next tick
            except Exception as exc:
                self._failed_at[rec.sandbox_id] = self._clock()
                log.warning("periodic snapshot of %s failed: %s", rec.sandbox_id, exc)
                await self._prune(rec, states=[SnapshotState.FAILED])
                continue
            self._failed_at.pop(rec.sandbox_id, None)
            taken.append(snap)
            await self._prune(rec, keep=snap.snapshot_id)
        return taken

    async def _due(self, rec: SandboxRecord) -> bool:
        newest = await asyncio.to_thread(
            self.parts.store.list_sandbox_snapshots,
            rec.team_id,
            rec.sandbox_id,
            sources=[SnapshotSource.PERIODIC],
        )
        since = max(
            rec.started_at or rec.created_at,
            newest[0].created_at if newest else 0.0,
            self._failed_at.get(rec.sandbox_id, 0.0),
        )
        return self._clock() - since >= self.interval_s

    async def _prune(
        self,
        rec: SandboxRecord,
        *,
        keep: str = "",
        states: tuple[SnapshotState, ...] | list[SnapshotState] = (
            SnapshotState.READY,
            SnapshotState.FAILED,
        ),
    ) -> None:
        """Delete the sandbox's periodic snapshots in `states` but `keep`: after a success
        every older one, after a failure only the failed ones (the last good one stays)."""
        store = self.parts.store
        old = await asyncio.to_thread(
            store.list_sandbox_snapshots,
            rec.team_id,
            rec.sandbox_id,
            sources=[SnapshotSource.PERIODIC],
            states=states,
        )
        for snap in old:
            if snap.snapshot_id != keep:
                await asyncio.to_thread(store.delete_snapshot, snap.snapshot_id)
                await delete_snapshot_blobs(self.parts.settings, snap.snapshot_id)


# Start-up sweep -----------------------------------------------------------------------
INTERRUPTED = "interrupted: the server stopped while the snapshot was written"


async def recover(parts: NodeParts) -> None:
    """At start, before any capture: snapshots left `writing` by a crash become `failed`
    (their partial blobs removed), `ready` ones whose blob is gone become `failed`, and
    blob directories without a record are removed."""
    await asyncio.to_thread(_recover, parts)


def _recover(parts: NodeParts) -> None:
    settings, store = parts.settings, parts.store

    def ours(snap: SnapshotRecord) -> bool:
        # On a shared database a node judges only its own sandboxes' snapshots: the others'
        # blobs are under their own nodes' state directories.
        if not settings.node_id:
            return True
        rec = store.get_sandbox(snap.sandbox_id)
        return rec is not None and rec.node_id == settings.node_id

    for snap in filter(ours, store.list_snapshots_in_state(SnapshotState.WRITING)):
        log.warning("snapshot %s of %s: %s", snap.snapshot_id, snap.sandbox_id, INTERRUPTED)
        _remove_blobs(settings, snap.snapshot_id)
        store.update_snapshot(snap.snapshot_id, state=SnapshotState.FAILED, error=INTERRUPTED)
    for snap in filter(ours, store.list_snapshots_in_state(SnapshotState.READY)):
        if not fs_blob(settings, snap.snapshot_id).is_file():
            log.error("snapshot %s: its blob is missing; marked failed", snap.snapshot_id)
            store.update_snapshot(
                snap.snapshot_id, state=SnapshotState.FAILED, error="filesystem blob missing"
            )
    if not settings.snapshots_dir.is_dir():
        return
    known = store.snapshot_ids()
    for entry in settings.snapshots_dir.iterdir():
        if entry.name in known:
            continue
        log.warning("snapshot blobs %s have no record; removing them", entry)
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as exc:
            log.error("snapshot blobs %s not removed: %s", entry, exc)
