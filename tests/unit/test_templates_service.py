"""TemplateService semantics (aliases, states, errors) with a real Store and a fake builder."""

import asyncio

import pytest

from declawd.config import Settings
from declawd.errors import Conflict, InvalidInput, NotFound
from declawd.store import Store
from declawd.templates.builder import BuildResult, StepFailed
from declawd.templates.service import TemplateService

SPEC = {"base_image": "debian:bookworm", "run_cmds": ["echo hi > /hello"]}


class FakeBuilder:
    """Stands in for Builder.build: blocks until released, then succeeds or fails."""

    def __init__(self, cache):
        self.cache = cache
        self.release = asyncio.Event()
        self.fail = False

    async def build(self, plan, log, on_step=None):
        log(plan.base.note)
        await self.release.wait()
        if self.fail:
            raise StepFailed(2, 3, plan.steps[1], 7, ["boom"])
        for key in plan.keys:
            self.cache.fs(key).mkdir(parents=True, exist_ok=True)
        return BuildResult(plan.keys, [self.cache.fs(k) for k in plan.keys], 1234, 1.5, 0)


@pytest.fixture
async def svc(tmp_path, db_target):
    settings = Settings(state_dir=tmp_path)
    store = Store(db_target)
    service = TemplateService(settings, store)
    fake = FakeBuilder(service.builder.cache)
    service.builder.build = fake.build  # type: ignore[method-assign]
    service.fake = fake
    yield service
    await service.close()
    store.close()


async def _finish(svc, build_id):
    svc.fake.release.set()
    await svc.wait(build_id)


async def test_build_answers_at_once_then_completes(svc):
    team = svc.store.create_team("t")
    info = await svc.build(team, {"template": SPEC, "alias": "mine"})
    assert info["status"] == "building" and info["logs"] == []
    assert info["build_id"].startswith("bld-") and info["template_id"].startswith("tpl-")
    await asyncio.sleep(0)  # let the build task start
    status = svc.build_status(team, info["build_id"])
    assert status["status"] == "building"
    assert status["logs"][0].startswith("base image debian:bookworm")
    with pytest.raises(Conflict) as exc:
        svc.resolve(team, "mine")
    assert exc.value.code == "template_not_ready"
    await _finish(svc, info["build_id"])
    status = svc.build_status(team, info["build_id"])
    assert status["status"] == "completed"
    assert status["logs"][-1].startswith(f"template {info['template_id']} ready")
    listed = {t["alias"]: t for t in svc.list(team)}
    assert listed["mine"]["state"] == "ready" and listed["mine"]["size_bytes"] == 1234


async def test_alias_of_building_or_failed_template_is_409_naming_it(svc):
    team = svc.store.create_team("t")
    first = await svc.build(team, {"template": SPEC, "alias": "mine"})
    with pytest.raises(Conflict) as exc:
        await svc.build(team, {"template": SPEC, "alias": "mine"})
    assert first["template_id"] in exc.value.message and "building" in exc.value.message
    svc.fake.fail = True
    await _finish(svc, first["build_id"])
    status = svc.build_status(team, first["build_id"])
    assert status["status"] == "failed"
    assert "step 2/3" in status["logs"][-1] and "exit code 7" in status["logs"][-1]
    with pytest.raises(Conflict, match="failed"):
        await svc.build(team, {"template": SPEC, "alias": "mine"})


async def test_rebuild_only_failed_templates(svc):
    team = svc.store.create_team("t")
    svc.fake.fail = True
    svc.fake.release.set()
    first = await svc.build(team, {"template": SPEC, "alias": "mine"})
    await svc.wait(first["build_id"])
    svc.fake.fail = False
    again = await svc.rebuild(team, "mine")
    assert again["template_id"] == first["template_id"] and again["build_id"] != first["build_id"]
    await svc.wait(again["build_id"])
    assert svc.resolve(team, "mine").template_id == first["template_id"]
    with pytest.raises(Conflict, match="only failed"):
        await svc.rebuild(team, first["template_id"])


async def test_new_build_under_ready_alias_takes_it_only_when_complete(svc):
    team = svc.store.create_team("t")
    svc.fake.release.set()
    old = await svc.build(team, {"template": SPEC, "alias": "mine"})
    await svc.wait(old["build_id"])
    svc.fake.release.clear()
    new = await svc.build(team, {"template": {**SPEC, "run_cmds": ["true"]}, "alias": "mine"})
    assert svc.resolve(team, "mine").template_id == old["template_id"]
    await _finish(svc, new["build_id"])
    assert svc.resolve(team, "mine").template_id == new["template_id"]
    assert svc.resolve(team, old["template_id"]).state == "ready"  # still usable by id


async def test_teams_are_isolated_and_errors_name_things(svc):
    a, b = svc.store.create_team("a"), svc.store.create_team("b")
    svc.fake.release.set()
    info = await svc.build(a, {"template": SPEC, "alias": "mine"})
    await svc.wait(info["build_id"])
    with pytest.raises(NotFound, match="template 'mine' not found"):
        svc.resolve(b, "mine")
    with pytest.raises(NotFound):
        svc.resolve(b, info["template_id"])
    with pytest.raises(NotFound):
        svc.build_status(b, info["build_id"])
    with pytest.raises(InvalidInput, match="base_image: unsupported image 'alpine:3'"):
        await svc.build(a, {"template": {"base_image": "alpine:3"}, "alias": "x"})
    with pytest.raises(InvalidInput, match="template.context_id: unknown build context"):
        await svc.build(
            a,
            {"template": {"copies": [{"src": "a", "dst": "/a"}], "context_id": "ctx-" + "0" * 64}},
        )


async def test_delete_refuses_while_sandboxes_use_it(svc, monkeypatch):
    team = svc.store.create_team("t")
    svc.fake.release.set()
    info = await svc.build(team, {"template": SPEC, "alias": "mine"})
    await svc.wait(info["build_id"])
    monkeypatch.setattr(svc.store, "count_sandboxes_using", lambda tid: 2)
    with pytest.raises(Conflict, match="used by 2 sandbox"):
        svc.delete(team, "mine")
    monkeypatch.setattr(svc.store, "count_sandboxes_using", lambda tid: 0)
    svc.delete(team, "mine")
    with pytest.raises(NotFound):
        svc.get(team, "mine")


async def test_gc_removes_only_unreferenced_layers(svc):
    import json

    team = svc.store.create_team("t")
    svc.fake.release.set()
    info = await svc.build(team, {"template": SPEC, "alias": "mine"})
    await svc.wait(info["build_id"])
    cache = svc.builder.cache
    used = svc.resolve(team, "mine").layer_keys
    for key in [*used, "f" * 64]:
        meta = {
            "key": key,
            "parent": "",
            "label": "x",
            "size_bytes": 10,
            "build_seconds": 0,
            "created_at": 0,
        }
        (cache.dir(key) / "layer.json").parent.mkdir(parents=True, exist_ok=True)
        cache.fs(key).mkdir(exist_ok=True)
        (cache.dir(key) / "layer.json").write_text(json.dumps(meta))
    out = svc.gc()
    assert (out["removed_layers"], out["freed_bytes"], out["dry_run"]) == (1, 10, False)
    assert len(out["layers"]) == 1
    assert sorted(cache.layer_keys()) == sorted(used)
    svc.delete(team, "mine")
    assert svc.gc()["removed_layers"] == len(set(used))


async def test_a_failed_log_flush_is_logged_and_the_build_goes_on(svc, monkeypatch, caplog):
    import sqlite3

    from declawd.templates import service as service_module

    monkeypatch.setattr(service_module, "_LOG_FLUSH_S", 0.0)  # every line flushes

    def save_build_logs(build_id, logs):  # only the flushes while building fail
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(svc.store, "save_build_logs", save_build_logs)
    team = svc.store.create_team("t")
    info = await svc.build(team, {"template": SPEC, "alias": "mine"})
    with caplog.at_level("WARNING", logger="declawd.templates.service"):
        await _finish(svc, info["build_id"])
    status = svc.build_status(team, info["build_id"])
    assert status["status"] == "completed"
    assert status["logs"][-1].startswith(f"template {info['template_id']} ready")
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings and all(
        m == f"build {info['build_id']}: could not save its log so far: database is locked"
        for m in warnings
    )


async def test_gc_logs_a_built_in_it_cannot_plan_and_goes_on(svc, monkeypatch, caplog):
    from declawd.templates import service as service_module

    real_plan = service_module.catalog_plan

    def catalog_plan(name):
        if name == "node":
            raise InvalidInput("catalog node: base_image", "unsupported image 'x'")
        return real_plan(name)

    monkeypatch.setattr(service_module, "catalog_plan", catalog_plan)
    with caplog.at_level("WARNING", logger="declawd.templates.service"):
        out = svc.gc(dry_run=True)
    assert out["removed_layers"] == 0
    assert [r.getMessage() for r in caplog.records] == [
        "gc: built-in 'node' has no plan, its layers are not kept: "
        "catalog node: base_image: unsupported image 'x'"
    ]


async def test_delete_refuses_while_snapshots_need_its_layers(svc, monkeypatch):
    team = svc.store.create_team("t")
    svc.fake.release.set()
    info = await svc.build(team, {"template": SPEC, "alias": "mine"})
    await svc.wait(info["build_id"])
    monkeypatch.setattr(svc.store, "count_snapshots_using", lambda tid: 3)
    with pytest.raises(Conflict, match="used by 3 snapshot"):
        svc.delete(team, "mine")
    monkeypatch.setattr(svc.store, "count_snapshots_using", lambda tid: 0)
    svc.delete(team, "mine")
