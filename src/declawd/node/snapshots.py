"""Snapshots of a sandbox's filesystem: capture, blobs, periodic capture, start-up sweep.

A snapshot is the sandbox's writable overlay layer (its upper dir) archived with GNU tar,
keeping what overlayfs needs to read it back (whiteouts are 0:0 char devices, opaque dirs
carry `trusted.overlay.opaque`, sparse files stay sparse). Memory is not captured: see
docs/persistence.md. The archive is the blob `snapshots/<id>/fs.tar` of the node's blob store
(`NodeParts.blobs`: the state directory, or the cluster's shared store, where any node can
restore it). Invariants: a `ready` record always has a complete blob (the store publishes it
only once written and durable, and only then is it marked ready); the record is inserted
before its blob is written (a sweep on another host never takes a blob being written for an
orphan); the sandbox is frozen while the archive is read, so the copy is consistent; a
capture that fails or is cancelled leaves no blob behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from declawd.blobs import BlobStore
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

SNAPSHOTS = "snapshots"
FS_BLOB = "fs.tar"
# Both directions: every xattr (trusted.overlay.* included), ACLs, numeric ids (the
# sandbox's uids mean nothing on the host), holes kept as holes.
TAR_FLAGS: tuple[str, ...] = (
    "--xattrs",
    "--xattrs-include=*",
    "--acls",
    "--numeric-owner",
    "--sparse",
    # 128 KiB records (tar's default is 10 KiB): on a network filesystem each write is a
    # request; a 66 MB layer went to sshfs at 20 MB/s in 10 KiB writes and ten times that in
    # large ones (docs/blobs.md). Archives made with another record size still read.
    "--blocking-factor=256",
)
PERIODIC_TICK_S = 5.0
# How long a snapshot on request waits for one being written (the pause snapshot of a
# sandbox paused a moment ago takes about as long as its layer takes to read).
WAIT_S = 60.0
_WAIT_POLL_S = 0.2


def snapshot_key(snapshot_id: str) -> str:
    """The blob-store key of everything the snapshot holds (its directory)."""
    return f"{SNAPSHOTS}/{snapshot_id}"


def fs_key(snapshot_id: str) -> str:
    """The blob-store key of the snapshot's filesystem archive."""
    return f"{snapshot_key(snapshot_id)}/{FS_BLOB}"


# Blobs --------------------------------------------------------------------------------
async def archive(upper: Path, dest: Path) -> None:
    """Archive the directory `upper` into `dest` (the path `BlobStore.writing` gives, which
    becomes the blob once the write completes). Cancelled, tar is killed."""
    await run("tar", *TAR_FLAGS, "-cpf", str(dest), "-C", str(upper), ".")


@contextlib.asynccontextmanager
async def writing(blobs: BlobStore, key: str) -> AsyncIterator[Path]:
    """`blobs.writing(key)` with its blocking ends (making directories; fsync and rename)
    in a worker thread. A failure or cancellation discards the partial blob synchronously,
    so a second cancellation cannot skip that."""
    cm = blobs.writing(key)
    path = await asyncio.to_thread(cm.__enter__)
    try:
        yield path
    except BaseException as exc:
        cm.__exit__(type(exc), exc, exc.__traceback__)
        raise
    await asyncio.to_thread(cm.__exit__, None, None, None)


def materialize(blobs: BlobStore, snap: SnapshotRecord, upper: Path) -> None:
    """Extract the snapshot's filesystem into the empty directory `upper` (blocking), so an
    overlay of the template's layers under it shows exactly the captured files."""
    if not snap.is_ready:
        raise Conflict(f"snapshot '{snap.snapshot_id}' is {snap.state.value}, not ready")
    if any(upper.iterdir()):
        raise ValueError(f"upper: {upper} is not empty")
    try:
        with blobs.reading(fs_key(snap.snapshot_id)) as blob:
            run_sync("tar", *TAR_FLAGS, "-xpf", str(blob), "-C", str(upper))
    except FileNotFoundError as exc:
        raise Internal(f"snapshot '{snap.snapshot_id}': its filesystem blob is missing") from exc


async def delete_snapshot_blobs(blobs: BlobStore, snapshot_id: str) -> None:
    """Remove the snapshot's blobs; idempotent."""
    await asyncio.to_thread(blobs.delete, snapshot_key(snapshot_id))


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
    store, blobs = parts.store, parts.blobs
    snap = snapshot_of(rec, source, snapshot_id=new_id("snap"), created_at=time.time())
    # The record first: a blob directory without one is an orphan to every host's sweep.
    await asyncio.to_thread(store.insert_snapshot, snap)
    key = fs_key(snap.snapshot_id)
    try:
        async with writing(blobs, key) as partial:
            parts.faults.point("snapshot.before_archive")
            frozen_ms = await _archive_consistently(parts, rec, partial, already_frozen)
            parts.faults.point("snapshot.before_publish")
        size = await asyncio.to_thread(blobs.size, key)
        if size is None:
            raise Internal(f"snapshot '{snap.snapshot_id}': its blob vanished once written")
        parts.faults.point("snapshot.before_ready")
        ready = {"state": SnapshotState.READY, "fs_bytes": size, "pause_duration_ms": frozen_ms}
        await asyncio.to_thread(store.update_snapshot, snap.snapshot_id, **ready)
    except asyncio.CancelledError:
        # Synchronous on purpose: a second cancellation must not skip the cleanup.
        blobs.delete(snapshot_key(snap.snapshot_id))
        store.delete_snapshot(snap.snapshot_id)
        raise
    except Exception as exc:
        error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        log.warning("snapshot %s of %s failed: %s", snap.snapshot_id, rec.sandbox_id, error)
        try:
            blobs.delete(snapshot_key(snap.snapshot_id))
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
    await delete_snapshot_blobs(parts.blobs, snapshot_id)
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
                await delete_snapshot_blobs(self.parts.blobs, snap.snapshot_id)


# Start-up sweep -----------------------------------------------------------------------
INTERRUPTED = "interrupted: the server stopped while the snapshot was written"
INTERRUPTED_ELSEWHERE = "interrupted: the sandbox was lost with its node while this was written"


async def recover(parts: NodeParts) -> None:
    """At start, before any capture: snapshots left `writing` by a crash become `failed`
    (their partial blobs removed), `ready` ones whose blob is gone become `failed`, and
    blob directories without a record are removed."""
    await asyncio.to_thread(_recover, parts)


def _recover(parts: NodeParts) -> None:
    settings, store, blobs = parts.settings, parts.store, parts.blobs

    def ours(snap: SnapshotRecord) -> bool:
        # On a shared database a node judges only the snapshots of the sandboxes the store
        # places on it now: a capture in flight on another node is that node's, and so is a
        # sandbox restored elsewhere since (its snapshots follow it to its new node).
        if not settings.node_id:
            return True
        rec = store.get_sandbox(snap.sandbox_id)
        return rec is not None and rec.node_id == settings.node_id

    for snap in filter(ours, store.list_snapshots_in_state(SnapshotState.WRITING)):
        log.warning("snapshot %s of %s: %s", snap.snapshot_id, snap.sandbox_id, INTERRUPTED)
        blobs.delete(snapshot_key(snap.snapshot_id))
        store.update_snapshot(snap.snapshot_id, state=SnapshotState.FAILED, error=INTERRUPTED)
    for snap in filter(ours, store.list_snapshots_in_state(SnapshotState.READY)):
        if not blobs.exists(fs_key(snap.snapshot_id)):
            log.error("snapshot %s: its blob is missing; marked failed", snap.snapshot_id)
            store.update_snapshot(
                snap.snapshot_id, state=SnapshotState.FAILED, error="filesystem blob missing"
            )
    # Listed before the records are read: a capture inserts its record before it makes its
    # directory, so on a shared store a directory another host is writing right now is
    # always known here, and only a directory whose record is gone (or never was) is removed.
    names = blobs.list(SNAPSHOTS)
    if not names:
        return
    known = store.snapshot_ids()
    for name in names:
        if name in known:
            continue
        log.warning("snapshot blobs %s have no record; removing them", name)
        try:
            blobs.delete(snapshot_key(name))
        except (OSError, ValueError) as exc:
            log.error("snapshot blobs %s not removed: %s", name, exc)


def interrupt_writing(parts: NodeParts, sandbox_id: str) -> None:
    """Before the restore here of a sandbox lost with another node (`lost_elsewhere`): a
    snapshot of it still `writing` was being written by that node when it died, and that
    node no longer judges it at its return (the sandbox is this node's by then), so it is
    failed here and its partial blob removed; else it would hold up every snapshot of the
    restored sandbox (one `writing` at a time). Blocking."""
    snap = parts.store.writing_snapshot(sandbox_id)
    if snap is None:
        return
    log.warning("snapshot %s of %s: %s", snap.snapshot_id, sandbox_id, INTERRUPTED_ELSEWHERE)
    parts.blobs.delete(snapshot_key(snap.snapshot_id))
    parts.store.update_snapshot(
        snap.snapshot_id, state=SnapshotState.FAILED, error=INTERRUPTED_ELSEWHERE
    )
