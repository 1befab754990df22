"""`Node.lookup`: the one answer to "may this caller do this with that sandbox now?"."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from declawd.errors import Busy, Conflict, NotFound
from declawd.node.node import Need
from declawd.store import SandboxState
from tests.unit.node.fakes import TEAM, NodeFakes, record

CREATING, RUNNING, PAUSED, KILLED = (
    SandboxState.CREATING,
    SandboxState.RUNNING,
    SandboxState.PAUSED,
    SandboxState.KILLED,
)


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[NodeFakes]:
    with NodeFakes.build(tmp_path) as f:
        f.insert(record("sbx-creating", CREATING))
        f.insert(record("sbx-running", RUNNING))
        f.insert(record("sbx-paused", PAUSED))
        f.insert(record("sbx-killed", KILLED, killed_at=1100.0, released=True))
        f.insert(record("sbx-failed", KILLED, started_at=None, error="boom", released=True))
        f.insert(record("sbx-other", RUNNING, team_id="team-b"))
        yield f


async def _not_found(fakes: NodeFakes, sandbox_id: str, need: Need) -> None:
    with pytest.raises(NotFound) as raised:
        await fakes.node.lookup(TEAM, sandbox_id, need)
    assert raised.value.message == f"sandbox '{sandbox_id}' not found"
    assert not isinstance(raised.value, Conflict)


@pytest.mark.parametrize("need", list(Need))
@pytest.mark.parametrize("sandbox_id", ["sbx-other", "sbx-unknown", "sbx-failed"])
async def test_other_teams_unknown_and_never_started_are_not_found(
    fakes: NodeFakes, sandbox_id: str, need: Need
) -> None:
    await _not_found(fakes, sandbox_id, need)


async def test_the_owner_team_finds_its_sandbox(fakes: NodeFakes) -> None:
    rec = await fakes.node.lookup("team-b", "sbx-other", Need.RUNNING)
    assert rec == fakes.get("sbx-other")


@pytest.mark.parametrize(
    ("sandbox_id", "need"),
    [
        *(
            (sid, need)
            for sid in ("sbx-creating", "sbx-paused")
            for need in (Need.RECORD, Need.LIVE)
        ),
        *(("sbx-running", need) for need in Need),
    ],
)
async def test_live_sandboxes_are_found(fakes: NodeFakes, sandbox_id: str, need: Need) -> None:
    rec = await fakes.node.lookup(TEAM, sandbox_id, need)
    assert rec == fakes.get(sandbox_id)


async def test_running_need_on_a_creating_sandbox_is_busy(fakes: NodeFakes) -> None:
    with pytest.raises(Busy) as raised:
        await fakes.node.lookup(TEAM, "sbx-creating", Need.RUNNING)
    assert raised.value.message == "sandbox 'sbx-creating' is still being created"
    assert raised.value.retry_after > 0


async def test_running_need_on_a_paused_sandbox_conflicts(fakes: NodeFakes) -> None:
    with pytest.raises(Conflict) as raised:
        await fakes.node.lookup(TEAM, "sbx-paused", Need.RUNNING)
    assert type(raised.value) is Conflict  # not Busy: waiting will not help
    assert raised.value.code == "sandbox_paused"


async def test_a_killed_sandbox_is_only_a_record(fakes: NodeFakes) -> None:
    await _not_found(fakes, "sbx-killed", Need.LIVE)
    await _not_found(fakes, "sbx-killed", Need.RUNNING)
    rec = await fakes.node.lookup(TEAM, "sbx-killed", Need.RECORD)
    assert (rec.state, rec.killed_at) == (KILLED, 1100.0)


async def test_default_need_is_live(fakes: NodeFakes) -> None:
    assert (await fakes.node.lookup(TEAM, "sbx-paused")).state is PAUSED
    await _not_found(fakes, "sbx-killed", Need.LIVE)
    with pytest.raises(NotFound):
        await fakes.node.lookup(TEAM, "sbx-killed")
