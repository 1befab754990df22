"""Sandbox records, listing/pagination, slots, state transitions, idempotency, metadata filter."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from declawd.errors import InvalidInput
from declawd.store import (
    Duplicate,
    RecordNotFound,
    SandboxRecord,
    SandboxState,
    Store,
    parse_metadata_query,
)

CREATING, RUNNING, PAUSED, KILLED = (
    SandboxState.CREATING,
    SandboxState.RUNNING,
    SandboxState.PAUSED,
    SandboxState.KILLED,
)


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(db_target: Path | str, clock: FakeClock) -> Iterator[Store]:
    with Store(db_target, clock=clock) as s:
        yield s


def _id(n: int) -> str:
    return f"sbx-{n:012x}"


def _sbx(
    n: int,
    team: str = "team-a",
    state: SandboxState = RUNNING,
    created_at: float = 1000.0,
    **changes: Any,
) -> SandboxRecord:
    """A record as the node writes it: started unless still creating; a killed one released
    unless the test says otherwise."""
    fields: dict[str, Any] = {
        "template_id": "tpl-000000000001",
        "template_alias": "base",
        "runtime": "runc",
        "timeout": 300,
        "started_at": None if state is CREATING else created_at + 1,
        "released": state is KILLED,
        **changes,
    }
    return SandboxRecord(
        sandbox_id=_id(n), team_id=team, state=state, created_at=created_at, **fields
    )


def test_insert_get_roundtrip_with_json_columns(store: Store) -> None:
    rec = _sbx(
        1,
        template_id="tpl-000000000002",
        template_alias="python",
        runtime="runsc",
        metadata={"env": "prod"},
        envs={"A": "1"},
        network={"allow_out": ["1.2.3.4/32"], "deny_out": []},
        security={"pii": {"enabled": False}},
        end_at=1300.0,
        cpu_count=2.0,
        memory_mb=512,
        slot=7,
        address="10.77.0.30",
    )
    store.insert_sandbox(rec)
    got = store.get_sandbox(_id(1))
    assert got == rec
    assert isinstance(got.state, SandboxState) and got.released is False
    assert got.killed_at is None and got.error is None


def test_roundtrip_of_a_record_without_optional_fields(store: Store) -> None:
    rec = _sbx(1, state=CREATING)
    store.insert_sandbox(rec)
    got = store.get_sandbox(_id(1))
    assert got == rec
    assert (got.security, got.slot, got.started_at, got.metadata) == (None, None, None, {})


def test_get_is_scoped_to_team(store: Store) -> None:
    store.insert_sandbox(_sbx(1, "team-a"))
    assert store.get_sandbox(_id(1), "team-a") is not None
    assert store.get_sandbox(_id(1), "team-b") is None
    assert store.get_sandbox(_id(2)) is None


def test_insert_validates(store: Store) -> None:
    store.insert_sandbox(_sbx(1))
    with pytest.raises(Duplicate):
        store.insert_sandbox(_sbx(1, team="team-b"))
    assert store.get_sandbox(_id(1)).team_id == "team-a"
    with pytest.raises(ValueError):
        store.insert_sandbox(_sbx(3, team=""))
    with pytest.raises(ValueError):
        store.insert_sandbox(_sbx(4).replace(sandbox_id=""))
    assert store.get_sandbox(_id(3)) is None
    assert store.list_sandboxes("", states=list(SandboxState)) == ([], None)


def test_update_sandbox(store: Store) -> None:
    store.insert_sandbox(_sbx(1, metadata={"a": "b"}))
    store.update_sandbox(_id(1), state=KILLED, killed_at=5.0, metadata={"c": "d"}, released=True)
    got = store.get_sandbox(_id(1))
    assert got is not None
    assert (got.state, got.killed_at, got.metadata, got.released) == (
        KILLED,
        5.0,
        {"c": "d"},
        True,
    )
    store.update_sandbox(_id(1), state="paused")  # the enum's value is accepted too
    assert store.get_sandbox(_id(1)).state is PAUSED
    with pytest.raises(RecordNotFound):
        store.update_sandbox(_id(9), state=KILLED)
    with pytest.raises(TypeError):
        store.update_sandbox(_id(1), nonsense=1)
    with pytest.raises(TypeError):
        store.update_sandbox(_id(1), **{"state = 'x' --": 1})
    with pytest.raises(TypeError):
        store.update_sandbox(_id(1), sandbox_id="sbx-other")
    with pytest.raises(ValueError):
        store.update_sandbox(_id(1), state="zombie")
    store.update_sandbox(_id(1))  # nothing to set, record exists: no error


# Transitions -------------------------------------------------------------------------


def test_transition_is_a_compare_and_set(store: Store) -> None:
    store.insert_sandbox(_sbx(1, state=RUNNING, metadata={"k": "v"}))
    before = store.transition(_id(1), [RUNNING, PAUSED], KILLED, killed_at=9.0, error="gone")
    assert before is not None and before.state is RUNNING and before.metadata == {"k": "v"}
    after = store.get_sandbox(_id(1))
    assert after is not None
    assert (after.state, after.killed_at, after.error) == (KILLED, 9.0, "gone")
    # not in a from-state any more: nothing changes
    assert store.transition(_id(1), [RUNNING, PAUSED], KILLED, killed_at=99.0) is None
    assert store.get_sandbox(_id(1)).killed_at == 9.0
    assert store.transition(_id(2), [RUNNING], KILLED) is None  # unknown id
    with pytest.raises(TypeError):
        store.transition(_id(1), [KILLED], RUNNING, colour="red")


def test_concurrent_kills_have_exactly_one_winner(store: Store) -> None:
    n = 8
    store.insert_sandbox(_sbx(1, state=RUNNING))
    go = threading.Barrier(n)
    wins: list[SandboxRecord | None] = []
    lock = threading.Lock()

    def kill(i: int) -> None:
        go.wait(timeout=30)
        before = store.transition(_id(1), [RUNNING, PAUSED], KILLED, killed_at=float(i))
        with lock:
            wins.append(before)

    threads = [threading.Thread(target=kill, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [w for w in wins if w is not None]
    assert len(wins) == n and len(winners) == 1
    assert winners[0].state is RUNNING  # the winner saw the record before the kill
    assert store.get_sandbox(_id(1)).state is KILLED


# Listing -----------------------------------------------------------------------------


def _all_pages(store: Store, team: str, limit: int, **kw: Any) -> list[str]:
    ids: list[str] = []
    token = None
    while True:
        page, token = store.list_sandboxes(team, limit=limit, next_token=token, **kw)
        ids.extend(s.sandbox_id for s in page)
        if token is None:
            return ids


def test_pagination_is_stable_and_complete(store: Store) -> None:
    # several share a created_at, so the sandbox_id tie-break matters
    for n in range(23):
        store.insert_sandbox(_sbx(n, created_at=1000.0 + n // 3))
    store.insert_sandbox(_sbx(100, "team-b"))
    expected = [_id(n) for n in range(23)]
    assert _all_pages(store, "team-a", 5) == expected
    assert _all_pages(store, "team-a", 23) == expected
    page, token = store.list_sandboxes("team-a", limit=23)
    assert token is None and len(page) == 23
    page, token = store.list_sandboxes("team-a", limit=22)
    assert token is not None and len(page) == 22


def test_pagination_survives_changes_between_pages(store: Store) -> None:
    for n in range(10):
        store.insert_sandbox(_sbx(n, created_at=1000.0 + n))
    page, token = store.list_sandboxes("team-a", limit=4)
    assert token is not None
    store.insert_sandbox(_sbx(50, created_at=2000.0))  # newer: appears at the end
    store.update_sandbox(page[0].sandbox_id, state=KILLED)
    store.update_sandbox(_id(5), state=KILLED)  # on a later page: gone from it
    rest, token2 = store.list_sandboxes("team-a", limit=100, next_token=token)
    assert [s.sandbox_id for s in rest] == [_id(n) for n in [4, 6, 7, 8, 9, 50]]
    assert token2 is None


def test_list_filters(store: Store) -> None:
    store.insert_sandbox(_sbx(1, metadata={"env": "prod", "team": "x"}))
    store.insert_sandbox(_sbx(2, metadata={"env": "dev"}, state=KILLED))
    store.insert_sandbox(_sbx(3, metadata={"env": "prod"}, state=PAUSED))
    store.insert_sandbox(_sbx(4))
    store.insert_sandbox(_sbx(5, metadata={"env": "prod"}, state=KILLED))

    def ids(**kw: Any) -> list[int]:
        page, _ = store.list_sandboxes("team-a", **kw)
        return [int(s.sandbox_id[4:], 16) for s in page]

    assert ids() == [1, 3, 4]  # live states by default
    assert ids(states=[RUNNING]) == [1, 4]
    assert ids(states=[RUNNING, PAUSED]) == [1, 3, 4]
    assert ids(states=[KILLED]) == [2, 5]
    assert ids(states=list(SandboxState)) == [1, 2, 3, 4, 5]
    assert ids(metadata={"env": "prod"}) == [1, 3]
    assert ids(metadata={"env": "prod", "team": "x"}) == [1]
    assert ids(metadata={"env": "prod"}, states=[PAUSED, KILLED]) == [3, 5]
    assert ids(metadata={"missing": "prod"}) == []
    assert ids(metadata={"env": "'prod' OR 1=1"}) == []


def test_list_hides_creates_that_failed_before_they_started(store: Store) -> None:
    store.insert_sandbox(_sbx(1, state=CREATING))
    # a create that failed: killed, never started
    store.insert_sandbox(_sbx(2, state=KILLED, started_at=None, error="boom"))
    store.insert_sandbox(_sbx(3, state=RUNNING))
    page, _ = store.list_sandboxes("team-a", states=list(SandboxState))
    assert [s.sandbox_id for s in page] == [_id(1), _id(3)]
    # once the create finishes it is listed
    store.update_sandbox(_id(1), state=RUNNING, started_at=1234.0)
    page, _ = store.list_sandboxes("team-a")
    assert [s.sandbox_id for s in page] == [_id(1), _id(3)]


def test_list_rejects_bad_token_and_limit(store: Store) -> None:
    for token in ("garbage!", "e30", "WzEsMl0"):  # not base64 json / {} / [1,2]
        with pytest.raises(InvalidInput) as exc:
            store.list_sandboxes("team-a", next_token=token)
        assert exc.value.message == "next_token: invalid pagination token"
    with pytest.raises(InvalidInput) as exc:
        store.list_sandboxes("team-a", limit=0)
    assert exc.value.field == "limit"


def test_live_unreleased_sandboxes_and_template_use(store: Store) -> None:
    store.insert_sandbox(_sbx(1, "team-a", state=CREATING, template_id="tpl-1"))
    store.insert_sandbox(_sbx(2, "team-b", state=RUNNING, template_id="tpl-1"))
    store.insert_sandbox(_sbx(3, "team-a", state=KILLED, template_id="tpl-1"))
    store.insert_sandbox(_sbx(4, "team-a", state=KILLED, template_id="tpl-2", error="failed"))
    store.insert_sandbox(_sbx(5, "team-b", state=PAUSED, template_id="tpl-2"))
    store.insert_sandbox(_sbx(6, "team-a", state=KILLED, template_id="tpl-3", released=False))
    assert [s.sandbox_id[-1] for s in store.list_live_sandboxes()] == ["1", "2", "5"]
    assert store.live_sandbox_ids() == {s.sandbox_id for s in store.list_live_sandboxes()}
    assert [s.sandbox_id[-1] for s in store.list_unreleased_sandboxes()] == ["1", "2", "5", "6"]
    assert store.count_sandboxes_using("tpl-1") == 2
    assert store.count_sandboxes_using("tpl-2") == 1
    assert store.count_sandboxes_using("tpl-3") == 0


# Slots -------------------------------------------------------------------------------


def test_allocate_slot_lowest_free_and_reused_after_release(store: Store) -> None:
    for n in range(1, 4):
        store.insert_sandbox(_sbx(n, state=CREATING))
    assert [store.allocate_slot(_id(n)) for n in range(1, 4)] == [1, 2, 3]
    assert store.allocate_slot(_id(2)) == 2  # already holds one
    store.update_sandbox(_id(2), state=KILLED, released=True)
    store.insert_sandbox(_sbx(4, state=CREATING))
    assert store.allocate_slot(_id(4)) == 2
    store.insert_sandbox(_sbx(5, state=CREATING))
    assert store.allocate_slot(_id(5)) == 4
    assert store.get_sandbox(_id(5)).slot == 4


def test_killed_sandbox_keeps_its_slot_until_released(store: Store) -> None:
    store.insert_sandbox(_sbx(1, state=CREATING))
    assert store.allocate_slot(_id(1)) == 1
    store.update_sandbox(_id(1), state=KILLED)  # killed, teardown not finished
    store.insert_sandbox(_sbx(2, state=CREATING))
    assert store.allocate_slot(_id(2)) == 2
    store.update_sandbox(_id(1), released=True)
    store.insert_sandbox(_sbx(3, state=CREATING))
    assert store.allocate_slot(_id(3)) == 1


def test_allocate_slot_needs_a_creating_sandbox(store: Store) -> None:
    with pytest.raises(RecordNotFound):
        store.allocate_slot(_id(1))
    store.insert_sandbox(_sbx(1, state=KILLED))
    store.insert_sandbox(_sbx(2, state=RUNNING))
    for n in (1, 2):
        with pytest.raises(RecordNotFound):
            store.allocate_slot(_id(n))
    assert store.get_sandbox(_id(2)).slot is None


def test_two_unreleased_sandboxes_cannot_share_a_slot(store: Store) -> None:
    store.insert_sandbox(_sbx(1, slot=1))
    with pytest.raises(Duplicate):
        store.insert_sandbox(_sbx(2, slot=1))
    with pytest.raises(Duplicate):  # killed but not released: still holds it
        store.insert_sandbox(_sbx(3, slot=1, state=KILLED, released=False))
    store.insert_sandbox(_sbx(4, slot=1, state=KILLED, released=True))  # released may keep it
    store.insert_sandbox(_sbx(5, slot=2))
    with pytest.raises(Duplicate):
        store.update_sandbox(_id(5), slot=1)


def test_allocate_slot_from_many_threads_gives_distinct_slots(store: Store) -> None:
    n = 40
    for i in range(n):
        store.insert_sandbox(_sbx(i, state=CREATING))
    got: list[int] = []
    lock = threading.Lock()

    def take(i: int) -> None:
        slot = store.allocate_slot(_id(i))
        with lock:
            got.append(slot)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, n + 1))
    assert sorted(s.slot for s in store.list_unreleased_sandboxes()) == list(range(1, n + 1))


# Idempotency -------------------------------------------------------------------------


def test_idempotency_states(store: Store) -> None:
    assert store.idempotency_begin("team-a", "k1", "h1") == ("new", None)
    assert store.idempotency_begin("team-a", "k1", "h1") == ("in_progress", None)
    assert store.idempotency_begin("team-a", "k1", "h2") == ("mismatch", None)
    assert store.idempotency_begin("team-b", "k1", "h2") == ("new", None)  # per team
    store.idempotency_finish("team-a", "k1", _id(1))
    assert store.idempotency_begin("team-a", "k1", "h1") == ("done", _id(1))
    assert store.idempotency_begin("team-a", "k1", "h2") == ("mismatch", None)


def test_failed_create_frees_the_key(store: Store) -> None:
    assert store.idempotency_begin("team-a", "k", "h")[0] == "new"
    store.idempotency_finish("team-a", "k", None)
    assert store.idempotency_begin("team-a", "k", "other")[0] == "new"


def test_idempotency_records_expire_after_24h(store: Store, clock: FakeClock) -> None:
    store.idempotency_begin("team-a", "k", "h")
    store.idempotency_finish("team-a", "k", _id(1))
    clock.now += 24 * 3600 - 1
    assert store.idempotency_begin("team-a", "k", "h") == ("done", _id(1))
    clock.now += 2
    assert store.idempotency_begin("team-a", "k", "h2") == ("new", None)


def test_abandon_in_progress_at_startup(store: Store) -> None:
    store.idempotency_begin("team-a", "a", "h")
    store.idempotency_begin("team-a", "b", "h")
    store.idempotency_finish("team-a", "b", _id(1))
    assert store.idempotency_abandon_in_progress() == 1
    assert store.idempotency_begin("team-a", "a", "h") == ("new", None)
    assert store.idempotency_begin("team-a", "b", "h") == ("done", _id(1))


def test_concurrent_idempotency_begin_has_one_winner(store: Store) -> None:
    results: list[str] = []
    lock = threading.Lock()
    go = threading.Barrier(8)

    def begin() -> None:
        go.wait(timeout=30)
        state, _ = store.idempotency_begin("team-a", "k", "h")
        with lock:
            results.append(state)

    threads = [threading.Thread(target=begin) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["in_progress"] * 7 + ["new"]


# Metadata query ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("{'env': 'prod'}", {"env": "prod"}),
        ('{"env": "prod", "x": "y"}', {"env": "prod", "x": "y"}),
        ("{}", {}),
        ("", {}),
        ("env=prod&x=y", {"env": "prod", "x": "y"}),
        ("{'k': 'a\\'b'}", {"k": "a'b"}),
    ],
)
def test_parse_metadata_query(raw: str, expected: dict[str, str]) -> None:
    assert parse_metadata_query(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "{'env': 1}",
        "{1: 'x'}",
        "['env']",
        "{'a': __import__('os').system('true')}",
        "{'a': 'b'",
        "{" * 5000,
        "{'a': '" + "x" * 10000 + "'}",
        "{'a': {'b': 'c'}}",
        "no equals sign",
    ],
)
def test_parse_metadata_query_rejects(raw: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_metadata_query(raw)
    assert exc.value.field == "metadata"
