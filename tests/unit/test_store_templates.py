"""Template, alias and build records."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from declawd.store import Duplicate, RecordNotFound, Store


@pytest.fixture
def store(db_target: Path | str) -> Iterator[Store]:
    with Store(db_target) as s:
        yield s


def _tpl(tid: str, team: str = "", **extra: Any) -> dict[str, Any]:
    return {"template_id": tid, "team_id": team, "state": "ready", **extra}


def test_template_roundtrip(store: Store) -> None:
    rec = _tpl(
        "tpl-000000000001",
        alias="python",
        spec={"base_image": "debian", "run_cmds": ["true"]},
        layers=[Path("/srv/t/base"), "/srv/t/python"],
        user="user",
        workdir="/home/user",
        envs={"LANG": "C.UTF-8"},
        start_cmd="",
        ready_cmd="true",
        ready_timeout=30.0,
        cpu_count=2.0,
        memory_mb=1024,
        runtime="runsc",
        size_bytes=123,
        build_seconds=4.5,
        created_at=10.0,
    )
    store.insert_template(rec)
    got = store.get_template("tpl-000000000001")
    assert got is not None
    assert got["layers"] == ["/srv/t/base", "/srv/t/python"]  # paths come back as str
    for k, v in rec.items():
        if k != "layers":
            assert got[k] == v, k
    assert store.get_template("tpl-missing") is None
    with pytest.raises(Duplicate):
        store.insert_template(rec)


def test_builtins_visible_to_every_team_and_aliases_shadow(store: Store) -> None:
    store.insert_template(_tpl("tpl-b", "", created_at=1.0))
    store.insert_template(_tpl("tpl-a1", "team-a", created_at=2.0))
    store.insert_template(_tpl("tpl-b1", "team-b", created_at=3.0))
    store.set_alias("", "base", "tpl-b")
    store.set_alias("team-a", "mine", "tpl-a1")
    assert [t["template_id"] for t in store.list_templates("team-a")] == ["tpl-b", "tpl-a1"]
    assert store.get_template_by_alias("team-b", "base")["template_id"] == "tpl-b"  # type: ignore[index]
    assert store.get_template_by_alias("team-a", "mine")["template_id"] == "tpl-a1"  # type: ignore[index]
    assert store.get_template_by_alias("team-b", "mine") is None
    store.set_alias("team-a", "base", "tpl-a1")  # team alias shadows the built-in
    assert store.get_template_by_alias("team-a", "base")["template_id"] == "tpl-a1"  # type: ignore[index]
    assert store.get_template_by_alias("team-b", "base")["template_id"] == "tpl-b"  # type: ignore[index]


def test_alias_moves_to_new_template(store: Store) -> None:
    store.insert_template(_tpl("tpl-1", "team-a"))
    store.insert_template(_tpl("tpl-2", "team-a"))
    store.set_alias("team-a", "app", "tpl-1")
    store.set_alias("team-a", "app", "tpl-2")
    assert store.get_template_by_alias("team-a", "app")["template_id"] == "tpl-2"  # type: ignore[index]
    with pytest.raises(RecordNotFound):
        store.set_alias("team-a", "app", "tpl-missing")


def test_update_and_delete_template(store: Store) -> None:
    store.insert_template(_tpl("tpl-1", "team-a", state="building"))
    store.set_alias("team-a", "app", "tpl-1")
    store.update_template("tpl-1", state="failed", error="boom", layers=["/x"])
    got = store.get_template("tpl-1")
    assert got is not None and (got["state"], got["error"], got["layers"]) == (
        "failed",
        "boom",
        ["/x"],
    )
    with pytest.raises(RecordNotFound):
        store.update_template("tpl-missing", state="ready")
    with pytest.raises(TypeError):
        store.update_template("tpl-1", bogus=1)
    assert store.delete_template("tpl-1") is True
    assert store.get_template("tpl-1") is None
    assert store.get_template_by_alias("team-a", "app") is None
    assert store.delete_template("tpl-1") is False


def test_builds(store: Store) -> None:
    store.insert_build(
        {"build_id": "bld-1", "template_id": "tpl-1", "team_id": "team-a", "status": "building"}
    )
    got = store.get_build("bld-1")
    assert got is not None and got["logs"] == [] and got["finished_at"] is None
    store.update_build("bld-1", status="completed", logs=["a", "b"], finished_at=9.0)
    got = store.get_build("bld-1")
    assert got is not None and (got["status"], got["logs"], got["finished_at"]) == (
        "completed",
        ["a", "b"],
        9.0,
    )
    assert store.get_build("bld-2") is None
    with pytest.raises(RecordNotFound):
        store.update_build("bld-2", status="failed")


def _building(store: Store, bid: str, tid: str, node_id: str = "", **extra: Any) -> None:
    store.insert_template(_tpl(tid, "team-a", state="building", **extra))
    store.insert_build(
        {
            "build_id": bid,
            "template_id": tid,
            "team_id": "team-a",
            "status": "building",
            "node_id": node_id,
        }
    )


def test_a_build_records_its_node_and_defaults_to_none(store: Store) -> None:
    _building(store, "bld-1", "tpl-1")
    assert store.get_build("bld-1")["node_id"] == ""  # type: ignore[index]
    store.update_build("bld-1", node_id="node-a")
    assert store.get_build("bld-1")["node_id"] == "node-a"  # type: ignore[index]


def test_finish_build_writes_build_template_and_alias_once(store: Store) -> None:
    _building(store, "bld-1", "tpl-1")
    ready = {"state": "ready", "layers": ["k1"], "size_bytes": 5, "error": None}
    assert store.finish_build("bld-1", "completed", ["a", "done"], 9.0, ready, alias="app")
    build, tpl = store.get_build("bld-1"), store.get_template("tpl-1")
    assert build is not None and (build["status"], build["logs"], build["finished_at"]) == (
        "completed",
        ["a", "done"],
        9.0,
    )
    assert tpl is not None and (tpl["state"], tpl["layers"], tpl["size_bytes"]) == (
        "ready",
        ["k1"],
        5,
    )
    assert store.get_template_by_alias("team-a", "app")["template_id"] == "tpl-1"  # type: ignore[index]
    # Once ended, a build is never finished again: nothing of a second finish is written.
    assert not store.finish_build("bld-1", "failed", ["late"], 10.0, {"state": "failed"})
    assert store.get_build("bld-1")["logs"] == ["a", "done"]  # type: ignore[index]
    assert store.get_template("tpl-1")["state"] == "ready"  # type: ignore[index]
    assert not store.finish_build("bld-missing", "failed", [], 1.0, {})
    with pytest.raises(ValueError):
        store.finish_build("bld-1", "building", [], 1.0, {})


def test_finish_build_leaves_an_alias_a_newer_template_holds(store: Store) -> None:
    _building(store, "bld-old", "tpl-old", created_at=1.0)
    _building(store, "bld-new", "tpl-new", created_at=2.0)
    ready = {"state": "ready"}
    assert store.finish_build("bld-new", "completed", [], 3.0, ready, alias="app")
    assert store.finish_build("bld-old", "completed", [], 4.0, ready, alias="app")
    assert store.get_template_by_alias("team-a", "app")["template_id"] == "tpl-new"  # type: ignore[index]
    # A failed build never takes the alias.
    _building(store, "bld-f", "tpl-f", created_at=5.0)
    assert store.finish_build("bld-f", "failed", [], 6.0, {"state": "failed"}, alias="app")
    assert store.get_template_by_alias("team-a", "app")["template_id"] == "tpl-new"  # type: ignore[index]


def test_build_logs_are_saved_only_while_building(store: Store) -> None:
    _building(store, "bld-1", "tpl-1")
    assert store.save_build_logs("bld-1", ["step 1"])
    assert store.get_build("bld-1")["logs"] == ["step 1"]  # type: ignore[index]
    store.finish_build("bld-1", "failed", ["step 1", "error: x"], 2.0, {"state": "failed"})
    assert not store.save_build_logs("bld-1", ["step 1", "step 2"])
    assert store.get_build("bld-1")["logs"] == ["step 1", "error: x"]  # type: ignore[index]
    assert not store.save_build_logs("bld-missing", [])
