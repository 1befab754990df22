"""The metrics sampler and the series read: who is sampled, what a vanishing sandbox does,
the cadence, retention, the fresh sample of a read, and the range's bounds."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping

import pytest

from declawd.errors import InvalidInput
from declawd.node.create import CreateRequest
from declawd.node.metrics import MetricsSampler, parse_range, series
from declawd.node.node import KILLABLE, Node
from declawd.runtime import cgroups as cg
from declawd.store import SandboxRecord, SandboxState
from declawd.store.metrics import MetricsSample
from tests.unit.node.fakes import TEAM, NodeFakes, record, sandbox_id, template

RUNNING, PAUSED, CREATING, KILLED = (sandbox_id(n) for n in (1, 2, 3, 4))
NOW = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Reader:
    """`Node.metrics` stand-in: fixed readings, per-sandbox errors and side effects."""

    def __init__(self, cpu: float = 50.0) -> None:
        self.cpu = cpu
        self.fail: dict[str, BaseException] = {}
        self.during: dict[str, Callable[[], None]] = {}
        self.read: list[str] = []

    def __call__(self, rec: SandboxRecord) -> Mapping[str, float]:
        self.read.append(rec.sandbox_id)
        if rec.sandbox_id in self.during:
            self.during[rec.sandbox_id]()
        if rec.sandbox_id in self.fail:
            raise self.fail[rec.sandbox_id]
        return {"cpu_usage_percent": self.cpu, "memory_usage_mb": 64.5, "disk_usage_mb": 3.25}


def _populate(fakes: NodeFakes) -> None:
    fakes.insert(record(RUNNING, SandboxState.RUNNING))
    fakes.insert(record(PAUSED, SandboxState.PAUSED, paused_at=NOW - 10, remaining_s=100.0))
    fakes.insert(record(CREATING, SandboxState.CREATING))
    fakes.insert(record(KILLED, SandboxState.KILLED, killed_at=NOW - 5, released=True))


def _sampler(
    fakes: NodeFakes, reader: Reader, clock: Clock, retention_s: float = 3600, keep: int = 100
) -> MetricsSampler:
    return MetricsSampler(fakes.parts, 5.0, reader, clock=clock, retention_s=retention_s, keep=keep)


async def test_a_tick_samples_running_and_paused_sandboxes_paused_at_cpu_0(
    fakes: NodeFakes,
) -> None:
    _populate(fakes)
    reader = Reader(cpu=50.0)
    stored = await _sampler(fakes, reader, Clock()).tick()
    assert sorted(reader.read) == [RUNNING, PAUSED]
    assert sorted(stored, key=lambda s: s.sandbox_id) == [
        MetricsSample(RUNNING, NOW, 50.0, 64.5, 3.25),
        MetricsSample(PAUSED, NOW, 0.0, 64.5, 3.25),
    ]
    assert fakes.store.metrics_series(RUNNING) == [MetricsSample(RUNNING, NOW, 50.0, 64.5, 3.25)]
    assert fakes.store.metrics_series(PAUSED) == [MetricsSample(PAUSED, NOW, 0.0, 64.5, 3.25)]
    assert fakes.store.metrics_series(CREATING) == []
    assert fakes.store.metrics_series(KILLED) == []


async def test_a_sandbox_whose_cgroup_vanished_is_skipped_and_the_others_sampled(
    fakes: NodeFakes,
) -> None:
    _populate(fakes)
    reader = Reader()
    reader.fail[RUNNING] = FileNotFoundError("/sys/fs/cgroup/cpuacct/unit/x/cpuacct.usage")
    stored = await _sampler(fakes, reader, Clock()).tick()
    assert [s.sandbox_id for s in stored] == [PAUSED]
    assert fakes.store.metrics_series(RUNNING) == []


async def test_an_unexpected_reader_error_skips_only_that_sandbox(fakes: NodeFakes) -> None:
    _populate(fakes)
    reader = Reader()
    reader.fail[PAUSED] = KeyError("cpu_usage_percent")
    stored = await _sampler(fakes, reader, Clock()).tick()
    assert [s.sandbox_id for s in stored] == [RUNNING]


async def test_a_sandbox_killed_during_its_read_gets_no_sample_and_no_session_state(
    fakes: NodeFakes,
) -> None:
    _populate(fakes)
    reader = Reader()

    def killed_then_read() -> None:
        # The kill is accepted (and drops the session state) while our read is under way;
        # the read then records a CPU baseline again, as Node.metrics does.
        assert fakes.store.transition(RUNNING, KILLABLE, SandboxState.KILLED, killed_at=NOW)
        fakes.parts.sessions.cpu_percent(RUNNING, 123, 1.0)

    reader.during[RUNNING] = killed_then_read
    stored = await _sampler(fakes, reader, Clock()).tick()
    assert [s.sandbox_id for s in stored] == [PAUSED]
    assert fakes.store.metrics_series(RUNNING) == []
    assert RUNNING not in fakes.parts.sessions


async def test_run_samples_at_the_interval_until_stopped(fakes: NodeFakes) -> None:
    fakes.insert(record(RUNNING, SandboxState.RUNNING))
    sampler = MetricsSampler(fakes.parts, 0.05, Reader())
    sampler.start()
    await asyncio.sleep(0.33)
    await sampler.stop()
    ts = [s.ts for s in fakes.store.metrics_series(RUNNING)]
    assert 4 <= len(ts) <= 8, ts
    gaps = [b - a for a, b in itertools.pairwise(ts)]
    assert all(0.02 < g < 0.2 for g in gaps), gaps
    await asyncio.sleep(0.12)
    assert len(fakes.store.metrics_series(RUNNING)) == len(ts)


async def test_a_failing_pass_does_not_stop_the_sampler(
    fakes: NodeFakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes.insert(record(RUNNING, SandboxState.RUNNING))
    sampler = MetricsSampler(fakes.parts, 0.05, Reader())
    real = fakes.store.add_metrics_samples
    calls = {"n": 0}

    def flaky(samples: list[MetricsSample]) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("disk I/O error")
        real(samples)

    monkeypatch.setattr(fakes.store, "add_metrics_samples", flaky)
    sampler.start()
    await asyncio.sleep(0.2)
    await sampler.stop()
    assert calls["n"] >= 3
    assert len(fakes.store.metrics_series(RUNNING)) >= 2


def test_prune_drops_killed_series_after_retention_and_bounds_live_ones(
    fakes: NodeFakes,
) -> None:
    clock = Clock()
    long_ago, just_now = sandbox_id(5), sandbox_id(6)
    fakes.insert(record(RUNNING, SandboxState.RUNNING))
    fakes.insert(record(long_ago, SandboxState.KILLED, killed_at=NOW - 4000, released=True))
    fakes.insert(record(just_now, SandboxState.KILLED, killed_at=NOW - 100, released=True))
    fakes.store.add_metrics_samples(
        [
            MetricsSample(sid, NOW - 5000 + t, 1.0, 1.0, 1.0)
            for sid in (long_ago, just_now)
            for t in range(3)
        ]
        + [MetricsSample(RUNNING, NOW - 50 + t, 1.0, 1.0, 1.0) for t in range(10)]
    )
    _sampler(fakes, Reader(), clock, retention_s=3600, keep=3).prune()
    assert fakes.store.metrics_series(long_ago) == []
    assert len(fakes.store.metrics_series(just_now)) == 3
    assert [s.ts for s in fakes.store.metrics_series(RUNNING)] == [NOW - 43, NOW - 42, NOW - 41]


async def test_the_node_samples_with_its_own_reader_from_start_to_close(
    fakes: NodeFakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cg, "read_stats", lambda path: cg.Stats(10**9, 256 << 20, 3))
    fakes.settings.metrics_interval_s = 0.05
    node = Node(fakes.parts)
    rec = await node.create(CreateRequest(team_id=TEAM, template=template(), timeout=300))
    await node.start()
    try:
        await asyncio.sleep(0.2)
    finally:
        await node.close()
    got = fakes.store.metrics_series(rec.sandbox_id)
    assert len(got) >= 2
    assert {(s.memory_usage_mb, s.disk_usage_mb) for s in got} == {(256.0, 0.0)}
    await asyncio.sleep(0.1)
    assert len(fakes.store.metrics_series(rec.sandbox_id)) == len(got)


# the series read ---------------------------------------------------------------


def _stored(fakes: NodeFakes, sid: str, *ts: float) -> None:
    fakes.store.add_metrics_samples([MetricsSample(sid, t, 7.0, 1.0, 1.0) for t in ts])


def test_a_read_is_the_stored_range_plus_a_sample_now(fakes: NodeFakes) -> None:
    rec = fakes.insert(record(RUNNING, SandboxState.RUNNING))
    _stored(fakes, RUNNING, NOW - 15, NOW - 10, NOW - 5)
    got = series(fakes.store, Reader(cpu=80.0), rec, NOW - 12, None, NOW)
    assert got == [
        MetricsSample(RUNNING, NOW - 10, 7.0, 1.0, 1.0),
        MetricsSample(RUNNING, NOW - 5, 7.0, 1.0, 1.0),
        MetricsSample(RUNNING, NOW, 80.0, 64.5, 3.25),
    ]
    assert fakes.store.metrics_series(RUNNING)[-1].ts == NOW - 5  # the fresh one is not kept


def test_a_range_that_ends_before_now_or_starts_after_it_gets_no_fresh_sample(
    fakes: NodeFakes,
) -> None:
    rec = fakes.insert(record(RUNNING, SandboxState.RUNNING))
    _stored(fakes, RUNNING, NOW - 10, NOW - 5)
    reader = Reader()
    assert [s.ts for s in series(fakes.store, reader, rec, None, NOW - 6, NOW)] == [NOW - 10]
    assert series(fakes.store, reader, rec, NOW + 1, None, NOW) == []
    assert reader.read == []


def test_a_paused_sandbox_reads_cpu_0_now(fakes: NodeFakes) -> None:
    rec = fakes.insert(record(PAUSED, SandboxState.PAUSED))
    assert series(fakes.store, Reader(cpu=40.0), rec, None, None, NOW) == [
        MetricsSample(PAUSED, NOW, 0.0, 64.5, 3.25)
    ]


def test_a_creating_sandbox_has_no_series_and_is_not_read(fakes: NodeFakes) -> None:
    rec = fakes.insert(record(CREATING, SandboxState.CREATING))
    reader = Reader()
    assert series(fakes.store, reader, rec, None, None, NOW) == []
    assert reader.read == []


def test_a_sandbox_gone_before_the_fresh_read_returns_the_stored_series(
    fakes: NodeFakes,
) -> None:
    rec = fakes.insert(record(RUNNING, SandboxState.RUNNING))
    _stored(fakes, RUNNING, NOW - 5)
    reader = Reader()
    reader.fail[RUNNING] = FileNotFoundError("cgroup gone")
    assert [s.ts for s in series(fakes.store, reader, rec, None, None, NOW)] == [NOW - 5]


def test_the_fresh_sample_never_repeats_a_stored_instant(fakes: NodeFakes) -> None:
    rec = fakes.insert(record(RUNNING, SandboxState.RUNNING))
    _stored(fakes, RUNNING, NOW)
    assert [s.ts for s in series(fakes.store, Reader(), rec, None, None, NOW)] == [NOW]


# the range's bounds ------------------------------------------------------------


def test_naive_bounds_are_utc_and_offsets_are_honoured() -> None:
    assert parse_range("2023-11-14T22:13:20", None) == (NOW, None)
    assert parse_range(None, "2023-11-14T22:13:20.5+00:00") == (None, NOW + 0.5)
    assert parse_range("2023-11-15T00:13:20+02:00", "2023-11-14T22:13:21Z") == (NOW, NOW + 1)
    assert parse_range(None, None) == (None, None)
    assert parse_range("", "") == (None, None)


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("yesterday", None, "start: not an ISO 8601 date-time: 'yesterday'"),
        (None, "2023-13-01T00:00:00", "end: not an ISO 8601 date-time: '2023-13-01T00:00:00'"),
        ("2023-11-14T22:13:21", "2023-11-14T22:13:20", "end: must not be before start"),
    ],
)
def test_bad_bounds_name_their_field(start: str | None, end: str | None, message: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_range(start, end)
    assert exc.value.message == message


def test_the_sampler_needs_a_positive_interval(fakes: NodeFakes) -> None:
    with pytest.raises(ValueError, match="interval_s"):
        MetricsSampler(fakes.parts, 0, Reader())


async def test_the_series_walks_a_sandboxs_disk_at_its_own_cadence() -> None:
    """The sampler may reuse a disk walk younger than its bound (a walk of every upper dir
    each interval is what costs with hundreds of sandboxes); a live read always walks, and
    a dropped sandbox's figure is gone with it."""
    from pathlib import Path

    from declawd.node.sessions import Sessions

    now = [100.0]
    sessions = Sessions(lambda sid: Path("/nowhere") / sid, clock=lambda: now[0])
    walks = itertools.count(1)

    def walk() -> int:
        return next(walks) * 1000

    assert sessions.disk_bytes("sbx-a", walk, 30.0) == 1000
    now[0] += 29.0
    assert sessions.disk_bytes("sbx-a", walk, 30.0) == 1000  # reused
    assert sessions.disk_bytes("sbx-a", walk, 0.0) == 2000  # a live read walks
    now[0] += 30.0
    assert sessions.disk_bytes("sbx-a", walk, 30.0) == 3000  # too old: walked again
    assert "sbx-a" in sessions
    await sessions.drop("sbx-a")
    assert "sbx-a" not in sessions
    assert sessions.disk_bytes("sbx-a", walk, 30.0) == 4000
