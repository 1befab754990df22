"""Volumes on a blob store several hosts share: one server's start sweep never destroys what
another is making right now, and a node builds live mounts from its own mount of the store."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from declawd.blobs import open_blobs
from declawd.config import Settings
from declawd.errors import NotFound, Unavailable
from declawd.store import Store
from declawd.volumes import attach
from declawd.volumes.attach import VolumeMountSpec, mounts_on_node
from declawd.volumes.service import SCRATCH_STALE_S, VolumeService


@pytest.fixture
def store(db_target: Path | str) -> Iterator[Store]:
    with Store(db_target) as s:
        yield s


def _server(shared: Path, store: Store, name: str) -> VolumeService:
    """An API server of its own (state dir) on the shared blob store."""
    settings = Settings(state_dir=shared.parent / name, blob_dir=shared)
    return VolumeService(settings, store, owner=None, guard=False)


async def test_a_volume_another_server_is_creating_survives_a_start_sweep(
    tmp_path: Path, store: Store
) -> None:
    shared = tmp_path / "blobs"
    a, b = _server(shared, store, "a"), _server(shared, store, "b")
    await a.start()
    vid = "vol-0000000000a1"
    vdir = a.root / vid
    with a._creating(vid, wait_s=0):  # A is between the tree and its record
        vdir.mkdir()
        (vdir / "tree.partial").mkdir()
        await b.start()
        assert (vdir / "tree.partial").is_dir()
    # The create died without its record: the next sweep takes it.
    await _server(shared, store, "c").start()
    assert not vdir.exists()


async def test_spools_and_staged_writes_in_flight_survive_stale_ones_go(
    tmp_path: Path, store: Store
) -> None:
    shared = tmp_path / "blobs"
    a = _server(shared, store, "a")
    rec, _ = await a.create("team-a", "v", None)
    incoming, staging = a.root / ".incoming", a.tree(rec.volume_id).staging
    for d in (incoming, staging):
        d.mkdir(parents=True, exist_ok=True)
        (d / "in-fresh").write_bytes(b"being written")
        (d / "in-stale").write_bytes(b"left by a crash")
        old = time.time() - SCRATCH_STALE_S - 10
        os.utime(d / "in-stale", (old, old))

    await _server(shared, store, "b").start()

    for d in (incoming, staging):
        assert sorted(p.name for p in d.iterdir()) == ["in-fresh"]
    assert Path(a.tree(rec.volume_id).host("/")).is_dir()


async def test_a_node_mounts_volumes_from_its_own_mount_of_the_store(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = _server(tmp_path / "api-mount", store, "api")
    rec, _ = await api.create("team-a", "v", None)
    (Path(api.tree(rec.volume_id).host("/")) / "sub").mkdir()
    # The node mounts the same filesystem elsewhere (here: the same directory, renamed).
    node_root = tmp_path / "node-mount"
    (tmp_path / "api-mount").rename(node_root)
    node = Settings(state_dir=tmp_path / "node", blob_dir=node_root, node_id="n1")
    guarded: list[Path] = []
    monkeypatch.setattr(attach.host, "protect", guarded.append)
    specs = [
        VolumeMountSpec(rec.volume_id, "sub", "/mnt/rw", False),
        VolumeMountSpec(rec.volume_id, "", "/mnt/ro", True),
    ]

    mounts = mounts_on_node(node, store, open_blobs(node), "team-a", specs)

    tree = node_root / "volumes" / rec.volume_id / "tree"
    assert guarded == [node_root / "volumes"]  # this host's guard, on this host's path
    assert [(m.destination, m.source, m.options) for m in mounts] == [
        ("/mnt/rw", str(tree / "sub"), ["bind", "rw", "nosuid", "nodev"]),
        ("/mnt/ro", str(tree), ["bind", "ro", "nosuid", "nodev"]),
    ]
    with pytest.raises(NotFound, match="not found"):
        mounts_on_node(node, store, open_blobs(node), "team-b", specs)
    with pytest.raises(NotFound, match="no directory /nope"):
        missing = [VolumeMountSpec(rec.volume_id, "nope", "/mnt/x", False)]
        mounts_on_node(node, store, open_blobs(node), "team-a", missing)

    def refuse(path: Path) -> None:
        raise OSError("no nosymfollow here")

    monkeypatch.setattr(attach.host, "protect", refuse)
    with pytest.raises(Unavailable, match="use mode copy"):
        mounts_on_node(node, store, open_blobs(node), "team-a", specs)
