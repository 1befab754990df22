"""Snapshot records: round trip, newest-first order, paging, restore preference, team scope,
one snapshot being written per sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from declawd.errors import Busy, InvalidInput
from declawd.store import RecordNotFound, SandboxRecord, SandboxState, Store
from declawd.store.snapshots import (
    SnapshotRecord,
    SnapshotSource,
    SnapshotState,
    snapshot_of,
)

MANUAL, PAUSE, PERIODIC = SnapshotSource.MANUAL, SnapshotSource.PAUSE, SnapshotSource.PERIODIC
WRITING, READY, FAILED = SnapshotState.WRITING, SnapshotState.READY, SnapshotState.FAILED


@pytest.fixture
def store(db_target: Path | str) -> Iterator[Store]:
    with Store(db_target) as s:
        yield s


def _sandbox(**changes: Any) -> SandboxRecord:
    fields: dict[str, Any] = {
        "sandbox_id": "sbx-000000000001",
        "team_id": "team-a",
        "state": SandboxState.RUNNING,
        "template_id": "tpl-000000000001",
        "template_alias": "python",
        "runtime": "runsc",
        "created_at": 1000.0,
        "timeout": 600,
        "metadata": {"env": "prod"},
        "envs": {"A": "1"},
        "network": {"allow_out": ["1.1.1.1"], "deny_out": ["0.0.0.0/0"]},
        "security": {"pii": {"enabled": False}},
        "cpu_count": 2.0,
        "memory_mb": 1024,
        "lifecycle": {"on_timeout": "pause", "auto_resume": True},
        **changes,
    }
    return SandboxRecord(**fields)


def _snap(
    n: int,
    *,
    sandbox: str = "sbx-000000000001",
    team: str = "team-a",
    source: SnapshotSource = MANUAL,
    state: SnapshotState = READY,
    created_at: float | None = None,
) -> SnapshotRecord:
    rec = _sandbox(sandbox_id=sandbox, team_id=team)
    snap = snapshot_of(
        rec, source, snapshot_id=f"snap-{n:012x}", created_at=created_at or 2000.0 + n
    )
    return snap.replace(state=state)


def _ids(snaps: list[SnapshotRecord]) -> list[str]:
    return [s.snapshot_id for s in snaps]


def test_a_snapshot_keeps_the_sandbox_as_it_was_at_capture(store: Store) -> None:
    snap = snapshot_of(_sandbox(), "pause", snapshot_id="snap-00000000000a", created_at=5.5)
    assert snap.state is WRITING and snap.source is PAUSE
    store.insert_snapshot(snap)
    store.update_snapshot(snap.snapshot_id, state=READY, fs_bytes=4096, pause_duration_ms=12)

    got = store.get_snapshot("snap-00000000000a")
    assert got == snap.replace(state=READY, fs_bytes=4096, pause_duration_ms=12)
    assert (got.template_id, got.template_alias, got.runtime) == (
        "tpl-000000000001",
        "python",
        "runsc",
    )
    assert got.network == {"allow_out": ["1.1.1.1"], "deny_out": ["0.0.0.0/0"]}
    assert got.security == {"pii": {"enabled": False}}
    assert (got.envs, got.metadata) == ({"A": "1"}, {"env": "prod"})
    assert got.lifecycle == {"on_timeout": "pause", "auto_resume": True}
    assert (got.timeout, got.cpu_count, got.memory_mb) == (600, 2.0, 1024)
    assert got.mem_bytes is None and got.error is None


def test_update_and_get_reject_what_they_do_not_know(store: Store) -> None:
    store.insert_snapshot(_snap(1))
    with pytest.raises(RecordNotFound):
        store.update_snapshot("snap-0000000000ff", state=FAILED)
    with pytest.raises(TypeError, match="unknown field"):
        store.update_snapshot("snap-000000000001", colour="red")
    with pytest.raises(TypeError, match="cannot be changed"):
        store.update_snapshot("snap-000000000001", snapshot_id="snap-000000000002")
    with pytest.raises(ValueError):
        store.update_snapshot("snap-000000000001", state="half-done")


def test_get_is_team_scoped(store: Store) -> None:
    store.insert_snapshot(_snap(1, team="team-a"))
    assert store.get_snapshot("snap-000000000001", "team-a") is not None
    assert store.get_snapshot("snap-000000000001", "team-b") is None
    assert store.get_snapshot("snap-000000000001") is not None  # internal callers


def test_a_sandbox_lists_its_ready_snapshots_newest_first(store: Store) -> None:
    store.insert_snapshot(_snap(1, created_at=100.0))
    store.insert_snapshot(_snap(2, created_at=300.0, source=PAUSE))
    store.insert_snapshot(_snap(3, created_at=200.0, source=PERIODIC))
    store.insert_snapshot(_snap(4, created_at=400.0, state=FAILED))
    store.insert_snapshot(_snap(5, created_at=500.0, state=WRITING))
    store.insert_snapshot(_snap(6, created_at=600.0, sandbox="sbx-000000000002"))
    store.insert_snapshot(_snap(7, created_at=700.0, team="team-b", sandbox="sbx-00000000000b"))

    listed = store.list_sandbox_snapshots("team-a", "sbx-000000000001")
    assert _ids(listed) == ["snap-000000000002", "snap-000000000003", "snap-000000000001"]
    assert _ids(store.list_sandbox_snapshots("team-a", "sbx-000000000001", sources=[PERIODIC])) == [
        "snap-000000000003"
    ]
    every = store.list_sandbox_snapshots("team-a", "sbx-000000000001", states=None)
    assert _ids(every)[:2] == ["snap-000000000005", "snap-000000000004"]
    assert store.list_sandbox_snapshots("team-b", "sbx-000000000001") == []


def test_equal_times_order_by_id_so_the_order_is_total(store: Store) -> None:
    for n in (3, 1, 2):
        store.insert_snapshot(_snap(n, created_at=100.0))
    assert _ids(store.list_sandbox_snapshots("team-a", "sbx-000000000001")) == [
        "snap-000000000003",
        "snap-000000000002",
        "snap-000000000001",
    ]


def test_team_listing_pages_newest_first_without_gaps_or_repeats(store: Store) -> None:
    for n in range(1, 8):
        # two pairs share a timestamp: the token must break the tie by id
        store.insert_snapshot(_snap(n, created_at=float(100 + n // 2)))
    store.insert_snapshot(_snap(20, team="team-b"))
    store.insert_snapshot(_snap(21, state=FAILED))

    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        page, token = store.list_snapshots("team-a", limit=3, next_token=token)
        seen += _ids(page)
        pages += 1
        if token is None:
            break
    assert pages == 3
    assert seen == [f"snap-{n:012x}" for n in range(7, 0, -1)]
    # A snapshot taken between two pages lands before the first page, not in the next.
    page1, token = store.list_snapshots("team-a", limit=3)
    store.insert_snapshot(_snap(30, created_at=9999.0))
    page2, _ = store.list_snapshots("team-a", limit=3, next_token=token)
    assert _ids(page2) == ["snap-000000000004", "snap-000000000003", "snap-000000000002"]


def test_team_listing_filters_by_sandbox(store: Store) -> None:
    store.insert_snapshot(_snap(1))
    store.insert_snapshot(_snap(2, sandbox="sbx-000000000002"))
    page, token = store.list_snapshots("team-a", sandbox_id="sbx-000000000002")
    assert (_ids(page), token) == (["snap-000000000002"], None)
    assert store.list_snapshots("team-b", sandbox_id="sbx-000000000002") == ([], None)


def test_listing_rejects_bad_limits_and_tokens(store: Store) -> None:
    with pytest.raises(InvalidInput, match="limit: must be at least 1"):
        store.list_snapshots("team-a", limit=0)
    with pytest.raises(InvalidInput, match="next_token: invalid pagination token"):
        store.list_snapshots("team-a", next_token="bm90LWEtdG9rZW4")
    with pytest.raises(InvalidInput, match="next_token"):
        store.list_snapshots("team-a", next_token="!!!")


@pytest.mark.parametrize(
    ("present", "expected"),
    [
        # (n, source, created_at, state)
        ([(1, MANUAL, 900.0, READY), (2, PERIODIC, 100.0, READY), (3, PAUSE, 50.0, READY)], 3),
        ([(1, MANUAL, 900.0, READY), (2, PERIODIC, 100.0, READY), (3, PERIODIC, 200.0, READY)], 3),
        ([(1, MANUAL, 900.0, READY), (2, MANUAL, 950.0, READY), (3, PAUSE, 999.0, FAILED)], 2),
        ([(1, PAUSE, 900.0, WRITING), (2, MANUAL, 100.0, READY)], 2),
        ([(1, PAUSE, 900.0, FAILED)], None),
        ([], None),
    ],
    ids=[
        "pause-wins",
        "newest-periodic",
        "failed-pause-skipped",
        "writing-skipped",
        "none",
        "empty",
    ],
)
def test_latest_prefers_pause_then_periodic_then_manual(
    store: Store,
    present: list[tuple[int, SnapshotSource, float, SnapshotState]],
    expected: int | None,
) -> None:
    for n, source, at, state in present:
        store.insert_snapshot(_snap(n, source=source, created_at=at, state=state))
    store.insert_snapshot(_snap(50, source=PAUSE, created_at=5000.0, team="team-b"))
    store.insert_snapshot(_snap(51, source=PAUSE, created_at=5000.0, sandbox="sbx-000000000002"))

    latest = store.latest_snapshot("team-a", "sbx-000000000001")
    assert (latest.snapshot_id if latest else None) == (
        f"snap-{expected:012x}" if expected else None
    )


def test_only_one_snapshot_of_a_sandbox_is_written_at_a_time(store: Store) -> None:
    store.insert_snapshot(_snap(1, state=WRITING))
    with pytest.raises(Busy, match="snap-000000000001.* still being written") as err:
        store.insert_snapshot(_snap(2, state=WRITING))
    assert err.value.retry_after > 0
    assert store.get_snapshot("snap-000000000002") is None
    # other sandboxes and finished records are not held up
    store.insert_snapshot(_snap(3, state=WRITING, sandbox="sbx-000000000002"))
    store.insert_snapshot(_snap(4, state=READY))
    assert store.writing_snapshot("sbx-000000000001").snapshot_id == "snap-000000000001"
    store.update_snapshot("snap-000000000001", state=READY)
    assert store.writing_snapshot("sbx-000000000001") is None
    store.insert_snapshot(_snap(2, state=WRITING))


def test_delete_forgets_the_record_once(store: Store) -> None:
    store.insert_snapshot(_snap(1))
    store.insert_snapshot(_snap(2))
    assert store.delete_snapshot("snap-000000000001") is True
    assert store.delete_snapshot("snap-000000000001") is False
    assert store.get_snapshot("snap-000000000001") is None
    assert store.snapshot_ids() == {"snap-000000000002"}


def test_the_sweep_finds_unfinished_snapshots_of_every_team(store: Store) -> None:
    store.insert_snapshot(_snap(1, state=WRITING, created_at=20.0))
    store.insert_snapshot(_snap(2, state=WRITING, team="team-b", sandbox="sbx-00000000000b"))
    store.insert_snapshot(_snap(3, state=READY))
    assert _ids(store.list_snapshots_in_state(WRITING)) == [
        "snap-000000000001",
        "snap-000000000002",
    ]


def test_snapshots_using_a_template_count_unless_failed(store: Store) -> None:
    assert store.count_snapshots_using("tpl-000000000001") == 0
    store.insert_snapshot(_snap(1))
    store.insert_snapshot(_snap(2, sandbox="sbx-000000000002", state=FAILED))
    assert store.count_snapshots_using("tpl-000000000001") == 1
    assert store.count_snapshots_using("tpl-000000000009") == 0
