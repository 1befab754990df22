"""Cluster mode on the blob store every node shares: a sandbox lost with its node is
restored on another node (record and slot become the new node's), and the old node, when it
comes back, removes what it still holds of it as debris without ever writing its record."""

from __future__ import annotations

import time

import pytest

from declawd.errors import Conflict
from declawd.node.create import CreateRequest
from declawd.node.reconcile import reconcile
from declawd.node.release import release, release_and_record
from declawd.node.snapshots import INTERRUPTED_ELSEWHERE, recover, snapshot_key
from declawd.store import SandboxRecord, SandboxState
from declawd.store.nodes import lost_message
from declawd.store.snapshots import SnapshotRecord, SnapshotState, snapshot_of
from tests.unit.node.fakes import TEAM, NodeFakes, record, sandbox_id, template

SID = sandbox_id(1)


def _on(fakes: NodeFakes, node_id: str) -> None:
    """From now on the fake node is `node_id` (each node of a cluster has its own id)."""
    fakes.settings.node_id = node_id


async def _made_on_n1_then_lost(fakes: NodeFakes, *, n1_state: str) -> SnapshotRecord:
    """A sandbox made and snapshotted on n1, its host released (that host is gone), then
    killed by the lost-node sweep (unreleased); n1 left `n1_state`. Returns the snapshot."""
    _on(fakes, "n1")
    rec = await fakes.node.create(CreateRequest(team_id=TEAM, template=template(), timeout=300))
    upper = fakes.host.resources(SID).upper
    upper.mkdir(parents=True)
    (upper / "notes.txt").write_text("written on n1\n")
    snap = await fakes.node.snapshot(rec)
    await release(fakes.parts, fakes.get(SID))
    fakes.store.update_sandbox(
        SID,
        state=SandboxState.KILLED,
        killed_at=time.time(),
        error=lost_message("n1"),
        released=False,
    )
    fakes.store.register_node("n1", "n1", "https://n1.invalid:8444")
    fakes.store.set_node_state("n1", n1_state)
    return snap


async def test_a_sandbox_lost_with_its_node_is_restored_on_another(fakes: NodeFakes) -> None:
    snap = await _made_on_n1_then_lost(fakes, n1_state="down")
    killed = fakes.get(SID)
    # n1 was writing another snapshot when it died: it would block the restored sandbox's.
    stuck = snapshot_of(killed, "manual", snapshot_id="snap-0000000000c1", created_at=2.0)
    fakes.store.insert_snapshot(stuck)
    stuck_dir = fakes.settings.blobs_path / snapshot_key(stuck.snapshot_id)
    stuck_dir.mkdir(parents=True)
    (stuck_dir / "fs.tar.0000.partial").write_bytes(b"half")
    # Slots are per node: n2's own sandbox holds its slot 1, n1's slot 2 does not count.
    fakes.insert(record(sandbox_id(7), SandboxState.RUNNING, node_id="n2", slot=1))
    fakes.insert(record(sandbox_id(8), SandboxState.RUNNING, node_id="n1", slot=2))

    _on(fakes, "n2")
    restored = await fakes.node.restore(killed, snap, template())

    now = fakes.get(SID)
    assert restored.state is SandboxState.RUNNING and now.state is SandboxState.RUNNING
    assert (now.node_id, now.slot, now.released, now.error) == ("n2", 2, False, None)
    assert (fakes.host.resources(SID).upper / "notes.txt").read_text() == "written on n1\n"
    failed = fakes.store.get_snapshot(stuck.snapshot_id)
    assert failed is not None and failed.state is SnapshotState.FAILED
    assert failed.error == INTERRUPTED_ELSEWHERE
    assert not stuck_dir.exists()
    assert fakes.store.writing_snapshot(SID) is None  # the next snapshot is not held up


async def test_a_restore_waits_for_the_teardown_on_an_old_node_still_up(
    fakes: NodeFakes,
) -> None:
    snap = await _made_on_n1_then_lost(fakes, n1_state="up")
    _on(fakes, "n2")
    with pytest.raises(Conflict, match="still being torn down"):
        await fakes.node.restore(fakes.get(SID), snap, template())
    assert fakes.get(SID).node_id == "n1"


async def _restored_on_n2_meanwhile(fakes: NodeFakes) -> SandboxRecord:
    """A sandbox made on n1 (whose host still holds it all), which the store now places on
    n2, running there: it was restored on n2 while n1 was away."""
    _on(fakes, "n1")
    await fakes.node.create(CreateRequest(team_id=TEAM, template=template(), timeout=300))
    held = fakes.get(SID)
    assert fakes.leftovers(SID)  # container, network, rootfs... on n1's host
    fakes.store.update_sandbox(SID, node_id="n2", slot=1, address="10.12.0.2")
    return held


async def test_the_old_node_sweeps_a_restored_sandbox_as_debris_and_leaves_its_record(
    fakes: NodeFakes,
) -> None:
    await _restored_on_n2_meanwhile(fakes)
    before = fakes.get(SID)

    keep = await reconcile(fakes.parts)

    assert SID not in keep
    assert fakes.leftovers(SID) == {}
    assert fakes.get(SID) == before  # running on n2, unreleased, no error: untouched


async def test_a_teardown_finishing_after_a_restore_elsewhere_writes_nothing(
    fakes: NodeFakes,
) -> None:
    held = await _restored_on_n2_meanwhile(fakes)
    before = fakes.get(SID)
    # n1 had listed it killed (its kill or sweep) before the restore moved it.
    assert await release_and_record(fakes.parts, held.replace(state=SandboxState.KILLED))
    assert fakes.leftovers(SID) == {}
    assert fakes.get(SID) == before
    # And on its own node the outcome is recorded as ever.
    _on(fakes, "n2")
    assert await release_and_record(fakes.parts, fakes.get(SID))
    assert fakes.get(SID).released


async def test_the_start_sweep_judges_only_this_nodes_snapshots_on_a_shared_store(
    fakes: NodeFakes,
) -> None:
    theirs = fakes.insert(record(sandbox_id(5), SandboxState.RUNNING, node_id="n2"))
    writing = snapshot_of(theirs, "manual", snapshot_id="snap-0000000000d1", created_at=3.0)
    fakes.store.insert_snapshot(writing)  # n2 is writing it now: record first, then blobs
    being_written = fakes.settings.blobs_path / snapshot_key(writing.snapshot_id)
    being_written.mkdir(parents=True)
    (being_written / "fs.tar.1111.partial").write_bytes(b"in flight")
    orphan = fakes.settings.blobs_path / snapshot_key("snap-0000000000d2")
    orphan.mkdir()
    (orphan / "fs.tar").write_bytes(b"no record")
    _on(fakes, "n1")

    await recover(fakes.parts)

    assert fakes.store.writing_snapshot(theirs.sandbox_id) == writing
    assert (being_written / "fs.tar.1111.partial").read_bytes() == b"in flight"
    assert not orphan.exists()
