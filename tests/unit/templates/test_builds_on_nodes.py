"""A team template build sent to a node (cluster mode): the API server records which node
took it, and a node the sweep marked lost cannot turn the build it finishes late back into
a ready template. Real store (both backends); the builder is a fake that blocks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from declawd.config import Settings
from declawd.errors import Unavailable
from declawd.store import Store
from declawd.store.nodes import build_lost_message
from declawd.templates import service as service_mod
from declawd.templates.builder import BuildResult
from declawd.templates.plan import BuildPlan
from declawd.templates.service import TemplateService

SPEC = {"base_image": "debian:bookworm", "run_cmds": ["echo hi > /hello"]}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class BlockingBuilder:
    """Stands in for Builder.build: logs a step, waits for `release`, logs another and
    makes the plan's layers (`built`)."""

    def __init__(self, service: TemplateService) -> None:
        self.cache = service.builder.cache
        self.release = asyncio.Event()
        self.built: list[str] = []

    async def build(self, plan: BuildPlan, log: Any, on_step: Any = None) -> BuildResult:
        log("step 1/2")
        await self.release.wait()
        log("step 2/2")
        for key in plan.keys:
            self.cache.fs(key).mkdir(parents=True, exist_ok=True)
        self.built = plan.keys
        return BuildResult(plan.keys, [self.cache.fs(k) for k in plan.keys], 10, 0.1, 0)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db_target: Path | str, clock: Clock) -> Iterator[Store]:
    with Store(db_target, clock=clock) as s:
        yield s


def _node(tmp_path: Path, store: Store) -> tuple[TemplateService, BlockingBuilder]:
    settings = Settings(state_dir=tmp_path / "n1", node_id="n1", node_name="node-1")
    node = TemplateService(settings, store)
    fake = BlockingBuilder(node)
    node.builder.build = fake.build  # type: ignore[method-assign]
    return node, fake


def _api(tmp_path: Path, store: Store, node: TemplateService) -> TemplateService:
    """An API server whose `build_on_nodes` is the node's `run_assigned`, as over the wire."""
    api = TemplateService(Settings(state_dir=tmp_path / "api", cluster=True), store)

    async def send(*, build_id: str, team_id: str, template_id: str, alias: str | None) -> str:
        await node.run_assigned(
            build_id=build_id, team_id=team_id, template_id=template_id, alias=alias
        )
        return "n1"

    api.build_on_nodes(send)
    return api


async def test_the_api_server_records_the_node_that_took_the_build(
    tmp_path: Path, store: Store
) -> None:
    node, fake = _node(tmp_path, store)
    api = _api(tmp_path, store, node)
    team = store.create_team("t")
    info = await api.build(team, {"template": SPEC, "alias": "mine"})
    assert info["status"] == "building"
    assert store.get_build(info["build_id"])["node_id"] == "n1"  # type: ignore[index]
    fake.release.set()
    await node.wait(info["build_id"])
    build = store.get_build(info["build_id"])
    assert build is not None and build["status"] == "completed" and build["node_id"] == "n1"
    assert node.resolve(team, "mine").template_id == info["template_id"]


async def test_a_build_no_node_took_records_no_node(tmp_path: Path, store: Store) -> None:
    api = TemplateService(Settings(state_dir=tmp_path / "api", cluster=True), store)

    async def send(**_: Any) -> str:
        raise Unavailable("no node is up")

    api.build_on_nodes(send)
    team = store.create_team("t")
    with pytest.raises(Unavailable):
        await api.build(team, {"template": SPEC})
    [tpl] = store.list_templates(team)
    [build] = store._db.query("SELECT status, node_id FROM builds")
    assert (tpl["state"], tuple(build)) == ("failed", ("failed", ""))


async def test_a_node_marked_lost_cannot_make_its_failed_build_ready(
    tmp_path: Path,
    store: Store,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(service_mod, "_LOG_FLUSH_S", 0.0)  # every line is flushed
    store.register_node("n1", "node-1", "https://127.0.0.1:1")
    node, fake = _node(tmp_path, store)
    api = _api(tmp_path, store, node)
    team = store.create_team("t")
    info = await api.build(team, {"template": SPEC, "alias": "mine"})
    await asyncio.sleep(0)  # the build task runs up to its first step
    assert store.get_build(info["build_id"])["logs"][-1] == "step 1/2"  # type: ignore[index]
    clock.now += 11
    [loss] = store.mark_stale_nodes_down(clock.now - 10)
    assert loss.builds == [info["build_id"]]
    failed = store.get_build(info["build_id"])
    assert failed is not None and failed["status"] == "failed"
    # The node was only slow: it finishes the build, and the store keeps the failure.
    with caplog.at_level(logging.WARNING, logger="declawd.templates.service"):
        fake.release.set()
        await node.wait(info["build_id"])
    assert store.get_build(info["build_id"]) == failed
    assert failed["logs"][-1] == f"error: {build_lost_message('node-1', 11)}"
    tpl = store.get_template(info["template_id"])
    assert tpl is not None and tpl["state"] == "failed" and not tpl["layers"]
    assert tpl["error"] == build_lost_message("node-1", 11)
    assert store.get_template_by_alias(team, "mine")["state"] == "failed"  # type: ignore[index]
    bid, tid = info["build_id"], info["template_id"]
    assert [r.getMessage() for r in caplog.records] == [
        f"build {bid}: no longer building in the store (its node was marked lost):"
        " its log is not saved any more",
        f"build {bid} of template {tid} completed here, but the store had failed it already"
        " (its node was marked lost): that failure stands, and the layers built stay in this"
        " node's cache",
    ]
    assert fake.built and all(node.builder.cache.fs(k).is_dir() for k in fake.built)
