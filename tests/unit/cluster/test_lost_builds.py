"""Team template builds on a node the sweep marks down fail, on both backends; the node,
if it was only slow, cannot finish them late."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from declawd.cluster.sweep import sweep_once
from declawd.store import Store
from declawd.store.nodes import build_lost_message


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _build(store: Store, bid: str, tid: str, node_id: str, status: str = "building") -> None:
    store.insert_template(
        {
            "template_id": tid,
            "team_id": "team-1",
            "state": "building" if status == "building" else "ready",
        }
    )
    store.insert_build(
        {
            "build_id": bid,
            "template_id": tid,
            "team_id": "team-1",
            "status": status,
            "logs": ["building on node x", "step 1/2"],
            "node_id": node_id,
        }
    )


def test_the_sweep_fails_the_builds_of_the_node_it_marks_down(
    db_target: Path | str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    with Store(db_target, clock=clock) as store:
        store.register_node("a", "node-a", "https://127.0.0.1:1")
        store.register_node("b", "node-b", "https://127.0.0.1:2")
        _build(store, "bld-a1", "tpl-a1", "a")
        _build(store, "bld-a2", "tpl-a2", "a", status="completed")
        _build(store, "bld-b1", "tpl-b1", "b")
        _build(store, "bld-local", "tpl-local", "")  # single-process: no node
        clock.now += 8
        store.heartbeat_node("b", {})
        clock.now += 3  # a: 11 s silent
        with caplog.at_level(logging.ERROR, logger="declawd.cluster.sweep"):
            assert [n.node_id for n in sweep_once(store, clock.now, 10)] == ["a"]
        error = build_lost_message("node-a", 11)
        assert error == (
            "node node-a was lost during the build (no heartbeat for 11 s); rebuild the template"
        )
        failed = store.get_build("bld-a1")
        assert failed is not None and failed["status"] == "failed"
        assert failed["finished_at"] == clock.now
        assert failed["logs"] == ["building on node x", "step 1/2", f"error: {error}"]
        tpl = store.get_template("tpl-a1")
        assert tpl is not None and (tpl["state"], tpl["error"]) == ("failed", error)
        # The node's finished build, the other node's and the node-less one are untouched.
        assert store.get_build("bld-a2")["status"] == "completed"  # type: ignore[index]
        assert store.get_template("tpl-a2")["state"] == "ready"  # type: ignore[index]
        for bid, tid in (("bld-b1", "tpl-b1"), ("bld-local", "tpl-local")):
            assert store.get_build(bid)["status"] == "building"  # type: ignore[index]
            assert store.get_template(tid)["state"] == "building"  # type: ignore[index]
        assert [r.getMessage() for r in caplog.records] == [
            "node node-a (a) missed its heartbeats for 11 s: down; 0 sandboxes lost,"
            " 1 template builds failed (bld-a1)"
        ]
        # Marked once: a second sweep fails nothing more, and leaves the log as it is.
        assert store.mark_stale_nodes_down(clock.now - 10) == []
        assert store.get_build("bld-a1")["logs"] == failed["logs"]  # type: ignore[index]


def test_a_slow_node_cannot_finish_a_build_the_sweep_failed(db_target: Path | str) -> None:
    clock = Clock()
    with Store(db_target, clock=clock) as store:
        store.register_node("a", "node-a", "https://127.0.0.1:1")
        _build(store, "bld-a1", "tpl-a1", "a")
        clock.now += 11
        [loss] = store.mark_stale_nodes_down(clock.now - 10)
        assert (loss.node.node_id, loss.sandboxes, loss.builds) == ("a", [], ["bld-a1"])
        failed = store.get_build("bld-a1")
        # The node comes back and its build task ends: the log flush and the outcome are refused.
        assert not store.save_build_logs("bld-a1", ["building on node x", "step 2/2"])
        ready = {"state": "ready", "layers": ["k1"], "error": None}
        assert not store.finish_build("bld-a1", "completed", ["done"], clock.now, ready)
        assert store.get_build("bld-a1") == failed
        tpl = store.get_template("tpl-a1")
        assert tpl is not None and tpl["state"] == "failed" and tpl["layers"] is None


def test_a_restarted_node_fails_the_builds_of_its_previous_run(db_target: Path | str) -> None:
    """A node agent back quicker than the down timeout is never swept: at start it fails
    the builds the store still says run on it (its previous process ran them)."""
    with Store(db_target, clock=Clock()) as store:
        store.register_node("a", "node-a", "https://127.0.0.1:1")
        _build(store, "bld-a1", "tpl-a1", "a")
        _build(store, "bld-a2", "tpl-a2", "a", status="completed")
        _build(store, "bld-b1", "tpl-b1", "b")
        assert store.fail_orphaned_builds("a", "node-a") == ["bld-a1"]
        error = "node node-a restarted during the build; rebuild the template"
        failed = store.get_build("bld-a1")
        assert failed is not None and failed["status"] == "failed"
        assert failed["logs"][-1] == f"error: {error}"
        tpl = store.get_template("tpl-a1")
        assert tpl is not None and (tpl["state"], tpl["error"]) == ("failed", error)
        assert store.get_build("bld-a2")["status"] == "completed"  # type: ignore[index]
        assert store.get_build("bld-b1")["status"] == "building"  # type: ignore[index]
        assert store.fail_orphaned_builds("a", "node-a") == []
