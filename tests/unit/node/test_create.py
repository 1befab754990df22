"""Creating a sandbox on a node of fakes, and the undo of a create that fails at any step."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from declawd.egress.policy import EgressPolicy
from declawd.errors import Busy, DeclawdError, Internal, NotFound, TimedOut
from declawd.inspect.model import InspectionPolicy
from declawd.node import create as create_module
from declawd.node.create import CreateRequest
from declawd.node.faults import Faults
from declawd.node.node import Need
from declawd.node.spec import ENVD_BIN_IN_SANDBOX, STATX_SHIM_IN_SANDBOX
from declawd.node.trust import CA_BUNDLE_IN_SANDBOX, SYSTEM_BUNDLE_IN_SANDBOX, trust_env
from declawd.store import SandboxState
from declawd.templates.model import start_script
from tests.unit.node.fakes import (
    TEAM,
    NodeFakes,
    sandbox_id,
    template,
)

SID = sandbox_id(1)


def _request(**changes: object) -> CreateRequest:
    req = CreateRequest(team_id=TEAM, template=template(), timeout=300)
    for name, value in changes.items():
        setattr(req, name, value)
    return req


# The happy path -----------------------------------------------------------------------


async def test_create_ends_running_with_everything_made(fakes: NodeFakes) -> None:
    policy = EgressPolicy.parse(["1.2.3.4/32"], [])
    before = time.time()
    rec = await fakes.node.create(_request(metadata={"a": "b"}, policy=policy))

    assert rec.sandbox_id == SID
    assert rec.state is SandboxState.RUNNING and rec.released is False
    assert rec.started_at is not None and before <= rec.started_at <= time.time()
    assert fakes.get(SID) == rec
    assert (rec.slot, rec.address, rec.runtime) == (1, "10.77.1.2", "runc")
    assert (rec.template_id, rec.template_alias, rec.metadata) == (
        "tpl-000000000001",
        "base",
        {"a": "b"},
    )
    assert rec.end_at == pytest.approx(rec.created_at + 300)
    assert rec.network == {"allow_out": ["1.2.3.4/32"], "deny_out": []}

    plan = fakes.networks.networks[SID]
    assert (plan.slot, plan.address) == (1, "10.77.1.2")
    assert fakes.networks.policies[SID] == policy
    entry = fakes.gateway.entries[SID]
    assert (entry.slot, entry.address, entry.policy) == (1, "10.77.1.2", policy)
    assert entry.inspection == InspectionPolicy()  # nothing to inspect: all passthrough
    assert fakes.networks.inspect[SID] is False
    assert entry.ca is not None and entry.ca.dir == fakes.host.resources(SID).dir / "ca"
    assert fakes.host.prepared_with[SID] == (
        template().layer_paths,
        "10.77.1.2",
        "10.77.1.1",
    )
    assert fakes.runtime.containers == {SID: "running"}
    assert fakes.runtime.netns[SID] == plan.netns_path
    assert SID in fakes.host.rootfs and SID in fakes.host.cgroups
    assert fakes.envd.of(SID).started == []  # the template has no start command


async def test_spec_has_the_trust_bundle_mounts_and_the_sandboxes_netns(fakes: NodeFakes) -> None:
    await fakes.node.create(_request())
    spec = fakes.host.specs[SID]
    mounts = spec["mounts"]
    bundle = str(fakes.host.resources(SID).dir / "trust" / "ca-bundle.pem")
    for target in (CA_BUNDLE_IN_SANDBOX, SYSTEM_BUNDLE_IN_SANDBOX):
        assert {
            "destination": target,
            "type": "bind",
            "source": bundle,
            "options": ["bind", "ro", "nosuid", "nodev", "noexec"],
        } in mounts
    assert any(m["destination"] == ENVD_BIN_IN_SANDBOX for m in mounts)
    assert any(m["destination"] == "/run/declawd/cgroup/memory.tasks" for m in mounts)  # runc
    netns = [n for n in spec["linux"]["namespaces"] if n["type"] == "network"]
    assert netns == [{"type": "network", "path": fakes.networks.networks[SID].netns_path}]
    assert spec["linux"]["cgroupsPath"] == f"/unit/{SID}"
    assert spec["root"]["path"] == str(fakes.host.resources(SID).rootfs)


async def test_runsc_sandbox_gets_compat_mounts_and_no_command_cgroups(
    fakes: NodeFakes,
) -> None:
    rec = await fakes.node.create(_request(runtime="runsc"))
    assert rec.runtime == "runsc"
    assert fakes.runtimes["runsc"].containers == {SID: "running"}
    assert fakes.runtime.containers == {}
    destinations = [m["destination"] for m in fakes.host.specs[SID]["mounts"]]
    assert STATX_SHIM_IN_SANDBOX in destinations and "/etc/ld.so.preload" in destinations
    assert CA_BUNDLE_IN_SANDBOX in destinations and SYSTEM_BUNDLE_IN_SANDBOX in destinations
    assert "/run/declawd/cgroup/memory.tasks" not in destinations
    assert fakes.host.cgroups == set()


async def test_envs_and_the_start_command(fakes: NodeFakes) -> None:
    tpl = template(
        start_cmd="python -m http.server",
        envs={"FROM_TEMPLATE": "t", "SHARED": "template"},
        user="app",
        workdir="/srv",
    )
    req = _request(
        template=tpl,
        envs={"SHARED": "request", "DECLAW_SANDBOX": "false", "DECLAW_TEMPLATE_ID": "x"},
    )
    rec = await fakes.node.create(req)
    envs = fakes.node.envs(rec)
    assert envs == {
        **trust_env(),
        "FROM_TEMPLATE": "t",
        "SHARED": "request",
        "DECLAW_SANDBOX": "true",
        "DECLAW_SANDBOX_ID": SID,
        "DECLAW_TEMPLATE_ID": "tpl-000000000001",
    }
    assert fakes.envd.of(SID).started == [
        (
            start_script("python -m http.server"),
            {"user": "app", "envs": envs, "cwd": "/srv", "tag": "start_cmd"},
        )
    ]


async def test_ready_command_is_retried_until_it_passes(fakes: NodeFakes) -> None:
    fakes.envd.ready_exit_codes = [1, 1, 0]
    tpl = template(start_cmd="serve", ready_cmd="curl -f localhost", ready_timeout=30)
    rec = await fakes.node.create(_request(template=tpl))
    assert rec.state is SandboxState.RUNNING
    ran = fakes.envd.of(SID).ran
    assert [cmd for cmd, _ in ran] == ["curl -f localhost"] * 3
    assert ran[0][1]["envs"] == fakes.node.envs(rec)


async def test_record_is_creating_until_the_steps_finish(fakes: NodeFakes) -> None:
    gate = fakes.steps.gate("networks.create")
    task = asyncio.create_task(fakes.node.create(_request()))
    while fakes.steps.count("networks.create") == 0:
        await asyncio.sleep(0.001)
    rec = fakes.get(SID)
    assert (rec.state, rec.started_at, rec.slot) == (SandboxState.CREATING, None, 1)
    assert (await fakes.node.lookup(TEAM, SID, Need.LIVE)).state is SandboxState.CREATING
    with pytest.raises(Busy):
        await fakes.node.lookup(TEAM, SID, Need.RUNNING)
    listed = fakes.store.list_sandboxes(TEAM)[0]
    assert [(r.sandbox_id, r.state) for r in listed] == [(SID, SandboxState.CREATING)]
    gate.set()
    done = await task
    assert done.state is SandboxState.RUNNING
    assert [r.sandbox_id for r in fakes.store.list_sandboxes(TEAM)[0]] == [SID]


async def test_container_starts_in_the_netns_while_its_link_and_rules_are_made(
    fakes: NodeFakes,
) -> None:
    gate = fakes.steps.gate("networks.create")  # the netns exists; link and rules pending
    task = asyncio.create_task(fakes.node.create(_request()))
    while fakes.steps.count("runc.run_detached") == 0:
        await asyncio.sleep(0.001)
    calls = fakes.steps.calls
    assert calls.index("networks.netns") < calls.index("runc.run_detached")
    assert fakes.runtime.netns[SID] == fakes.networks.networks[SID].netns_path
    await asyncio.sleep(0.01)
    assert not task.done()  # nothing starts inside, and create does not answer, before them
    assert fakes.steps.count("envd.start") == 0
    gate.set()
    assert (await task).state is SandboxState.RUNNING


async def test_slots_are_distinct_for_concurrent_creates(fakes: NodeFakes) -> None:
    recs = await asyncio.gather(*(fakes.node.create(_request()) for _ in range(5)))
    assert sorted(r.slot for r in recs) == [1, 2, 3, 4, 5]
    assert len(fakes.networks.networks) == len(fakes.runtime.containers) == 5


# Failures at every step ---------------------------------------------------------------

FAULT_POINTS = [
    "create.after_record",
    "create.after_slot",
    "create.after_network",
    "create.after_gateway",
    "create.after_rootfs",
    "create.after_container",
    "create.after_envd",
    "create.after_start",
]

FAILING_STEPS = [
    "networks.netns",  # before the netns exists: the container branch must not wait on it
    "networks.create",
    "gateway.upsert",
    "host.prepare",
    "host.command_cgroups",
    "host.write_spec",
    "runc.run_detached",
    "envd.start",
]

START_TEMPLATE = template(start_cmd="serve")


async def _create_fails(fakes: NodeFakes, cause: str) -> DeclawdError:
    """Create, expect it to fail with `cause`, and check the undo left nothing."""
    with pytest.raises(DeclawdError) as raised:
        await fakes.node.create(_request(template=START_TEMPLATE))
    err = raised.value
    assert cause in err.message
    rec = fakes.get(SID)
    assert rec.state is SandboxState.KILLED
    assert rec.error is not None and cause in rec.error
    assert "undo incomplete" not in rec.error
    assert rec.released is True and rec.killed_at is not None and rec.started_at is None
    assert fakes.leftovers(SID) == {}
    assert fakes.store.list_unreleased_sandboxes() == []
    assert all(c.closed for c in fakes.envd.clients)
    with pytest.raises(NotFound):  # a create that never started is not there for users
        await fakes.node.lookup(TEAM, SID, Need.RECORD)
    return err


async def _next_create_reuses_the_slot(fakes: NodeFakes) -> None:
    fakes.parts.faults = Faults()
    fakes.host.envd_listens = True
    rec = await fakes.node.create(_request())
    assert (rec.sandbox_id, rec.slot) == (sandbox_id(2), 1)


@pytest.mark.parametrize("point", FAULT_POINTS)
async def test_fault_at_each_create_step_is_undone(tmp_path: Path, point: str) -> None:
    with NodeFakes.build(tmp_path, faults=Faults({point: "raise"})) as fakes:
        err = await _create_fails(fakes, f"injected fault at {point}")
        assert isinstance(err, Internal)
        assert err.message == f"sandbox create failed: injected fault at {point}"
        await _next_create_reuses_the_slot(fakes)


@pytest.mark.parametrize("step", FAILING_STEPS)
async def test_failing_step_is_undone(fakes: NodeFakes, step: str) -> None:
    fakes.steps.fail(step)
    err = await _create_fails(fakes, f"{step} broke")
    assert isinstance(err, Internal)
    assert step in fakes.steps.calls
    fakes.steps.heal(step)
    await _next_create_reuses_the_slot(fakes)


async def test_envd_that_never_listens_is_undone(
    fakes: NodeFakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(create_module, "ENVD_READY_TIMEOUT", 0.05)
    fakes.host.envd_listens = False
    err = await _create_fails(fakes, "envd did not come up")
    assert isinstance(err, Internal)
    assert "envd: fake log tail" in err.message  # the container's log says why
    assert fakes.steps.count("envd.start") == 0
    await _next_create_reuses_the_slot(fakes)


async def test_ready_command_that_never_passes_times_out_and_is_undone(
    fakes: NodeFakes,
) -> None:
    fakes.envd.ready_exit_codes = [1] * 100
    tpl = template(start_cmd="serve", ready_cmd="false", ready_timeout=0.01)
    with pytest.raises(TimedOut) as raised:
        await fakes.node.create(_request(template=tpl))
    assert raised.value.code == "start_cmd_not_ready"
    rec = fakes.get(SID)
    assert (rec.state, rec.released) == (SandboxState.KILLED, True)
    assert rec.error is not None and "ready_cmd 'false' still failing" in rec.error
    assert fakes.leftovers(SID) == {}


async def test_create_cancelled_midway_is_undone(fakes: NodeFakes) -> None:
    gate = fakes.steps.gate("networks.create")
    task = asyncio.create_task(fakes.node.create(_request()))
    while fakes.steps.count("networks.create") == 0:
        await asyncio.sleep(0.001)
    task.cancel()
    await asyncio.sleep(0.01)
    assert not task.done()  # the network step is still running: the undo waits for it
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    rec = fakes.get(SID)
    assert (rec.state, rec.released) == (SandboxState.KILLED, True)
    assert fakes.leftovers(SID) == {}


async def test_undo_that_fails_is_reported_and_keeps_the_slot(fakes: NodeFakes) -> None:
    fakes.parts.faults = Faults({"create.after_container": "raise"})
    fakes.steps.fail("networks.destroy")
    with pytest.raises(Internal) as raised:
        await fakes.node.create(_request())
    assert "injected fault at create.after_container" in raised.value.message
    rec = fakes.get(SID)
    assert rec.state is SandboxState.KILLED and rec.released is False
    assert rec.error == (
        "injected fault at create.after_container; undo incomplete: network: networks.destroy broke"
    )
    # only the network is left, and the slot stays held for it
    assert fakes.leftovers(SID) == {"network": fakes.networks.networks[SID]}
    assert [r.sandbox_id for r in fakes.store.list_unreleased_sandboxes()] == [SID]
    fakes.parts.faults = Faults()
    fakes.steps.heal("networks.destroy")
    nxt = await fakes.node.create(_request())
    assert nxt.slot == 2
