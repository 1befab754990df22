"""The store's concurrency invariants, raced on both backends.

Each test opens two `Store`s on one database (two connection sets, as two API servers or
a server and a CLI would) and lets two threads hit the same invariant at once, released by
a barrier, for several rounds: an idempotency key is claimed once, a volume lease has one
holder, a state compare-and-set has one winner, slots stay distinct, one snapshot of a
sandbox is written at a time, two callers that saw the same stat agree on its version,
traffic tokens are issued once, and audit ids become visible in id order (a tailing reader
never skips one). On PostgreSQL each of these holds only because every write transaction
takes the store's write lock (store/pg.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from declawd.errors import Busy
from declawd.store import SandboxRecord, SandboxState, Store
from declawd.store.snapshots import SnapshotSource, snapshot_of
from declawd.store.volumes import FileStat, VolumeRecord

ROUNDS = 15


@pytest.fixture
def stores(db_target: Path | str) -> Iterator[tuple[Store, Store]]:
    with Store(db_target) as a, Store(db_target) as b:
        yield a, b


def race(a: Callable[[], Any], b: Callable[[], Any]) -> list[Any]:
    """Run `a` and `b` in two threads released together; their results (or exceptions)."""
    go = threading.Barrier(2)
    out: list[Any] = [None, None]

    def run(i: int, fn: Callable[[], Any]) -> None:
        go.wait(timeout=30)
        try:
            out[i] = fn()
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return out


def _sandbox(sid: str, state: SandboxState = SandboxState.CREATING) -> SandboxRecord:
    return SandboxRecord(
        sandbox_id=sid,
        team_id="team-a",
        state=state,
        template_id="tpl-000000000001",
        template_alias="base",
        runtime="runc",
        created_at=1000.0,
        timeout=300,
    )


def test_an_idempotency_key_is_claimed_once(stores: tuple[Store, Store]) -> None:
    a, b = stores
    for i in range(ROUNDS):
        key = f"key-{i}"
        got = race(
            lambda k=key: a.idempotency_begin("team-a", k, "h"),
            lambda k=key: b.idempotency_begin("team-a", k, "h"),
        )
        assert sorted(got) == [("in_progress", None), ("new", None)], got


def test_a_volume_lease_has_one_holder(stores: tuple[Store, Store]) -> None:
    a, b = stores
    a.insert_volume(VolumeRecord("vol-000000000001", "team-a", "v", 1.0, 1.0))
    for i in range(ROUNDS):
        path = f"/f{i}"
        got = race(
            lambda p=path: a.acquire_lock("vol-000000000001", p, 60.0),
            lambda p=path: b.acquire_lock("vol-000000000001", p, 60.0),
        )
        holders = [g for g in got if g is not None]
        assert len(holders) == 1, got
        assert a.lock_status("vol-000000000001", path) == holders[0]


def test_a_state_change_has_one_winner(stores: tuple[Store, Store]) -> None:
    a, b = stores
    for i in range(ROUNDS):
        sid = f"sbx-{i:012x}"
        a.insert_sandbox(_sandbox(sid, SandboxState.RUNNING))
        got = race(
            lambda s=sid: a.transition(s, [SandboxState.RUNNING], SandboxState.KILLED),
            lambda s=sid: b.transition(s, [SandboxState.RUNNING], SandboxState.KILLED),
        )
        winners = [g for g in got if g is not None]
        assert len(winners) == 1, got
        assert isinstance(winners[0], SandboxRecord)
        assert winners[0].state is SandboxState.RUNNING


def test_slots_stay_distinct(stores: tuple[Store, Store]) -> None:
    a, b = stores
    for i in range(ROUNDS):
        sa, sb = f"sbx-a{i:011x}", f"sbx-b{i:011x}"
        a.insert_sandbox(_sandbox(sa))
        b.insert_sandbox(_sandbox(sb))
        got = race(lambda s=sa: a.allocate_slot(s), lambda s=sb: b.allocate_slot(s))
        assert all(isinstance(g, int) for g in got), got
    slots = [s.slot for s in a.list_unreleased_sandboxes()]
    assert sorted(slots) == list(range(1, 2 * ROUNDS + 1))


def test_one_snapshot_of_a_sandbox_is_written_at_a_time(stores: tuple[Store, Store]) -> None:
    a, b = stores
    for i in range(ROUNDS):
        rec = _sandbox(f"sbx-{i:012x}", SandboxState.RUNNING)
        snaps = [
            snapshot_of(
                rec, SnapshotSource.MANUAL, snapshot_id=f"snap-{i:06x}{n:06x}", created_at=1.0
            )
            for n in range(2)
        ]
        got = race(lambda s=snaps[0]: a.insert_snapshot(s), lambda s=snaps[1]: b.insert_snapshot(s))
        assert sum(g is None for g in got) == 1, got
        assert sum(isinstance(g, Busy) for g in got) == 1, got


def test_two_callers_that_saw_one_stat_agree_on_its_version(
    stores: tuple[Store, Store],
) -> None:
    a, b = stores
    a.insert_volume(VolumeRecord("vol-000000000001", "team-a", "v", 1.0, 1.0))
    for i in range(ROUNDS):
        st = {f"/f{i}": FileStat(False, i, 0o644, i, i, 100 + i)}
        got = race(
            lambda st=st: a.file_versions("vol-000000000001", st),
            lambda st=st: b.file_versions("vol-000000000001", st),
        )
        assert got[0] == got[1], got
    # Versions were handed out once per change: one per round, never reused.
    assert a.file_versions("vol-000000000001", {f"/f{ROUNDS - 1}": None}) == {}
    row = a._db.query_one("SELECT version_seq FROM volumes")
    assert row is not None and row[0] == ROUNDS


def test_a_traffic_token_is_issued_once(stores: tuple[Store, Store]) -> None:
    a, b = stores
    for i in range(ROUNDS):
        sid = f"sbx-{i:012x}"
        got = race(lambda s=sid: a.ensure_traffic(s), lambda s=sid: b.ensure_traffic(s))
        assert got[0] == got[1] and got[0].token, got


def test_audit_ids_become_visible_in_order(stores: tuple[Store, Store]) -> None:
    """Two writers insert while a reader tails by id: the reader must see every event, so
    no id may commit after a larger one was already visible."""
    a, b = stores
    batches = 60
    done = threading.Event()
    seen: list[int] = []

    def tail() -> None:
        last = 0
        while True:
            finished = done.is_set()
            for event_id, _ in a.audit_after("sbx-t", last, limit=10_000):
                seen.append(event_id)
                last = event_id
            if finished:
                return

    def write(store: Store) -> None:
        for i in range(batches):
            store.insert_audit_events(
                [{"sandbox_id": "sbx-t", "kind": "dns", "verdict": "allow", "time": float(i)}] * 3
            )

    reader = threading.Thread(target=tail)
    reader.start()
    try:
        race(lambda: write(a), lambda: write(b))
    finally:
        done.set()
        reader.join(timeout=60)
    assert len(seen) == 2 * batches * 3
    assert seen == sorted(seen)
