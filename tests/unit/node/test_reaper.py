"""The reaper: timeouts kill, a dead container is reported as such, failed teardowns retried."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from declawd.node.create import CreateRequest
from declawd.node.reaper import RETRY_RELEASE_AFTER_S, Reaper, envd_listening
from declawd.store import SandboxRecord, SandboxState
from tests.unit.node.fakes import TEAM, NodeFakes, sandbox_id, template

SID = sandbox_id(1)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Harness:
    """A reaper on the node's own kill, with its spawned work awaited by `tick`."""

    def __init__(self, fakes: NodeFakes) -> None:
        self.clock = Clock()
        self.spawned: list[asyncio.Task[Any]] = []
        self.kills: list[tuple[str, str | None]] = []
        self.reaper = Reaper(fakes.parts, self._kill, self._spawn, clock=self.clock)
        self._node = fakes.node

    async def _kill(self, sandbox_id: str, error: str | None) -> bool:
        self.kills.append((sandbox_id, error))
        return await self._node._kill_with_error(sandbox_id, error)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.spawned.append(asyncio.ensure_future(coro))

    async def tick(self) -> None:
        await self.reaper.tick()
        await asyncio.gather(*self.spawned)
        self.spawned.clear()


@pytest.fixture
def reaper(fakes: NodeFakes) -> Harness:
    return Harness(fakes)


async def _running(fakes: NodeFakes) -> SandboxRecord:
    return await fakes.node.create(CreateRequest(team_id=TEAM, template=template(), timeout=300))


async def test_a_sandbox_past_its_end_is_killed(fakes: NodeFakes, reaper: Harness) -> None:
    rec = await _running(fakes)
    assert rec.end_at is not None
    reaper.clock.now = rec.end_at - 1
    await reaper.tick()
    assert reaper.kills == []
    reaper.clock.now = rec.end_at
    await reaper.tick()
    assert reaper.kills == [(SID, None)]
    got = fakes.get(SID)
    assert (got.state, got.released, got.error) == (SandboxState.KILLED, True, None)
    assert fakes.leftovers(SID) == {}


async def test_a_sandbox_whose_container_stopped_is_killed_as_dead(
    fakes: NodeFakes, reaper: Harness
) -> None:
    await _running(fakes)  # the fake's socket is a plain file: nothing accepts on it
    fakes.runtime.containers[SID] = "stopped"
    await reaper.tick()
    got = fakes.get(SID)
    assert got.state is SandboxState.KILLED and got.released is True
    assert got.error == (
        "sandbox died: its container is stopped "
        "(out of memory or pids limit under runsc, or envd exited)"
    )
    assert fakes.leftovers(SID) == {}


async def test_a_sandbox_whose_container_is_gone_is_killed_as_dead(
    fakes: NodeFakes, reaper: Harness
) -> None:
    await _running(fakes)
    del fakes.runtime.containers[SID]
    await reaper.tick()
    got = fakes.get(SID)
    assert got.error is not None and got.error.startswith("sandbox died: its container is gone")


async def test_a_quiet_socket_with_a_running_container_is_left_alone(
    fakes: NodeFakes, reaper: Harness
) -> None:
    rec = await _running(fakes)
    await reaper.tick()
    assert reaper.kills == []
    assert fakes.get(SID) == rec


async def test_a_sandbox_being_reaped_is_not_reaped_twice(
    fakes: NodeFakes, reaper: Harness
) -> None:
    rec = await _running(fakes)
    assert rec.end_at is not None
    reaper.clock.now = rec.end_at + 1
    gate = fakes.steps.gate("host.release")
    await reaper.reaper.tick()
    while not reaper.kills:
        await asyncio.sleep(0.001)
    await reaper.reaper.tick()  # the first kill is still tearing down
    gate.set()
    await asyncio.gather(*reaper.spawned)
    assert reaper.kills == [(SID, None)]
    assert fakes.steps.count("host.release") == 1


async def test_a_failed_teardown_is_retried_after_a_while(
    fakes: NodeFakes, reaper: Harness
) -> None:
    await _running(fakes)
    fakes.steps.fail("gateway.remove")
    await fakes.node.kill(SID)
    killed = fakes.get(SID)
    assert killed.released is False and killed.killed_at is not None
    fakes.steps.heal("gateway.remove")
    reaper.clock.now = killed.killed_at + RETRY_RELEASE_AFTER_S - 1
    await reaper.tick()
    assert fakes.get(SID).released is False and fakes.steps.count("host.release") == 1
    reaper.clock.now = killed.killed_at + RETRY_RELEASE_AFTER_S
    await reaper.tick()
    assert fakes.get(SID).released is True
    assert fakes.leftovers(SID) == {}
    assert reaper.kills == []  # a retry is a release, not another kill


def test_envd_listening(tmp_path: Path) -> None:
    path = tmp_path / "envd.sock"
    assert envd_listening(path) is False  # nothing there
    path.touch()
    assert envd_listening(path) is False  # a file, not a socket
    path.unlink()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        assert envd_listening(path) is False  # bound but not listening
        listener.listen()
        assert envd_listening(path) is True


async def test_each_running_sandbox_is_probed_once_per_probe_interval(
    fakes: NodeFakes, reaper: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from declawd.node import reaper as reaping

    await _running(fakes)
    probed: list[Path] = []

    def probe(path: Path) -> bool:
        probed.append(path)
        return True

    monkeypatch.setattr(reaping, "envd_listening", probe)
    await reaper.tick()
    assert len(probed) == 1
    reaper.clock.now += reaping.PROBE_EVERY_S - 0.5
    await reaper.tick()
    assert len(probed) == 1  # not due yet
    reaper.clock.now += 0.5
    await reaper.tick()
    assert len(probed) == 2
    assert reaper.kills == []
