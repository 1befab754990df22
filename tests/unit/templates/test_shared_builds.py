"""Templates built once in a cluster: the built-ins' blob lock and decision, a node's
make-local step, an API server's resolve by the blob store, builds sent to a node.

Real blob store, layer distributor (GNU tar) and SQLite store; the builder is a fake that
commits small layers, so what these tests count is who built and who fetched.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from declawd.blobs import BlobLockTimeout, FsBlobStore
from declawd.config import Settings
from declawd.errors import Conflict, NotFound, Unavailable
from declawd.store import Store
from declawd.templates import service as service_mod
from declawd.templates.builder import BuildResult
from declawd.templates.catalog import catalog_plan
from declawd.templates.distribute import info_key
from declawd.templates.plan import BuildPlan
from declawd.templates.service import TemplateService, builtin_step

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layers are archived as root")

SPEC = {"base_image": "debian:bookworm", "run_cmds": ["echo hi > /hello"]}


class CommittingBuilder:
    """Stands in for Builder.build: commits each missing layer (one small file), after
    `release` is set; counts the layers it built."""

    def __init__(self, service: TemplateService) -> None:
        self.cache = service.builder.cache
        self.release = asyncio.Event()
        self.release.set()
        self.built: list[str] = []

    async def build(self, plan: BuildPlan, log: Any, on_step: Any = None) -> BuildResult:
        await self.release.wait()
        parent = ""
        for key in plan.keys:
            if not self.cache.exists(key):
                with self.cache.staging(key) as tmp:
                    (tmp / "fs").mkdir()
                    (tmp / "fs" / f"layer-{key[:8]}").write_text(key)
                    self.cache.commit(tmp, key, parent, "fake", 0.1)
                self.built.append(key)
            parent = key
        return BuildResult(plan.keys, [self.cache.fs(k) for k in plan.keys], 10, 0.1, 0)


def _service(tmp_path: Path, store: Store, name: str, **settings: Any) -> TemplateService:
    s = Settings(state_dir=tmp_path / name, blob_dir=tmp_path / "shared", node_id=name, **settings)
    svc = TemplateService(s, store)
    fake = CommittingBuilder(svc)
    svc.builder.build = fake.build  # type: ignore[method-assign]
    svc.fake = fake  # type: ignore[attr-defined]
    return svc


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = Store(tmp_path / "declawd.db")
    yield s
    s.close()


def _origins(svc: TemplateService, keys: list[str]) -> set[str]:
    return {svc.builder.cache.info(k).origin for k in keys}  # type: ignore[union-attr]


def test_builtin_step_fetches_when_published_else_publishes_when_local_else_builds() -> None:
    yes, no = (lambda _k: True), (lambda _k: False)
    some = lambda k: k == "a"  # noqa: E731
    assert builtin_step(["a", "b"], local=no, published=yes) == "fetch"
    assert builtin_step(["a", "b"], local=yes, published=yes) == "fetch"
    assert builtin_step(["a", "b"], local=yes, published=some) == "publish"
    assert builtin_step(["a", "b"], local=some, published=some) == "build"
    assert builtin_step(["a", "b"], local=no, published=no) == "build"


async def test_three_nodes_at_once_build_a_builtin_once_and_the_others_fetch(
    tmp_path: Path, store: Store
) -> None:
    nodes = [_service(tmp_path, store, n) for n in ("n1", "n2", "n3")]
    for n in nodes:
        n.fake.release.clear()  # type: ignore[attr-defined]
    runs = [asyncio.create_task(n.ensure_builtin(["base"])) for n in nodes]
    await asyncio.sleep(0.5)  # one holds the lock and is building; the others wait on it
    for n in nodes:
        n.fake.release.set()  # type: ignore[attr-defined]
    results = await asyncio.gather(*runs)
    keys = catalog_plan("base").keys
    builders = [n for n in nodes if n.fake.built]  # type: ignore[attr-defined]
    assert len(builders) == 1 and builders[0].fake.built == keys  # type: ignore[attr-defined]
    assert _origins(builders[0], keys) == {"built"}
    for n in nodes:
        if n is not builders[0]:
            assert _origins(n, keys) == {"fetched"}
            assert n.fake.built == []  # type: ignore[attr-defined]
    blobs = FsBlobStore(tmp_path / "shared")
    assert all(blobs.exists(info_key(k)) for k in keys)
    assert {r[0].template_id for r in results} == {results[0][0].template_id}
    assert all(n.present == [results[0][0].template_id] for n in nodes)
    assert blobs.list("locks") == []  # released


async def test_a_node_with_the_layers_publishes_them_and_a_later_node_fetches(
    tmp_path: Path, store: Store
) -> None:
    first = _service(tmp_path, store, "n1")
    keys = catalog_plan("base").keys
    await first.fake.build(catalog_plan("base"), print)  # type: ignore[attr-defined]
    first.fake.built.clear()  # type: ignore[attr-defined]
    assert await first._share_builtin("base", catalog_plan("base"), print) == "publish"
    assert first.fake.built == []  # type: ignore[attr-defined]
    later = _service(tmp_path, store, "n2")
    assert await later._share_builtin("base", catalog_plan("base"), print) == "fetch"
    assert _origins(later, keys) == {"fetched"} and later.fake.built == []  # type: ignore[attr-defined]


async def test_a_builtin_lock_held_past_the_wait_is_an_error(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_mod, "BUILTIN_WAIT_S", 0.5)
    node = _service(tmp_path, store, "n1")
    keys = catalog_plan("base").keys
    held = FsBlobStore(tmp_path / "shared").lock(f"build-{keys[-1]}", wait_s=1, stale_s=60)
    with held, pytest.raises(BlobLockTimeout):
        await node.ensure_builtin(["base"])
    assert node.fake.built == []  # type: ignore[attr-defined]


async def test_a_node_makes_a_template_local_when_it_resolves_it(
    tmp_path: Path, store: Store
) -> None:
    builder = _service(tmp_path, store, "n1")
    await builder.ensure_builtin(["base"])
    other = _service(tmp_path, store, "n2")
    tpl = await asyncio.to_thread(other.resolve, "", "base")
    assert all(p.is_dir() for p in tpl.layer_paths)
    assert _origins(other, tpl.layer_keys) == {"fetched"}
    assert other.present == [tpl.template_id]
    # A layer nobody has any more: the node says which, as an unbuilt template.
    lone = Settings(state_dir=tmp_path / "n3", node_id="n3")  # no shared blob store
    with pytest.raises(Conflict, match="missing layers") as exc:
        TemplateService(lone, store).resolve("", "base")
    assert exc.value.code == "template_not_ready"


async def test_an_api_server_judges_layers_by_the_blob_store(tmp_path: Path, store: Store) -> None:
    await _service(tmp_path, store, "n1").ensure_builtin(["base"])
    api = _service(tmp_path, store, "api", cluster=True)
    tpl = api.resolve("", "base")
    assert not any(p.exists() for p in tpl.layer_paths)  # nothing fetched on the API server
    (tmp_path / "shared" / info_key(tpl.layer_keys[-1])).unlink()
    with pytest.raises(Conflict, match="missing layers"):
        api.resolve("", "base")
    unshared = TemplateService(Settings(state_dir=tmp_path / "api2", cluster=True), store)
    assert unshared.resolve("", "base").template_id == tpl.template_id  # the node checks


async def test_a_cluster_build_is_sent_to_a_node_which_runs_and_publishes_it(
    tmp_path: Path, store: Store
) -> None:
    api = _service(tmp_path, store, "api", cluster=True)
    node = _service(tmp_path, store, "n1")
    sent: list[dict[str, Any]] = []

    async def send(**build: Any) -> str:
        sent.append(build)
        return "n1"

    api.build_on_nodes(send)
    team = store.create_team("t")
    info = await api.build(team, {"template": SPEC, "alias": "mine"})
    assert sent == [
        {
            "build_id": info["build_id"],
            "team_id": team,
            "template_id": info["template_id"],
            "alias": "mine",
        }
    ]
    assert api.fake.built == [] and api._tasks == {}  # type: ignore[attr-defined]

    node.fake.release.clear()  # type: ignore[attr-defined]
    answer = await node.run_assigned(**sent[0])
    assert answer["status"] == "building"
    assert await node.run_assigned(**sent[0]) == answer  # the same request again
    node.fake.release.set()  # type: ignore[attr-defined]
    await node.wait(info["build_id"])
    status = api.build_status(team, info["build_id"])
    assert status["status"] == "completed" and status["logs"][0] == "building on node n1"
    tpl = api.resolve(team, "mine")  # ready, and judged present by the blob store
    assert node.present == [tpl.template_id]
    blobs = FsBlobStore(tmp_path / "shared")
    assert all(blobs.exists(info_key(k)) for k in tpl.layer_keys)
    with pytest.raises(Conflict, match="completed"):
        await node.run_assigned(**sent[0])
    with pytest.raises(NotFound):
        await node.run_assigned(**{**sent[0], "team_id": "someone-else"})


async def test_a_cluster_build_no_node_takes_fails_its_template_and_says_why(
    tmp_path: Path, store: Store
) -> None:
    api = _service(tmp_path, store, "api", cluster=True)

    async def send(**_build: Any) -> str:
        raise Unavailable("no node is up to take the build")

    api.build_on_nodes(send)
    team = store.create_team("t")
    with pytest.raises(Unavailable):
        await api.build(team, {"template": SPEC, "alias": "mine"})
    (rec,) = store.list_templates(team)
    assert rec["state"] == "failed" and "no node took the build" in rec["error"]
    (listed,) = store.list_builds(team, rec["template_id"])
    build = store.get_build(listed["build_id"])
    assert build["status"] == "failed" and "no node is up" in build["logs"][-1]


async def test_the_builder_fetches_a_step_another_host_published_instead_of_building_it(
    tmp_path: Path, store: Store
) -> None:
    await _service(tmp_path, store, "n1").ensure_builtin(["base"])
    s = Settings(state_dir=tmp_path / "n2", blob_dir=tmp_path / "shared", node_id="n2")
    svc = TemplateService(s, store)  # its real Builder: a step to build would need runc
    lines: list[str] = []
    result = await svc.builder.build(catalog_plan("base"), lines.append)
    keys = catalog_plan("base").keys
    assert result.cached_steps == len(keys) and result.keys == keys
    assert sum("fetched" in line and "from the blob store" in line for line in lines) == len(keys)
    assert _origins(svc, keys) == {"fetched"}
