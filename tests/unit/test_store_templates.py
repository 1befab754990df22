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
