"""Pause and resume on a node made of fakes: the record, the container and the clock."""

from __future__ import annotations

import time

import pytest

from declawd.errors import Conflict, NotFound
from declawd.node.create import CreateRequest
from declawd.node.node import Need
from declawd.node.pausing import AUTO_RESUME_MIN_S
from declawd.store import SandboxRecord, SandboxState
from tests.unit.node.fakes import TEAM, NodeFakes, sandbox_id, template

SID = sandbox_id(1)


async def _running(fakes: NodeFakes, **lifecycle: object) -> SandboxRecord:
    req = CreateRequest(team_id=TEAM, template=template(), timeout=300, lifecycle=lifecycle)
    return await fakes.node.create(req)


async def test_pause_freezes_and_stops_the_clock(fakes: NodeFakes) -> None:
    rec = await _running(fakes)
    paused = await fakes.node.pause(rec)
    assert fakes.runtimes["runc"].containers[SID] == "paused"
    stored = fakes.get(SID)
    assert stored.state is SandboxState.PAUSED and stored.paused_at is not None
    assert stored.remaining_s is not None and 298 < stored.remaining_s <= 300
    assert paused.state is SandboxState.PAUSED
    # The network and gateway entry are untouched: the rules are in force after resume.
    assert SID in fakes.networks.networks and SID in fakes.gateway.entries


async def test_resume_gives_back_the_time_that_was_left(fakes: NodeFakes) -> None:
    rec = await _running(fakes)
    fakes.store.update_sandbox(SID, end_at=rec.created_at + 1000)
    paused = await fakes.node.pause(fakes.get(SID))
    fakes.store.update_sandbox(SID, remaining_s=42.0)  # as if paused with 42 s left
    resumed = await fakes.node.resume(fakes.get(SID))
    assert fakes.runtimes["runc"].containers[SID] == "running"
    stored = fakes.get(SID)
    assert stored.state is SandboxState.RUNNING
    assert (stored.paused_at, stored.remaining_s) == (None, None)
    assert stored.end_at is not None and paused.paused_at is not None
    assert 41 < stored.end_at - paused.paused_at < 60
    assert resumed.end_at == stored.end_at


async def test_pause_and_resume_refuse_the_wrong_state(fakes: NodeFakes) -> None:
    rec = await _running(fakes)
    with pytest.raises(Conflict, match="is not paused"):
        await fakes.node.resume(rec)
    paused = await fakes.node.pause(rec)
    with pytest.raises(Conflict, match="already paused"):
        await fakes.node.pause(paused)


async def test_a_failed_freeze_leaves_the_sandbox_running(fakes: NodeFakes) -> None:
    rec = await _running(fakes)
    fakes.steps.fail("runc.pause")
    with pytest.raises(RuntimeError):
        await fakes.node.pause(rec)
    assert fakes.get(SID).state is SandboxState.RUNNING


async def test_calls_on_a_paused_sandbox_conflict_without_auto_resume(fakes: NodeFakes) -> None:
    await fakes.node.pause(await _running(fakes))
    with pytest.raises(Conflict, match="sandbox is paused") as info:
        await fakes.node.lookup(TEAM, SID, Need.RUNNING)
    assert info.value.code == "sandbox_paused"
    assert (await fakes.node.lookup(TEAM, SID, Need.LIVE)).state is SandboxState.PAUSED


async def test_auto_resume_resumes_on_the_next_call_with_five_minutes(fakes: NodeFakes) -> None:
    rec = await _running(fakes, on_timeout="pause", auto_resume=True)
    await fakes.node.pause(rec)
    fakes.store.update_sandbox(SID, remaining_s=3.0)
    got = await fakes.node.lookup(TEAM, SID, Need.RUNNING)
    assert got.state is SandboxState.RUNNING
    assert fakes.runtimes["runc"].containers[SID] == "running"
    assert got.end_at is not None
    assert got.end_at - time.time() >= AUTO_RESUME_MIN_S - 5


async def test_kill_of_a_paused_sandbox_tears_it_down(fakes: NodeFakes) -> None:
    await fakes.node.pause(await _running(fakes))
    assert await fakes.node.kill(SID) is True
    assert fakes.get(SID).released is True
    with pytest.raises(NotFound):
        await fakes.node.lookup(TEAM, SID, Need.LIVE)


async def test_the_reaper_pauses_at_the_deadline_when_the_lifecycle_says_so(
    fakes: NodeFakes,
) -> None:
    await _running(fakes, on_timeout="pause")
    fakes.store.update_sandbox(SID, end_at=1.0)
    await fakes.node._reaper.tick()
    await fakes.settle()
    assert fakes.get(SID).state is SandboxState.PAUSED
    assert fakes.runtimes["runc"].containers[SID] == "paused"
