"""Reconcile: the store says what should exist; the node's runtimes, host and networks agree."""

from __future__ import annotations

import pytest

from declawd.egress.policy import EgressPolicy
from declawd.node.create import CreateRequest
from declawd.node.parts import GatewayEntry
from declawd.node.reconcile import LOST, reconcile, sweep_strays
from declawd.store import SandboxRecord, SandboxState
from tests.unit.node.fakes import TEAM, NodeFakes, record, sandbox_id, template

SID = sandbox_id(1)


async def _running(fakes: NodeFakes) -> SandboxRecord:
    return await fakes.node.create(CreateRequest(team_id=TEAM, template=template(), timeout=300))


def _assert_lost(fakes: NodeFakes, sandbox_id: str) -> None:
    rec = fakes.get(sandbox_id)
    assert rec.state is SandboxState.KILLED
    assert rec.error == LOST == "lost during a server restart"
    assert rec.released is True and rec.killed_at is not None
    assert fakes.leftovers(sandbox_id) == {}


async def test_a_whole_running_sandbox_is_kept(fakes: NodeFakes) -> None:
    rec = await _running(fakes)
    assert await reconcile(fakes.parts) == {SID}
    assert fakes.get(SID) == rec
    held = fakes.leftovers(SID)
    assert set(held) == {
        "container",
        "network",
        "gateway entry",
        "CA",
        "rootfs",
        "cgroup",
        "directory",
        "session",
    }
    assert "host.release" not in fakes.steps.calls


async def test_running_in_the_store_but_stopped_on_the_host_is_killed(fakes: NodeFakes) -> None:
    await _running(fakes)
    fakes.runtime.containers[SID] = "stopped"
    assert await reconcile(fakes.parts) == set()
    _assert_lost(fakes, SID)


async def test_running_in_the_store_without_a_container_is_killed(fakes: NodeFakes) -> None:
    await _running(fakes)
    del fakes.runtime.containers[SID]
    await reconcile(fakes.parts)
    _assert_lost(fakes, SID)


async def test_running_without_its_envd_socket_is_killed(fakes: NodeFakes) -> None:
    await _running(fakes)
    fakes.host.resources(SID).envd_socket.unlink()
    await reconcile(fakes.parts)
    _assert_lost(fakes, SID)


async def test_a_create_in_progress_at_start_is_killed(fakes: NodeFakes) -> None:
    # what a server that died mid-create leaves: record, slot, network, rootfs, no container
    rec = fakes.insert(record(SID, SandboxState.CREATING, slot=1))
    plan = fakes.networks.plan(SID, 1)
    await fakes.networks.create(plan, EgressPolicy.open())
    fakes.host.prepare(SID, [], plan.address, plan.gateway_address)
    assert rec.started_at is None and set(fakes.leftovers(SID)) == {
        "network",
        "rootfs",
        "directory",
    }
    assert await reconcile(fakes.parts) == set()
    _assert_lost(fakes, SID)


async def test_a_paused_sandbox_survives_a_restart(fakes: NodeFakes) -> None:
    rec = await _running(fakes)
    await fakes.node.pause(rec)
    assert await reconcile(fakes.parts) == {SID}
    assert fakes.get(SID).state is SandboxState.PAUSED
    assert fakes.runtimes["runc"].containers[SID] == "paused"


@pytest.mark.parametrize(
    ("record", "container"),
    [(SandboxState.PAUSED, "running"), (SandboxState.RUNNING, "paused")],
)
async def test_a_crash_between_record_and_freeze_is_aligned_to_the_record(
    fakes: NodeFakes, record: SandboxState, container: str
) -> None:
    await _running(fakes)
    fakes.store.update_sandbox(SID, state=record)
    fakes.runtimes["runc"].containers[SID] = container
    assert await reconcile(fakes.parts) == {SID}
    assert fakes.get(SID).state is record
    assert fakes.runtimes["runc"].containers[SID] == record.value


async def test_a_killed_sandbox_not_yet_released_is_released(fakes: NodeFakes) -> None:
    await _running(fakes)
    fakes.steps.fail("networks.destroy")
    await fakes.node.kill(SID)
    assert fakes.get(SID).released is False
    fakes.steps.heal("networks.destroy")
    assert await reconcile(fakes.parts) == set()
    rec = fakes.get(SID)
    assert (rec.state, rec.released) == (SandboxState.KILLED, True)
    assert rec.error is not None and LOST not in rec.error  # it was killed, not lost
    assert fakes.leftovers(SID) == {}


async def test_a_killed_sandbox_whose_release_fails_again_stays_unreleased(
    fakes: NodeFakes,
) -> None:
    await _running(fakes)
    fakes.steps.fail("networks.destroy")
    await fakes.node.kill(SID)
    await reconcile(fakes.parts)
    rec = fakes.get(SID)
    assert rec.released is False
    assert rec.error is not None and rec.error.count("network: networks.destroy broke") == 2
    fakes.steps.heal("networks.destroy")
    await reconcile(fakes.parts)
    assert fakes.get(SID).released is True
    assert fakes.leftovers(SID) == {}


async def test_strays_no_record_accounts_for_are_removed(fakes: NodeFakes) -> None:
    await _running(fakes)
    fakes.runtime.containers["sbx-straycontain"] = "running"
    fakes.runtimes["runsc"].containers["sbx-strayrunsc00"] = "stopped"
    stray_dir = fakes.settings.sandbox_dir("sbx-straydir0000")
    (stray_dir / "rootfs").mkdir(parents=True)
    fakes.networks.networks["sbx-straynet0000"] = fakes.networks.plan("sbx-straynet0000", 9)
    fakes.gateway.entries["sbx-straygw00000"] = GatewayEntry(8, "10.77.8.2", EgressPolicy.open())
    # a record that is released holds nothing either
    fakes.insert(record("sbx-released0000", SandboxState.KILLED, released=True, slot=7))
    fakes.networks.networks["sbx-released0000"] = fakes.networks.plan("sbx-released0000", 7)

    assert await reconcile(fakes.parts) == {SID}

    assert fakes.runtime.containers == {SID: "running"}
    assert fakes.runtimes["runsc"].containers == {}
    assert not stray_dir.exists()
    assert fakes.host.present() == [SID]
    assert set(fakes.networks.networks) == {SID}
    assert set(fakes.gateway.entries) == {SID}
    assert fakes.get(SID).state is SandboxState.RUNNING


async def test_sweep_reports_what_it_could_not_remove_and_goes_on(fakes: NodeFakes) -> None:
    fakes.runtime.containers["sbx-straycontain"] = "running"
    fakes.runtimes["runsc"].containers["sbx-strayrunsc00"] = "running"
    fakes.settings.sandbox_dir("sbx-straydir0000").mkdir(parents=True)
    fakes.networks.networks["sbx-straynet0000"] = fakes.networks.plan("sbx-straynet0000", 9)
    fakes.steps.fail("runc.list")
    fakes.steps.fail("networks.sweep")
    failed = await sweep_strays(fakes.parts, set())
    assert failed == ["runc list: runc.list broke", "networks: networks.sweep broke"]
    assert fakes.runtime.containers == {"sbx-straycontain": "running"}  # could not list it
    assert fakes.runtimes["runsc"].containers == {}  # the other runtime was still swept
    assert fakes.host.present() == []
    assert "gateway.retain" in fakes.steps.calls


async def test_node_start_reconciles_before_traffic(fakes: NodeFakes) -> None:
    await _running(fakes)
    fakes.runtime.containers[SID] = "stopped"
    await fakes.node.start()
    try:
        _assert_lost(fakes, SID)
        calls = fakes.steps.calls
        assert calls.index("networks.ensure_gateway") < calls.index("networks.sweep")
        assert calls.index("gateway.retain") < calls.index("gateway.start")
        assert fakes.gateway.loaded and fakes.gateway.running and fakes.gateway.supervised
    finally:
        await fakes.node.close()
