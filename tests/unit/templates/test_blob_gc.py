"""Garbage collection of the shared blob store: which published layers and build contexts go,
which stay (references, built-ins, builds in progress, the age floor), the locks, and a fetch
that loses the race to gc.

Real filesystem blob store, layer distributor (GNU tar, as root) and SQLite store; the API
server is a `TemplateService` in cluster mode, the node one with a node id.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from declawd.blobs import BlobLockTimeout, FsBlobStore
from declawd.config import Settings
from declawd.errors import Conflict, NotFound
from declawd.store import Store
from declawd.templates import blobgc
from declawd.templates.catalog import catalog_plan
from declawd.templates.context import context_blob_key, publish_context
from declawd.templates.distribute import LayerDistributor, info_key, tar_key
from declawd.templates.layers import LayerCache
from declawd.templates.model import template_from_record
from declawd.templates.plan import plan_spec
from declawd.templates.service import TemplateService
from declawd.templates.spec import parse_spec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layers are archived as root")

SPEC = {"base_image": "debian:bookworm", "run_cmds": ["echo hi > /hello"]}
OLD = 2 * blobgc.SHARED_MIN_AGE_S  # seconds: past the floor


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "declawd.db")
    yield s
    s.close()


@pytest.fixture
def api(tmp_path: Path, store: Store) -> TemplateService:
    """A cluster's API server: it has the store and the blob store, no layers of its own."""
    s = Settings(state_dir=tmp_path / "api", blob_dir=tmp_path / "shared", cluster=True)
    return TemplateService(s, store)


@pytest.fixture
def node(tmp_path: Path, store: Store) -> TemplateService:
    s = Settings(state_dir=tmp_path / "n1", blob_dir=tmp_path / "shared", node_id="n1")
    return TemplateService(s, store)


def _publish(node: TemplateService, key: str, *, age_s: float = OLD) -> int:
    """Commit a small layer `key` on the node, publish it, make it `age_s` old; its
    archive's size."""
    cache = node.builder.cache
    with cache.staging(key) as tmp:
        (tmp / "fs").mkdir()
        (tmp / "fs" / "file").write_text(key * 100)
        cache.commit(tmp, key, "", "fake", 0.1)
    assert node.distributor is not None and node.distributor.publish(key)
    _age_layer(node.distributor.blobs, key, age_s)
    return node.distributor.blobs.size(tar_key(key)) or 0


def _age_layer(blobs: Any, key: str, age_s: float) -> None:
    path = blobs.path(info_key(key))
    record = json.loads(path.read_text())
    record["published_at"] = time.time() - age_s
    path.write_text(json.dumps(record))


def _age_blob(blobs: FsBlobStore, key: str, age_s: float) -> None:
    at = time.time() - age_s
    os.utime(blobs.path(key), (at, at))


def _template(
    store: Store, team: str, layers: list[str], *, spec: Any = None, state: str = "ready"
) -> str:
    tid = f"tpl-{os.urandom(6).hex()}"
    store.insert_template(
        {
            "template_id": tid,
            "team_id": team,
            "state": state,
            "spec": {"template": spec or SPEC},
            "layers": layers,
        }
    )
    return tid


def _context(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return buf.getvalue()


def _layers(blobs: FsBlobStore) -> list[str]:
    return blobs.list("layers")


def test_an_old_layer_no_template_references_is_unpublished_json_and_tar(
    api: TemplateService, node: TemplateService, store: Store
) -> None:
    team = store.create_team("t")
    used, unused = "a" * 64, "b" * 64
    _publish(node, used)
    size = _publish(node, unused)
    _template(store, team, [used])
    out = api.gc()
    assert out["shared"] is True
    assert (out["removed_published"], out["freed_published_bytes"]) == (1, size)
    assert out["published"] == [unused]
    assert (out["removed_layers"], out["layers"], out["dry_run"]) == (0, [], False)
    blobs = FsBlobStore(api.settings.blobs_path)
    assert _layers(blobs) == [f"{used}.json", f"{used}.tar"]
    assert blobs.list("locks") == []  # the gc lock and the layer's lock are released
    # the node's own cache is not the API server's to clean
    assert node.builder.cache.exists(unused)


def test_a_deleted_templates_layers_go_but_the_built_ins_stay(
    api: TemplateService, node: TemplateService, store: Store
) -> None:
    team = store.create_team("t")
    builtin = catalog_plan("base").keys[0]
    mine = "c" * 64
    _publish(node, builtin)
    _publish(node, mine)
    tid = _template(store, team, [builtin, mine])
    assert api.gc()["removed_published"] == 0
    store.delete_template(tid)
    out = api.gc()
    assert out["published"] == [mine]
    assert api.distributor is not None and api.distributor.published(builtin)


def test_a_recent_unreferenced_layer_stays_whatever_min_age_the_caller_asks(
    api: TemplateService, node: TemplateService
) -> None:
    key = "d" * 64
    _publish(node, key, age_s=blobgc.SHARED_MIN_AGE_S / 2)
    assert api.gc(min_age_s=0)["removed_published"] == 0
    assert api.gc(min_age_s=10 * OLD)["removed_published"] == 0
    _age_layer(api.distributor.blobs, key, OLD)  # type: ignore[union-attr]
    assert api.gc(min_age_s=10 * OLD)["removed_published"] == 0  # older than the floor only
    assert api.gc()["published"] == [key]


def test_the_planned_layers_of_a_template_still_building_stay(
    api: TemplateService, node: TemplateService, store: Store
) -> None:
    """A node publishes each layer as it builds it; the record names them only when done."""
    team = store.create_team("t")
    keys = plan_spec(parse_spec(SPEC)).keys
    for key in keys[:2]:
        _publish(node, key)
    tid = _template(store, team, [], state="building")
    assert api.gc()["removed_published"] == 0
    store.update_template(tid, state="failed")  # a failed build: no record names them
    assert sorted(api.gc()["published"]) == sorted(keys[:2])


def test_a_dry_run_reports_everything_and_removes_nothing(
    api: TemplateService, node: TemplateService, store: Store
) -> None:
    team = store.create_team("t")
    key = "e" * 64
    size = _publish(node, key)
    ctx = api.upload_context(team, _context({"a.txt": b"a"}))["context_id"]
    blobs = FsBlobStore(api.settings.blobs_path)
    _age_blob(blobs, context_blob_key(ctx), OLD)
    before = sorted(p.relative_to(blobs.root) for p in blobs.root.rglob("*"))
    out = api.gc(dry_run=True)
    assert out["dry_run"] is True
    assert (out["removed_published"], out["freed_published_bytes"], out["published"]) == (
        1,
        size,
        [key],
    )
    assert (out["removed_contexts"], out["contexts"]) == (1, [ctx])
    assert out["freed_context_bytes"] == blobs.size(context_blob_key(ctx))
    assert sorted(p.relative_to(blobs.root) for p in blobs.root.rglob("*")) == before
    assert (api.contexts_dir / ctx / "files").is_dir()


def test_a_deleted_templates_context_goes_and_a_live_ones_stays(
    api: TemplateService, store: Store
) -> None:
    team = store.create_team("t")
    blobs = FsBlobStore(api.settings.blobs_path)
    live = api.upload_context(team, _context({"live.txt": b"1"}))["context_id"]
    gone = api.upload_context(team, _context({"gone.txt": b"2"}))["context_id"]
    spec = {**SPEC, "copies": [{"src": "live.txt", "dst": "/x"}]}
    _template(store, team, [], spec={**spec, "context_id": live})
    tid = _template(store, team, [], spec={**spec, "context_id": gone}, state="failed")
    for ctx in (live, gone):
        _age_blob(blobs, context_blob_key(ctx), OLD)
    assert api.gc()["removed_contexts"] == 0  # a failed template can be rebuilt: kept
    store.delete_template(tid)
    out = api.gc()
    assert (out["removed_contexts"], out["contexts"]) == (1, [gone])
    assert blobs.exists(context_blob_key(live)) and not blobs.exists(context_blob_key(gone))
    # this host's extracted copy goes too: a build naming it is refused here, not on a node
    assert (api.contexts_dir / live / "files").is_dir()
    assert not (api.contexts_dir / gone).exists()
    assert [p.name for p in api.contexts_dir.iterdir()] == [live]


def test_a_recent_upload_and_an_old_one_uploaded_again_are_kept(
    api: TemplateService, store: Store
) -> None:
    team = store.create_team("t")
    blobs = FsBlobStore(api.settings.blobs_path)
    body = _context({"again.txt": b"3"})
    ctx = api.upload_context(team, body)["context_id"]
    assert api.gc()["removed_contexts"] == 0  # just uploaded: its build is not recorded yet
    _age_blob(blobs, context_blob_key(ctx), OLD)
    assert publish_context(blobs, ctx, body) is False  # there already, but written again
    assert time.time() - blobs.path(context_blob_key(ctx)).stat().st_mtime < 60
    assert api.gc()["removed_contexts"] == 0


def test_an_archive_a_publisher_left_without_its_json_is_collected_when_old(
    api: TemplateService, node: TemplateService
) -> None:
    key = "f" * 64
    _publish(node, key)
    blobs = FsBlobStore(api.settings.blobs_path)
    blobs.delete(info_key(key))  # the publisher died between the tar and the json
    assert api.gc()["removed_published"] == 0  # the tar itself is recent
    _age_blob(blobs, tar_key(key), OLD)
    assert api.gc()["published"] == [key]
    assert _layers(blobs) == []


def test_unpublish_removes_the_json_before_the_tar_and_is_idempotent(
    node: TemplateService, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "1" * 64
    _publish(node, key, age_s=0)
    dist = node.distributor
    assert dist is not None
    order: list[str] = []
    real = dist.blobs.delete

    def delete(k: str) -> None:
        order.append(k)
        real(k)

    monkeypatch.setattr(dist.blobs, "delete", delete)
    assert dist.unpublish(key, published_before=time.time() - OLD) is False  # newer: kept
    assert dist.unpublish(key) is True
    assert order == [info_key(key), tar_key(key)]
    assert dist.unpublish(key) is False and not dist.published(key)


def test_published_layers_lists_each_key_once_with_its_publish_time(
    node: TemplateService,
) -> None:
    dist = node.distributor
    assert dist is not None
    _publish(node, "2" * 64, age_s=0)
    t0 = time.time()
    _publish(node, "3" * 64, age_s=0)
    record = json.loads(dist.blobs.path(info_key("3" * 64)).read_text())  # type: ignore[attr-defined]
    del record["published_at"]  # a record from before the time was recorded: its mtime
    dist.blobs.path(info_key("3" * 64)).write_text(json.dumps(record))  # type: ignore[attr-defined]
    entries = dist.published_layers()
    assert [(e.key, e.complete) for e in entries] == [("2" * 64, True), ("3" * 64, True)]
    assert entries[0].published_at <= t0 <= entries[1].published_at <= time.time()
    assert entries[0].tar_bytes == dist.blobs.size(tar_key("2" * 64))


def test_a_layer_being_published_is_kept_and_a_second_gc_is_busy(
    api: TemplateService, node: TemplateService, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "4" * 64
    _publish(node, key)
    blobs = api.distributor.blobs  # type: ignore[union-attr]
    with blobs.lock(f"layer-{key}", wait_s=1, stale_s=60):  # a publisher holds it
        out = api.gc()
    assert out["removed_published"] == 0 and api.distributor.published(key)  # type: ignore[union-attr]
    monkeypatch.setattr(blobgc, "GC_LOCK_WAIT_S", 0.2)
    with blobs.lock(blobgc.GC_LOCK, wait_s=1, stale_s=60):  # another API server's gc
        with pytest.raises(BlobLockTimeout, match="gc"):
            api.gc()
        assert api.gc(dry_run=True)["published"] == [key]  # a dry run takes no lock
    assert api.gc()["published"] == [key]


def test_only_limits_the_layers_and_leaves_contexts_alone(
    api: TemplateService, node: TemplateService, store: Store
) -> None:
    team = store.create_team("t")
    a, b = "5" * 64, "6" * 64
    _publish(node, a)
    _publish(node, b)
    ctx = api.upload_context(team, _context({"x": b"x"}))["context_id"]
    _age_blob(FsBlobStore(api.settings.blobs_path), context_blob_key(ctx), OLD)
    out = api.gc(only=[a])
    assert (out["published"], out["removed_contexts"]) == ([a], 0)


def test_a_nodes_gc_cleans_its_own_cache_only(node: TemplateService, store: Store) -> None:
    key = "7" * 64
    _publish(node, key)
    info = node.builder.cache.info(key)
    assert info is not None
    out = node.gc()
    assert out["shared"] is False and out["removed_published"] == 0
    assert out["layers"] == [key]  # its cached copy went
    assert node.distributor is not None and node.distributor.published(key)


# A fetch that loses the race -------------------------------------------------------------
class RacingBlobs(FsBlobStore):
    """A blob store where gc strikes just as a host opens a layer's archive: `then` runs
    first, and the reader gets what `serve` makes of the path (it may no longer exist)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.then: Any = None
        self.serve: Any = lambda path: path

    @contextlib.contextmanager
    def reading(self, key: str) -> Iterator[Path]:
        if key.endswith(".tar") and self.then is not None:
            then, self.then = self.then, None
            keep = Path(str(self.path(key)) + ".seen")
            os.link(self.path(key), keep)  # what an open reader still holds
            then()
            try:
                yield self.serve(keep)
            finally:
                keep.unlink(missing_ok=True)
            return
        with super().reading(key) as path:
            yield path


def _racing_node(tmp_path: Path, store: Store) -> tuple[TemplateService, RacingBlobs]:
    s = Settings(state_dir=tmp_path / "n2", blob_dir=tmp_path / "shared", node_id="n2")
    svc = TemplateService(s, store)
    racing = RacingBlobs(tmp_path / "shared")
    svc.blobs = racing
    svc.distributor = LayerDistributor(svc.builder.cache, racing)
    svc.builder.distributor = svc.distributor
    return svc, racing


def _nothing_fetched(cache: LayerCache, key: str) -> None:
    assert not cache.exists(key) and not cache.dir(key).exists()
    assert not cache.tmp_dir.exists() or list(cache.tmp_dir.iterdir()) == []


def test_a_fetch_whose_layer_gc_removes_as_it_opens_it_gets_not_found_and_a_conflict(
    tmp_path: Path, api: TemplateService, node: TemplateService, store: Store
) -> None:
    key = "8" * 64
    _publish(node, key)
    other, racing = _racing_node(tmp_path, store)
    gc_dist = api.distributor
    assert gc_dist is not None
    racing.then = lambda: gc_dist.unpublish(key)
    racing.serve = lambda path: path.with_name("gone")  # the name no longer opens
    with pytest.raises(NotFound, match="removed from the blob store while it was fetched"):
        other.distributor.fetch(key)  # type: ignore[union-attr]
    _nothing_fetched(other.builder.cache, key)

    # through a node's make-local step: the template's "missing layers" conflict
    _publish(node, key)
    team = store.create_team("t")
    rec = store.get_template(_template(store, team, [key]))
    assert rec is not None
    racing.then = lambda: gc_dist.unpublish(key)
    racing.serve = lambda path: path.with_name("gone")
    tpl = template_from_record(rec, other.builder.cache.fs)
    with pytest.raises(Conflict, match="missing layers") as err:
        other.make_local(tpl, "mine")
    assert err.value.code == "template_not_ready"
    _nothing_fetched(other.builder.cache, key)


def test_a_fetch_reading_a_half_gone_archive_commits_nothing(
    tmp_path: Path, api: TemplateService, node: TemplateService, store: Store
) -> None:
    """On NFS another host's unlink ends an open read: the reader sees a cut archive."""
    key = "9" * 64
    _publish(node, key)
    other, racing = _racing_node(tmp_path, store)
    cut = tmp_path / "cut.tar"

    def half(path: Path) -> Path:
        cut.write_bytes(path.read_bytes()[:1024])
        return cut

    racing.then = lambda: api.distributor.unpublish(key)  # type: ignore[union-attr]
    racing.serve = half
    with pytest.raises(NotFound, match="while it was fetched"):
        other.distributor.fetch(key)  # type: ignore[union-attr]
    _nothing_fetched(other.builder.cache, key)


def test_fetches_racing_gc_get_a_whole_layer_or_not_found(
    tmp_path: Path, api: TemplateService, node: TemplateService
) -> None:
    key = "0" * 64
    dist = api.distributor
    assert dist is not None
    outcomes: list[str] = []
    for i in range(12):
        _publish(node, key)
        fetcher = LayerDistributor(LayerCache(tmp_path / f"h{i}" / "templates"), dist.blobs)
        start = threading.Barrier(2)

        def fetch(
            f: LayerDistributor = fetcher, start: threading.Barrier = start, lag: float = i % 4
        ) -> None:
            start.wait()
            time.sleep(0.0003 * lag)  # from ahead of gc to behind it
            try:
                f.fetch(key)
                outcomes.append("fetched")
            except NotFound:
                outcomes.append("not found")

        t = threading.Thread(target=fetch)
        t.start()
        start.wait()
        assert dist.unpublish(key) is True
        t.join()
        if outcomes[-1] == "fetched":
            assert (fetcher.cache.fs(key) / "file").read_text() == key * 100
        else:
            _nothing_fetched(fetcher.cache, key)
        node.builder.cache.remove(key)
    assert set(outcomes) <= {"fetched", "not found"}
