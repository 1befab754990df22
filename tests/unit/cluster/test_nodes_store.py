"""The node registry, join tokens and node-scoped sandbox lists, on both backends."""

from __future__ import annotations

from pathlib import Path

from declawd.cluster.sweep import sweep_once
from declawd.store import SandboxRecord, SandboxState, Store
from declawd.store.nodes import lost_message


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _rec(
    sandbox_id: str, node_id: str, state: SandboxState = SandboxState.CREATING
) -> SandboxRecord:
    return SandboxRecord(
        sandbox_id=sandbox_id,
        team_id="team-1",
        state=state,
        template_id="tpl",
        template_alias="tpl",
        runtime="runc",
        created_at=1.0,
        timeout=60,
        node_id=node_id,
    )


def test_join_tokens_are_single_use_and_expire(db_target: Path | str) -> None:
    clock = Clock()
    with Store(db_target, clock=clock) as store:
        token = store.create_join_token(60)
        assert not store.use_join_token(token + "x", "a")
        assert store.use_join_token(token, "a")
        assert not store.use_join_token(token, "b")  # spent
        late = store.create_join_token(60)
        clock.now += 61
        assert not store.use_join_token(late, "c")  # expired
        rows = store._db.query("SELECT token_hash FROM join_tokens")
        assert all(token not in str(r[0]) for r in rows)  # only hashes are kept


def test_slots_and_lists_are_per_node(db_target: Path | str) -> None:
    with Store(db_target) as store:
        for sid, node in (("sbx-a1", "a"), ("sbx-b1", "b"), ("sbx-a2", "a")):
            store.insert_sandbox(_rec(sid, node))
        # Each node's pool is its own: both nodes' first sandbox gets slot 1.
        assert [store.allocate_slot(s) for s in ("sbx-a1", "sbx-b1", "sbx-a2")] == [1, 1, 2]
        assert [r.sandbox_id for r in store.list_unreleased_sandboxes("a")] == ["sbx-a1", "sbx-a2"]
        assert [r.sandbox_id for r in store.list_live_sandboxes("b")] == ["sbx-b1"]
        assert len(store.list_live_sandboxes()) == 3
        assert store.list_live_sandboxes("") == []
        assert store.count_live_by_node() == {"a": 2, "b": 1}
        assert store.get_sandbox("sbx-b1").node_id == "b"  # type: ignore[union-attr]


def test_sweep_marks_a_silent_node_down_and_its_sandboxes_lost(db_target: Path | str) -> None:
    clock = Clock()
    with Store(db_target, clock=clock) as store:
        store.register_node("a", "node-a", "https://127.0.0.1:1")
        store.register_node("b", "node-b", "https://127.0.0.1:2")
        store.insert_sandbox(_rec("sbx-a1", "a", SandboxState.RUNNING))
        store.insert_sandbox(_rec("sbx-b1", "b", SandboxState.RUNNING))
        clock.now += 8
        store.heartbeat_node("b", {"sandboxes": 1})
        clock.now += 3  # a: 11 s silent, b: 3 s
        assert [n.node_id for n in sweep_once(store, clock.now, 10)] == ["a"]
        assert sweep_once(store, clock.now, 10) == []  # once
        lost = store.get_sandbox("sbx-a1")
        assert lost is not None and lost.state is SandboxState.KILLED
        assert lost.error == lost_message("node-a") and not lost.released
        assert store.get_sandbox("sbx-b1").state is SandboxState.RUNNING  # type: ignore[union-attr]
        events, _ = store.query_audit("sbx-a1")
        assert [e["reason"] for e in events] == [lost_message("node-a")]
        # A heartbeat does not bring it back: it reconciles and registers again.
        assert store.heartbeat_node("a", {}).state == "down"  # type: ignore[union-attr]
        assert store.register_node("a", "node-a", "https://127.0.0.1:1").state == "up"
        store.set_node_state("b", "draining")
        assert store.register_node("b", "node-b", "https://127.0.0.1:2").state == "draining"
