"""Snapshot capture on a fake node (real tar on a tmp upper dir): freeze and thaw around the
copy, failures and cancellation leave no blob, deletion rules, periodic capture, start sweep."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest

from declawd.errors import Busy, Conflict, Internal, NotFound
from declawd.node import snapshots as snapshotting
from declawd.node.snapshots import PeriodicSnapshots, capture, fs_key, recover, take
from declawd.store import SandboxRecord, SandboxState
from declawd.store.snapshots import SnapshotRecord, SnapshotSource, SnapshotState, snapshot_of
from tests.unit.node.fakes import NodeFakes, record, sandbox_id

SID = sandbox_id(1)


def _blob(fakes: NodeFakes, snapshot_id: str) -> Path:
    """Where the node's blob store (a directory here) keeps the snapshot's archive."""
    path = fakes.settings.blobs_path / fs_key(snapshot_id)
    assert path == fakes.settings.snapshots_dir / snapshot_id / "fs.tar"
    return path


def _running(fakes: NodeFakes, sid: str = SID, **changes: object) -> SandboxRecord:
    rec = fakes.insert(record(sid, SandboxState.RUNNING, **changes))
    fakes.runtime.containers[sid] = "running"
    upper = fakes.host.resources(sid).upper
    upper.mkdir(parents=True)
    (upper / "home").mkdir()
    (upper / "home" / "notes.txt").write_text(f"written in {sid}\n")
    return rec


def _paused(fakes: NodeFakes) -> SandboxRecord:
    _running(fakes)
    fakes.runtime.containers[SID] = "paused"
    fakes.store.update_sandbox(SID, state=SandboxState.PAUSED, paused_at=time.time() - 1)
    return fakes.get(SID)


def _members(blob: Path) -> list[str]:
    out = subprocess.run(["tar", "-tf", str(blob)], capture_output=True, text=True, check=True)
    return sorted(out.stdout.split())


async def test_a_running_sandbox_is_frozen_for_the_copy_and_thawed_after(
    fakes: NodeFakes,
) -> None:
    rec = _running(fakes)
    snap = await capture(fakes.parts, rec, "manual", already_frozen=False)

    assert [c for c in fakes.steps.calls if c.startswith("runc.")] == ["runc.pause", "runc.resume"]
    assert fakes.runtime.containers[SID] == "running"
    assert snap.state is SnapshotState.READY and snap.source is SnapshotSource.MANUAL
    assert snap.pause_duration_ms is not None and snap.pause_duration_ms >= 0
    assert fakes.store.get_snapshot(snap.snapshot_id) == snap
    blob = _blob(fakes, snap.snapshot_id)
    assert snap.fs_bytes == blob.stat().st_size
    assert _members(blob) == ["./", "./home/", "./home/notes.txt"]
    assert [p.name for p in blob.parent.iterdir()] == ["fs.tar"]  # no partial left
    assert blob.parent.stat().st_mode & 0o777 == 0o700


async def test_a_paused_sandbox_is_copied_as_it_is(fakes: NodeFakes) -> None:
    rec = _paused(fakes)
    snap = await fakes.node.snapshot(rec)
    assert "runc.pause" not in fakes.steps.calls and "runc.resume" not in fakes.steps.calls
    assert fakes.runtime.containers[SID] == "paused"
    assert snap.pause_duration_ms == 0 and snap.is_ready


async def test_a_sandbox_still_being_created_cannot_be_snapshotted(fakes: NodeFakes) -> None:
    rec = fakes.insert(record(SID, SandboxState.CREATING))
    with pytest.raises(Busy, match="still being created"):
        await fakes.node.snapshot(rec)
    assert fakes.store.list_sandbox_snapshots(rec.team_id, SID, states=None) == []


async def test_a_failed_copy_is_recorded_failed_with_no_blob_and_the_sandbox_thawed(
    fakes: NodeFakes,
) -> None:
    rec = fakes.insert(record(SID, SandboxState.RUNNING))
    fakes.runtime.containers[SID] = "running"  # but no upper dir: tar fails
    with pytest.raises(Internal, match=f"snapshot of sandbox '{SID}' failed: tar .*exited 2"):
        await capture(fakes.parts, rec, "manual", already_frozen=False)

    assert fakes.runtime.containers[SID] == "running"
    (failed,) = fakes.store.list_sandbox_snapshots(rec.team_id, SID, states=None)
    assert failed.state is SnapshotState.FAILED and "tar" in (failed.error or "")
    assert not (fakes.settings.snapshots_dir / failed.snapshot_id).exists()
    assert fakes.store.writing_snapshot(SID) is None  # the next snapshot is not held up


async def test_a_freeze_that_fails_fails_the_snapshot_without_a_thaw(fakes: NodeFakes) -> None:
    rec = _running(fakes)
    fakes.steps.fail("runc.pause")
    with pytest.raises(Internal, match="runc.pause broke"):
        await capture(fakes.parts, rec, "manual", already_frozen=False)
    assert "runc.resume" not in fakes.steps.calls


async def test_cancelled_mid_copy_kills_tar_and_forgets_the_snapshot(
    fakes: NodeFakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = _running(fakes)
    copying = asyncio.Event()

    async def slow_archive(upper: Path, dest: Path) -> None:
        dest.write_bytes(b"half")  # the partial blob the store gave
        copying.set()
        await asyncio.sleep(3600)

    monkeypatch.setattr(snapshotting, "archive", slow_archive)
    task = asyncio.create_task(capture(fakes.parts, rec, "pause", already_frozen=False))
    await copying.wait()
    writing = fakes.store.writing_snapshot(SID)
    assert writing is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert fakes.store.get_snapshot(writing.snapshot_id) is None
    assert not (fakes.settings.snapshots_dir / writing.snapshot_id).exists()
    assert fakes.runtime.containers[SID] == "running"  # thawed on the way out


async def test_a_second_snapshot_while_one_is_written_is_busy(fakes: NodeFakes) -> None:
    rec = _running(fakes)
    gate = fakes.steps.gate("runc.pause")
    first = asyncio.create_task(capture(fakes.parts, rec, "manual", already_frozen=False))
    await asyncio.sleep(0.05)
    with pytest.raises(Busy, match="still being written"):
        await capture(fakes.parts, rec, "manual", already_frozen=False)
    gate.set()
    assert (await first).is_ready


async def test_a_snapshot_on_request_waits_for_the_one_being_written(
    fakes: NodeFakes,
) -> None:
    rec = _paused(fakes)
    pause_snap = snapshot_of(rec, "pause", snapshot_id="snap-00000000000e", created_at=1.0)
    fakes.store.insert_snapshot(pause_snap)
    with pytest.raises(Busy, match="still being written"):
        await take(fakes.parts, rec, wait_s=0)

    async def finish_and_resume() -> None:
        await asyncio.sleep(0.3)
        # The pause snapshot is done and the sandbox resumed before the manual one starts:
        # the manual one must see it running and freeze it itself.
        fakes.store.update_snapshot(pause_snap.snapshot_id, state=SnapshotState.READY)
        fakes.store.update_sandbox(SID, state=SandboxState.RUNNING, paused_at=None)
        fakes.runtime.containers[SID] = "running"

    helper = asyncio.create_task(finish_and_resume())
    snap = await take(fakes.parts, rec, wait_s=5)
    await helper
    assert snap.is_ready and snap.source is SnapshotSource.MANUAL
    assert [c for c in fakes.steps.calls if c.startswith("runc.")] == ["runc.pause", "runc.resume"]


async def test_a_snapshot_on_request_of_a_sandbox_killed_while_it_waited_is_404(
    fakes: NodeFakes,
) -> None:
    rec = _running(fakes)
    fakes.store.insert_snapshot(
        snapshot_of(rec, "periodic", snapshot_id="snap-00000000000e", created_at=1.0)
    )
    fakes.store.update_sandbox(SID, state=SandboxState.KILLED)
    with pytest.raises(NotFound):
        await take(fakes.parts, rec, wait_s=5)


async def test_no_thaw_when_the_sandbox_was_paused_or_killed_meanwhile(
    fakes: NodeFakes,
) -> None:
    rec = _running(fakes)
    fakes.steps.fail("runc.resume")
    fakes.store.update_sandbox(SID, state=SandboxState.KILLED)
    snap = await capture(fakes.parts, rec, "manual", already_frozen=False)
    assert snap.is_ready  # the copy is good; the kill's teardown owns the container

    fakes.store.update_sandbox(SID, state=SandboxState.RUNNING)
    fakes.runtime.containers[SID] = "running"
    with pytest.raises(Internal, match="runc.resume broke"):
        await capture(fakes.parts, rec, "manual", already_frozen=False)


async def test_a_sandbox_paused_during_the_copy_is_left_frozen(fakes: NodeFakes) -> None:
    rec = _running(fakes)
    fakes.store.update_sandbox(SID, state=SandboxState.PAUSED)  # as a pause would, mid-copy
    snap = await capture(fakes.parts, rec, "manual", already_frozen=False)
    assert snap.is_ready
    assert "runc.resume" not in fakes.steps.calls
    assert fakes.runtime.containers[SID] == "paused"


# Deletion -----------------------------------------------------------------------------
async def test_delete_is_idempotent_and_removes_the_blob(fakes: NodeFakes) -> None:
    rec = _running(fakes)
    snap = await fakes.node.snapshot(rec)
    assert await fakes.node.delete_snapshot(rec, snap.snapshot_id) is True
    assert fakes.store.get_snapshot(snap.snapshot_id) is None
    assert not (fakes.settings.snapshots_dir / snap.snapshot_id).exists()
    assert await fakes.node.delete_snapshot(rec, snap.snapshot_id) is False
    assert await fakes.node.delete_snapshot(rec, "snap-000000000bad") is False


async def test_delete_does_not_reach_another_sandbox_or_team(fakes: NodeFakes) -> None:
    mine = _running(fakes)
    other = _running(fakes, sandbox_id(2))
    theirs = _running(fakes, sandbox_id(3), team_id="team-b")
    snap_other = await fakes.node.snapshot(other)
    snap_theirs = await fakes.node.snapshot(theirs)
    assert await fakes.node.delete_snapshot(mine, snap_other.snapshot_id) is False
    assert await fakes.node.delete_snapshot(mine, snap_theirs.snapshot_id) is False
    assert fakes.store.get_snapshot(snap_other.snapshot_id) is not None
    assert _blob(fakes, snap_theirs.snapshot_id).is_file()


async def test_the_pause_snapshot_of_a_paused_sandbox_is_protected(fakes: NodeFakes) -> None:
    rec = _paused(fakes)
    pause_snap = await capture(fakes.parts, rec, "pause", already_frozen=True)
    manual = await capture(fakes.parts, rec, "manual", already_frozen=True)
    with pytest.raises(Conflict, match="pause snapshot of paused sandbox"):
        await fakes.node.delete_snapshot(rec, pause_snap.snapshot_id)
    assert await fakes.node.delete_snapshot(rec, manual.snapshot_id) is True
    # once resumed (or killed), it is an ordinary snapshot
    fakes.store.update_sandbox(SID, state=SandboxState.RUNNING, paused_at=None)
    assert await fakes.node.delete_snapshot(fakes.get(SID), pause_snap.snapshot_id) is True


async def test_a_snapshot_being_written_cannot_be_deleted(fakes: NodeFakes) -> None:
    rec = _running(fakes)
    writing = snapshot_of(rec, "manual", snapshot_id="snap-00000000000e", created_at=1.0)
    fakes.store.insert_snapshot(writing)
    with pytest.raises(Busy, match="still being written"):
        await fakes.node.delete_snapshot(rec, writing.snapshot_id)


# Periodic -----------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def test_periodic_snapshots_are_taken_when_due_and_only_the_newest_is_kept(
    fakes: NodeFakes,
) -> None:
    rec = _running(fakes, started_at=time.time() - 30)
    _running(fakes, sandbox_id(2), started_at=time.time() - 600)
    fakes.store.update_sandbox(sandbox_id(2), state=SandboxState.PAUSED)
    periodic = PeriodicSnapshots(fakes.parts, 60)

    assert await periodic.tick() == []  # not a minute old yet, and the other is paused
    fakes.store.update_sandbox(SID, started_at=time.time() - 61)
    (first,) = await periodic.tick()
    assert (first.sandbox_id, first.source) == (SID, SnapshotSource.PERIODIC)
    assert await periodic.tick() == []  # just taken
    manual = await fakes.node.snapshot(rec)
    fakes.store.update_snapshot(first.snapshot_id, created_at=time.time() - 61)
    (second,) = await periodic.tick()

    kept = fakes.store.list_sandbox_snapshots(rec.team_id, SID, states=None)
    assert {s.snapshot_id for s in kept} == {second.snapshot_id, manual.snapshot_id}
    assert not (fakes.settings.snapshots_dir / first.snapshot_id).exists()
    assert fakes.store.list_sandbox_snapshots(rec.team_id, sandbox_id(2), states=None) == []


async def test_a_failed_periodic_snapshot_waits_an_interval_and_keeps_the_last_good_one(
    fakes: NodeFakes,
) -> None:
    clock = Clock()
    rec = _running(fakes, started_at=clock.now - 120)
    calls: list[str] = []
    good: list[SnapshotRecord] = []

    async def take(parts: object, r: SandboxRecord, source: str) -> SnapshotRecord:
        calls.append(r.sandbox_id)
        if good:
            raise Internal("disk full")
        snap = await capture(fakes.parts, r, source, already_frozen=False)
        good.append(snap)
        return snap

    periodic = PeriodicSnapshots(fakes.parts, 60, take=take, clock=clock)
    await periodic.tick()
    clock.now = time.time() + 61
    assert await periodic.tick() == []
    assert await periodic.tick() == []  # backs off instead of retrying every tick
    assert calls == [SID, SID]
    (kept,) = fakes.store.list_sandbox_snapshots(rec.team_id, SID)
    assert kept.snapshot_id == good[0].snapshot_id
    clock.now += 61
    await periodic.tick()
    assert calls == [SID, SID, SID]


async def test_periodic_skips_a_sandbox_whose_snapshot_is_being_written(
    fakes: NodeFakes,
) -> None:
    clock = Clock()
    rec = _running(fakes, started_at=clock.now - 120)
    fakes.store.insert_snapshot(
        snapshot_of(rec, "manual", snapshot_id="snap-00000000000e", created_at=clock.now)
    )
    assert await PeriodicSnapshots(fakes.parts, 60, clock=clock).tick() == []
    assert "runc.pause" not in fakes.steps.calls


def test_periodic_needs_a_positive_interval(fakes: NodeFakes) -> None:
    with pytest.raises(ValueError, match="interval_s"):
        PeriodicSnapshots(fakes.parts, 0)


# Start-up sweep -----------------------------------------------------------------------
async def test_the_start_sweep_leaves_nothing_half_made(fakes: NodeFakes) -> None:
    rec = _running(fakes)
    ready = await fakes.node.snapshot(rec)
    lost = await capture(fakes.parts, rec, "manual", already_frozen=True)
    _blob(fakes, lost.snapshot_id).unlink()
    crashed = snapshot_of(rec, "pause", snapshot_id="snap-00000000000c", created_at=1.0)
    fakes.store.insert_snapshot(crashed)
    partial = fakes.settings.snapshots_dir / crashed.snapshot_id / "fs.tar.partial"
    partial.parent.mkdir()
    partial.write_bytes(b"half")
    orphan = fakes.settings.snapshots_dir / "snap-0000000000aa"
    orphan.mkdir()
    (orphan / "fs.tar").write_bytes(b"x")

    await recover(fakes.parts)

    after = {s.snapshot_id: s for s in fakes.store.list_snapshots_in_state(SnapshotState.FAILED)}
    assert set(after) == {lost.snapshot_id, crashed.snapshot_id}
    assert "interrupted" in (after[crashed.snapshot_id].error or "")
    assert after[lost.snapshot_id].error == "filesystem blob missing"
    assert not partial.parent.exists() and not orphan.exists()
    assert _blob(fakes, ready.snapshot_id).is_file()
    assert fakes.store.get_snapshot(ready.snapshot_id).is_ready
