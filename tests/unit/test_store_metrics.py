"""The metrics series: add, ordered range reads, the per-sandbox bound and retention."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from declawd.store import SandboxRecord, SandboxState, Store
from declawd.store.metrics import MetricsSample

SID = "sbx-000000000001"
OTHER = "sbx-000000000002"


@pytest.fixture
def store(db_target: Path | str) -> Iterator[Store]:
    with Store(db_target) as s:
        yield s


def _sample(ts: float, sid: str = SID, cpu: float = 1.0) -> MetricsSample:
    return MetricsSample(sid, ts, cpu, 64.0, 2.5)


def _sandbox(sid: str, state: SandboxState, killed_at: float | None = None) -> SandboxRecord:
    return SandboxRecord(
        sandbox_id=sid,
        team_id="team-a",
        state=state,
        template_id="tpl-000000000001",
        template_alias="base",
        runtime="runc",
        created_at=100.0,
        timeout=300,
        started_at=101.0,
        killed_at=killed_at,
    )


def test_series_is_oldest_first_and_only_the_sandboxes_own(store: Store) -> None:
    store.add_metrics_samples([_sample(30.0), _sample(10.0), _sample(20.0, OTHER), _sample(20.0)])
    assert [s.ts for s in store.metrics_series(SID)] == [10.0, 20.0, 30.0]
    assert store.metrics_series(OTHER) == [_sample(20.0, OTHER)]
    assert store.metrics_series("sbx-nosuchthing0") == []


def test_range_bounds_are_inclusive_and_optional(store: Store) -> None:
    store.add_metrics_samples([_sample(float(t)) for t in (10, 20, 30, 40)])
    assert [s.ts for s in store.metrics_series(SID, start=20.0)] == [20.0, 30.0, 40.0]
    assert [s.ts for s in store.metrics_series(SID, end=30.0)] == [10.0, 20.0, 30.0]
    assert [s.ts for s in store.metrics_series(SID, start=15.0, end=30.0)] == [20.0, 30.0]
    assert store.metrics_series(SID, start=41.0) == []


def test_a_timestamp_read_back_as_iso_names_its_sample_exactly(store: Store) -> None:
    ts = 1_700_000_123.4567891  # finer than the API's 6 digits
    store.add_metrics_samples([_sample(ts)])
    (stored,) = store.metrics_series(SID)
    assert stored.ts == 1_700_000_123.456789
    wire = datetime.fromtimestamp(stored.ts, UTC).isoformat()
    back = datetime.fromisoformat(wire).timestamp()
    assert store.metrics_series(SID, start=back, end=back) == [stored]


def test_a_second_sample_at_the_same_instant_is_ignored(store: Store) -> None:
    store.add_metrics_samples([_sample(10.0, cpu=5.0)])
    store.add_metrics_samples([_sample(10.0, cpu=99.0), _sample(11.0)])
    assert [(s.ts, s.cpu_usage_percent) for s in store.metrics_series(SID)] == [
        (10.0, 5.0),
        (11.0, 1.0),
    ]


def test_trim_keeps_the_newest_samples_of_that_sandbox_only(store: Store) -> None:
    store.add_metrics_samples([_sample(float(t)) for t in range(1, 11)])
    store.add_metrics_samples([_sample(float(t), OTHER) for t in range(1, 4)])
    assert store.trim_metrics(SID, 3) == 7
    assert [s.ts for s in store.metrics_series(SID)] == [8.0, 9.0, 10.0]
    assert len(store.metrics_series(OTHER)) == 3
    assert store.trim_metrics(SID, 3) == 0
    assert store.trim_metrics(OTHER, 5) == 0
    with pytest.raises(ValueError, match="keep"):
        store.trim_metrics(SID, 0)


def test_delete_drops_one_sandboxes_series(store: Store) -> None:
    store.add_metrics_samples([_sample(1.0), _sample(2.0), _sample(1.0, OTHER)])
    assert store.delete_metrics(SID) == 2
    assert store.metrics_series(SID) == []
    assert len(store.metrics_series(OTHER)) == 1
    assert store.delete_metrics(SID) == 0


def test_retention_drops_series_of_sandboxes_killed_before_the_cutoff(store: Store) -> None:
    old, recent, live = "sbx-killedlongag", "sbx-killedjustno", "sbx-stillrunning"
    store.insert_sandbox(_sandbox(old, SandboxState.KILLED, killed_at=500.0))
    store.insert_sandbox(_sandbox(recent, SandboxState.KILLED, killed_at=2000.0))
    store.insert_sandbox(_sandbox(live, SandboxState.RUNNING))
    store.add_metrics_samples([_sample(t, sid) for sid in (old, recent, live) for t in (1.0, 2.0)])
    assert store.delete_metrics_of_killed(1000.0) == 2
    assert store.metrics_series(old) == []
    assert len(store.metrics_series(recent)) == 2
    assert len(store.metrics_series(live)) == 2
