"""Killing a sandbox: gone for users the moment it is accepted, torn down once, failures kept."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from declawd.errors import NotFound
from declawd.node.create import CreateRequest
from declawd.node.faults import Faults
from declawd.node.node import Need
from declawd.node.reconcile import reconcile
from declawd.runtime import cgroups
from declawd.store import SandboxRecord, SandboxState
from tests.unit.node.fakes import TEAM, NodeFakes, record, sandbox_id, template

SID = sandbox_id(1)


async def _running(fakes: NodeFakes) -> SandboxRecord:
    rec = await fakes.node.create(CreateRequest(team_id=TEAM, template=template(), timeout=300))
    fakes.node.envd(rec)  # a session, as a route would have opened
    assert SID in fakes.parts.sessions
    return rec


async def test_kill_without_wait_is_visible_before_the_teardown(fakes: NodeFakes) -> None:
    await _running(fakes)
    client = fakes.envd.of(SID)
    gate = fakes.steps.gate("host.release")

    assert await fakes.node.kill(SID, wait=False) is True

    rec = fakes.get(SID)
    assert rec.state is SandboxState.KILLED and rec.killed_at is not None
    assert rec.released is False and rec.error is None
    assert fakes.runtime.containers == {SID: "running"}  # teardown has not run yet
    assert SID not in fakes.parts.sessions and client.closed  # but nothing reaches it
    with pytest.raises(NotFound):
        await fakes.node.lookup(TEAM, SID, Need.LIVE)
    with pytest.raises(NotFound):
        await fakes.node.lookup(TEAM, SID, Need.RUNNING)
    assert fakes.store.list_sandboxes(TEAM) == ([], None)
    assert fakes.store.list_live_sandboxes() == []
    assert (await fakes.node.lookup(TEAM, SID, Need.RECORD)).state is SandboxState.KILLED

    gate.set()
    await fakes.settle()
    rec = fakes.get(SID)
    assert rec.released is True and rec.error is None
    assert fakes.leftovers(SID) == {}


async def test_kill_with_wait_has_torn_down_on_return(fakes: NodeFakes) -> None:
    await _running(fakes)
    assert await fakes.node.kill(SID) is True
    rec = fakes.get(SID)
    assert (rec.state, rec.released) == (SandboxState.KILLED, True)
    assert fakes.leftovers(SID) == {}
    assert fakes.node._background == set()


async def test_released_slot_goes_to_the_next_sandbox(fakes: NodeFakes) -> None:
    await _running(fakes)
    await fakes.node.kill(SID)
    nxt = await fakes.node.create(CreateRequest(team_id=TEAM, template=template(), timeout=60))
    assert nxt.slot == 1


async def test_two_concurrent_kills_tear_down_once(fakes: NodeFakes) -> None:
    await _running(fakes)
    results = await asyncio.gather(
        fakes.node.kill(SID, wait=False), fakes.node.kill(SID, wait=False)
    )
    await fakes.settle()
    assert sorted(results) == [False, True]
    assert fakes.steps.count("host.release") == 1
    assert fakes.steps.count("gateway.remove") == 1
    assert fakes.steps.count("networks.destroy") == 1
    assert fakes.get(SID).released is True


async def test_kill_of_a_paused_sandbox(fakes: NodeFakes) -> None:
    await _running(fakes)
    fakes.store.update_sandbox(SID, state=SandboxState.PAUSED)
    assert await fakes.node.kill(SID) is True
    assert fakes.get(SID).state is SandboxState.KILLED
    assert fakes.leftovers(SID) == {}


async def test_kill_of_a_creating_unknown_or_killed_sandbox_is_refused(fakes: NodeFakes) -> None:
    creating = fakes.insert(record(sandbox_id(7), SandboxState.CREATING, slot=3))
    assert await fakes.node.kill(creating.sandbox_id) is False
    assert fakes.get(creating.sandbox_id) == creating  # untouched: the create owns it
    assert await fakes.node.kill("sbx-nosuchthing0") is False
    await _running(fakes)
    assert await fakes.node.kill(SID) is True
    assert await fakes.node.kill(SID) is False
    assert fakes.steps.count("host.release") == 1


async def test_teardown_failure_is_recorded_and_finished_by_the_sweep(fakes: NodeFakes) -> None:
    await _running(fakes)
    fakes.steps.fail("gateway.remove")
    assert await fakes.node.kill(SID) is True
    rec = fakes.get(SID)
    assert rec.state is SandboxState.KILLED and rec.released is False
    assert rec.error == "teardown: gateway: gateway.remove broke"
    # everything else went; the entry and the slot stay for the sweep
    assert fakes.leftovers(SID) == {"gateway entry": fakes.gateway.entries[SID]}
    assert [r.sandbox_id for r in fakes.store.list_unreleased_sandboxes()] == [SID]
    fakes.steps.heal("gateway.remove")
    await reconcile(fakes.parts)
    assert fakes.get(SID).released is True
    assert fakes.leftovers(SID) == {}


async def test_container_kill_failure_keeps_the_directory(fakes: NodeFakes) -> None:
    await _running(fakes)
    fakes.steps.fail("runc.kill")
    await fakes.node.kill(SID)
    rec = fakes.get(SID)
    assert rec.released is False
    assert rec.error == "teardown: host: container: runc.kill broke"
    assert set(fakes.leftovers(SID)) == {"container", "directory"}


@pytest.mark.parametrize(
    "point",
    ["kill.before_runtime", "kill.after_runtime", "kill.after_gateway", "kill.after_network"],
)
async def test_fault_during_kill_leaves_it_unreleased(tmp_path: Path, point: str) -> None:
    with NodeFakes.build(tmp_path) as fakes:
        await _running(fakes)
        fakes.parts.faults = Faults({point: "raise"})
        assert await fakes.node.kill(SID) is True
        rec = fakes.get(SID)
        assert (rec.state, rec.released) == (SandboxState.KILLED, False)
        assert rec.error == f"teardown: injected fault at {point}"
        assert fakes.leftovers(SID) == {}  # every step still ran
        fakes.parts.faults = Faults()
        await reconcile(fakes.parts)
        assert fakes.get(SID).released is True


async def test_destroy_all_kills_every_live_sandbox_and_the_gateway(
    fakes: NodeFakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    removed: list[str] = []
    monkeypatch.setattr(cgroups, "remove_cgroup", removed.append)  # not the host's cgroups
    await _running(fakes)
    await fakes.node.create(CreateRequest(team_id="team-b", template=template(), timeout=60))
    await fakes.networks.ensure_gateway()
    assert await fakes.node.destroy_all() == 2
    assert fakes.store.list_unreleased_sandboxes() == []
    assert fakes.leftovers(SID) == {} and fakes.leftovers(sandbox_id(2)) == {}
    assert fakes.networks.gateway_up is False
    assert removed == ["/unit"]
