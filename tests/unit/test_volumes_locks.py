"""Volume leases with an injected clock: held → 409, TTL expiry, renew, release, status."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from declawd.config import Settings
from declawd.errors import Conflict, InvalidInput, NotFound
from declawd.store import Store
from declawd.volumes import VolumeFiles, VolumeService


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db_target: Path | str, clock: Clock) -> Iterator[Store]:
    with Store(db_target, clock=clock) as s:
        yield s


@pytest.fixture
async def setup(tmp_path: Path, store: Store) -> tuple[VolumeFiles, str]:
    svc = VolumeService(Settings(state_dir=tmp_path / "state"), store, owner=None, guard=False)
    rec, _ = await svc.create("team-a", "v", None)
    return VolumeFiles(svc), rec.volume_id


async def test_a_held_lock_is_a_conflict_until_it_expires(
    setup: tuple[VolumeFiles, str], clock: Clock
) -> None:
    files, vid = setup
    path, lease = await files.acquire("team-a", vid, "jobs/1", 30.0)
    assert path == "/jobs/1"
    assert lease.expires_at == 1_030.0
    with pytest.raises(Conflict, match="/jobs/1 is locked") as exc:
        await files.acquire("team-a", vid, "/jobs/1", 30.0)
    assert exc.value.code == "locked"
    # another path is independent
    await files.acquire("team-a", vid, "/jobs/2", 30.0)
    status = await files.status("team-a", vid, "/jobs/1")
    assert status is not None and status.expires_at == 1_030.0
    clock.now = 1_030.0
    assert await files.status("team-a", vid, "/jobs/1") is None
    _, second = await files.acquire("team-a", vid, "/jobs/1", 10.0)
    assert second.token != lease.token
    # the first holder lost it: its token neither renews nor releases
    with pytest.raises(Conflict, match="does not hold the lock"):
        await files.renew("team-a", vid, "/jobs/1", lease.token, 30.0)
    with pytest.raises(Conflict):
        await files.release("team-a", vid, "/jobs/1", lease.token)


async def test_renew_extends_and_release_frees(
    setup: tuple[VolumeFiles, str], clock: Clock
) -> None:
    files, vid = setup
    _, lease = await files.acquire("team-a", vid, "/f", 10.0)
    clock.now = 1_009.0
    _, renewed = await files.renew("team-a", vid, "/f", lease.token, 60.0)
    assert (renewed.token, renewed.expires_at) == (lease.token, 1_069.0)
    clock.now = 1_060.0
    with pytest.raises(Conflict):
        await files.acquire("team-a", vid, "/f", 10.0)
    await files.release("team-a", vid, "/f", lease.token)
    assert await files.status("team-a", vid, "/f") is None
    with pytest.raises(Conflict):
        await files.release("team-a", vid, "/f", lease.token)
    await files.acquire("team-a", vid, "/f", 10.0)


async def test_an_expired_lease_cannot_be_renewed(
    setup: tuple[VolumeFiles, str], clock: Clock
) -> None:
    files, vid = setup
    _, lease = await files.acquire("team-a", vid, "/f", 5.0)
    clock.now = 1_005.0
    with pytest.raises(Conflict):
        await files.renew("team-a", vid, "/f", lease.token, 5.0)


async def test_lock_inputs_and_tenancy(setup: tuple[VolumeFiles, str]) -> None:
    files, vid = setup
    assert files.ttl(None) == 60.0
    for bad in (0, -1, 86401, True, "10"):
        with pytest.raises(InvalidInput, match="ttl_seconds"):
            files.ttl(bad)
    with pytest.raises(InvalidInput, match="token: is required"):
        await files.release("team-a", vid, "/f", None)
    with pytest.raises(NotFound):
        await files.acquire("team-b", vid, "/f", 10.0)
