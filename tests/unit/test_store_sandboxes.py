"""Sandbox records, listing/pagination, slots, idempotency and the metadata filter."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from declawd.errors import BadRequest
from declawd.store import Duplicate, RecordNotFound, Store, parse_metadata_query


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    with Store(tmp_path / "declawd.db", clock=clock) as s:
        yield s


def _sbx(n: int, team: str = "team-a", **extra: Any) -> dict[str, Any]:
    return {"sandbox_id": f"sbx-{n:012x}", "team_id": team, "state": "running", **extra}


def test_insert_get_roundtrip_with_json_columns(store: Store, clock: FakeClock) -> None:
    rec = _sbx(
        1,
        template_id="tpl-000000000001",
        template_alias="base",
        runtime="runc",
        metadata={"env": "prod"},
        envs={"A": "1"},
        network={"allow_out": ["1.2.3.4/32"], "deny_out": []},
        security={"pii": {"enabled": False}},
        end_at=clock.now + 300,
        cpu_count=2.0,
        memory_mb=512,
        lab=True,
    )
    store.insert_sandbox(rec)
    got = store.get_sandbox("sbx-000000000001")
    assert got is not None
    for k, v in rec.items():
        assert got[k] == v, k
    assert got["created_at"] == clock.now
    assert got["slot"] is None and got["killed_at"] is None


def test_get_is_scoped_to_team(store: Store) -> None:
    store.insert_sandbox(_sbx(1, "team-a"))
    assert store.get_sandbox("sbx-000000000001", "team-a") is not None
    assert store.get_sandbox("sbx-000000000001", "team-b") is None
    assert store.get_sandbox("sbx-000000000002") is None


def test_insert_validates(store: Store) -> None:
    store.insert_sandbox(_sbx(1))
    with pytest.raises(Duplicate):
        store.insert_sandbox(_sbx(1))
    with pytest.raises(ValueError):
        store.insert_sandbox(_sbx(2, state="paused"))
    with pytest.raises(ValueError):
        store.insert_sandbox({"sandbox_id": "sbx-x", "state": "running"})
    with pytest.raises(TypeError):
        store.insert_sandbox(_sbx(3, colour="red"))


def test_update_sandbox(store: Store) -> None:
    store.insert_sandbox(_sbx(1, metadata={"a": "b"}))
    store.update_sandbox("sbx-000000000001", state="killed", killed_at=5.0, metadata={"c": "d"})
    got = store.get_sandbox("sbx-000000000001")
    assert got is not None
    assert (got["state"], got["killed_at"], got["metadata"]) == ("killed", 5.0, {"c": "d"})
    with pytest.raises(RecordNotFound):
        store.update_sandbox("sbx-000000000009", state="killed")
    with pytest.raises(TypeError):
        store.update_sandbox("sbx-000000000001", nonsense=1)
    with pytest.raises(TypeError):
        store.update_sandbox("sbx-000000000001", **{"state = 'x' --": 1})
    with pytest.raises(ValueError):
        store.update_sandbox("sbx-000000000001", state="zombie")
    store.update_sandbox("sbx-000000000001")  # nothing to set, record exists: no error


def _all_pages(store: Store, team: str, limit: int, **kw: Any) -> list[str]:
    ids: list[str] = []
    token = None
    while True:
        page, token = store.list_sandboxes(team, limit=limit, next_token=token, **kw)
        ids.extend(s["sandbox_id"] for s in page)
        if token is None:
            return ids


def test_pagination_is_stable_and_complete(store: Store, clock: FakeClock) -> None:
    # several share a created_at, so the sandbox_id tie-break matters
    for n in range(23):
        clock.now = 1000.0 + n // 3
        store.insert_sandbox(_sbx(n))
    store.insert_sandbox(_sbx(100, "team-b"))
    expected = [f"sbx-{n:012x}" for n in range(23)]
    assert _all_pages(store, "team-a", 5) == expected
    assert _all_pages(store, "team-a", 23) == expected
    page, token = store.list_sandboxes("team-a", limit=23)
    assert token is None and len(page) == 23


def test_pagination_survives_changes_between_pages(store: Store, clock: FakeClock) -> None:
    for n in range(10):
        clock.now = 1000.0 + n
        store.insert_sandbox(_sbx(n))
    page, token = store.list_sandboxes("team-a", limit=4)
    assert token is not None
    clock.now = 2000.0
    store.insert_sandbox(_sbx(50))  # newer: appears at the end
    store.update_sandbox(page[0]["sandbox_id"], state="killed")
    rest, token2 = store.list_sandboxes("team-a", limit=100, next_token=token)
    assert [s["sandbox_id"] for s in rest] == [f"sbx-{n:012x}" for n in [*range(4, 10), 50]]
    assert token2 is None


def test_list_filters(store: Store) -> None:
    store.insert_sandbox(_sbx(1, metadata={"env": "prod", "team": "x"}))
    store.insert_sandbox(_sbx(2, metadata={"env": "dev"}, state="killed"))
    store.insert_sandbox(_sbx(3, metadata={"env": "prod"}, state="creating"))
    store.insert_sandbox(_sbx(4))

    def ids(**kw: Any) -> list[int]:
        page, _ = store.list_sandboxes("team-a", **kw)
        return [int(s["sandbox_id"][4:], 16) for s in page]

    assert ids() == [1, 2, 3, 4]
    assert ids(states=["running"]) == [1, 4]
    assert ids(states=["running", "creating"]) == [1, 3, 4]
    assert ids(metadata={"env": "prod"}) == [1, 3]
    assert ids(metadata={"env": "prod", "team": "x"}) == [1]
    assert ids(metadata={"env": "prod"}, states=["creating"]) == [3]
    assert ids(metadata={"missing": "prod"}) == []
    assert ids(metadata={"env": "'prod' OR 1=1"}) == []


def test_list_rejects_bad_token_and_limit(store: Store) -> None:
    for token in ("garbage!", "e30", "WzEsMl0"):  # not base64 json / {} / [1,2]
        with pytest.raises(BadRequest) as exc:
            store.list_sandboxes("team-a", next_token=token)
        assert "next_token" in exc.value.message
    with pytest.raises(BadRequest):
        store.list_sandboxes("team-a", limit=0)


def test_live_sandboxes_and_template_use(store: Store) -> None:
    store.insert_sandbox(_sbx(1, "team-a", state="creating", template_id="tpl-1"))
    store.insert_sandbox(_sbx(2, "team-b", state="running", template_id="tpl-1"))
    store.insert_sandbox(_sbx(3, "team-a", state="killed", template_id="tpl-1"))
    store.insert_sandbox(_sbx(4, "team-a", state="failed", template_id="tpl-2"))
    assert [s["sandbox_id"][-1] for s in store.list_live_sandboxes()] == ["1", "2"]
    assert store.count_sandboxes_using("tpl-1") == 2
    assert store.count_sandboxes_using("tpl-2") == 0


def test_allocate_slot_lowest_free_and_reused_after_kill(store: Store) -> None:
    for n in range(1, 4):
        store.insert_sandbox(_sbx(n, state="creating"))
    assert [store.allocate_slot(f"sbx-{n:012x}") for n in range(1, 4)] == [1, 2, 3]
    assert store.allocate_slot("sbx-000000000002") == 2  # already holds one
    store.update_sandbox("sbx-000000000002", state="killed")
    store.insert_sandbox(_sbx(4, state="creating"))
    assert store.allocate_slot("sbx-000000000004") == 2
    store.insert_sandbox(_sbx(5, state="creating"))
    assert store.allocate_slot("sbx-000000000005") == 4
    assert store.get_sandbox("sbx-000000000005")["slot"] == 4  # type: ignore[index]


def test_allocate_slot_needs_a_live_sandbox(store: Store) -> None:
    with pytest.raises(RecordNotFound):
        store.allocate_slot("sbx-000000000001")
    store.insert_sandbox(_sbx(1, state="killed"))
    with pytest.raises(RecordNotFound):
        store.allocate_slot("sbx-000000000001")


def test_two_live_sandboxes_cannot_share_a_slot(store: Store) -> None:
    store.insert_sandbox(_sbx(1, slot=1))
    with pytest.raises(Duplicate):
        store.insert_sandbox(_sbx(2, slot=1))
    store.insert_sandbox(_sbx(3, slot=1, state="killed"))  # dead ones may keep theirs


def test_allocate_slot_from_many_threads_gives_distinct_slots(store: Store) -> None:
    n = 40
    for i in range(n):
        store.insert_sandbox(_sbx(i, state="creating"))
    got: list[int] = []
    lock = threading.Lock()

    def take(i: int) -> None:
        slot = store.allocate_slot(f"sbx-{i:012x}")
        with lock:
            got.append(slot)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, n + 1))


# Idempotency -------------------------------------------------------------------------


def test_idempotency_states(store: Store) -> None:
    assert store.idempotency_begin("team-a", "k1", "h1") == ("new", None)
    assert store.idempotency_begin("team-a", "k1", "h1") == ("in_progress", None)
    assert store.idempotency_begin("team-a", "k1", "h2") == ("mismatch", None)
    assert store.idempotency_begin("team-b", "k1", "h2") == ("new", None)  # per team
    store.idempotency_finish("team-a", "k1", "sbx-000000000001")
    assert store.idempotency_begin("team-a", "k1", "h1") == ("done", "sbx-000000000001")
    assert store.idempotency_begin("team-a", "k1", "h2") == ("mismatch", None)


def test_failed_create_frees_the_key(store: Store) -> None:
    assert store.idempotency_begin("team-a", "k", "h")[0] == "new"
    store.idempotency_finish("team-a", "k", None)
    assert store.idempotency_begin("team-a", "k", "other")[0] == "new"


def test_idempotency_records_expire_after_24h(store: Store, clock: FakeClock) -> None:
    store.idempotency_begin("team-a", "k", "h")
    store.idempotency_finish("team-a", "k", "sbx-000000000001")
    clock.now += 24 * 3600 - 1
    assert store.idempotency_begin("team-a", "k", "h") == ("done", "sbx-000000000001")
    clock.now += 2
    assert store.idempotency_begin("team-a", "k", "h2") == ("new", None)


def test_abandon_in_progress_at_startup(store: Store) -> None:
    store.idempotency_begin("team-a", "a", "h")
    store.idempotency_begin("team-a", "b", "h")
    store.idempotency_finish("team-a", "b", "sbx-000000000001")
    assert store.idempotency_abandon_in_progress() == 1
    assert store.idempotency_begin("team-a", "a", "h") == ("new", None)
    assert store.idempotency_begin("team-a", "b", "h") == ("done", "sbx-000000000001")


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
    with pytest.raises(BadRequest) as exc:
        parse_metadata_query(raw)
    assert "metadata" in exc.value.message
