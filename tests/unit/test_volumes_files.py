"""Volume files through the service: versions, compare-and-swap, quota, tenancy (no root)."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from declawd.config import Settings
from declawd.errors import Conflict, InvalidInput, NotFound, TooLarge
from declawd.store import Store
from declawd.volumes import VolumeFiles, VolumeService


async def _body(*chunks: bytes) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c


@pytest.fixture
def store(db_target: Path | str) -> Iterator[Store]:
    with Store(db_target) as s:
        yield s


@pytest.fixture
def svc(tmp_path: Path, store: Store) -> VolumeService:
    settings = Settings(state_dir=tmp_path / "state", volume_quota_mb=1)
    return VolumeService(settings, store, owner=None, guard=False)


@pytest.fixture
def files(svc: VolumeService) -> VolumeFiles:
    return VolumeFiles(svc)


async def _volume(svc: VolumeService, team: str = "team-a") -> str:
    rec, report = await svc.create(team, "v", None)
    assert report is None
    return rec.volume_id


async def test_versions_change_with_every_write_and_cas_refuses_stale(
    svc: VolumeService, files: VolumeFiles
) -> None:
    vid = await _volume(svc)
    first = await files.write("team-a", vid, "/notes/a.txt", _body(b"one"))
    assert (first.path, first.stat.size) == ("/notes/a.txt", 3)
    info = await files.info("team-a", vid, "notes/a.txt")  # relative spelling, same file
    assert info.version == first.version
    second = await files.write(
        "team-a", vid, "/notes/a.txt", _body(b"two!"), if_version=str(info.version)
    )
    assert second.version > first.version
    with pytest.raises(Conflict, match="version mismatch") as exc:
        await files.write("team-a", vid, "/notes/a.txt", _body(b"x"), if_version=str(info.version))
    assert exc.value.code == "version_mismatch"
    _, chunks = await files.read("team-a", vid, "/notes/a.txt")
    assert b"".join([c async for c in chunks]) == b"two!"


async def test_if_version_zero_means_create_only(svc: VolumeService, files: VolumeFiles) -> None:
    vid = await _volume(svc)
    await files.write("team-a", vid, "/f", _body(b"a"), if_version="0")
    with pytest.raises(Conflict, match="exists"):
        await files.write("team-a", vid, "/f", _body(b"b"), if_version="0")
    with pytest.raises(Conflict, match="does not exist"):
        await files.write("team-a", vid, "/g", _body(b"b"), if_version="7")


async def test_a_change_behind_the_api_gets_a_new_version_lazily(
    svc: VolumeService, files: VolumeFiles
) -> None:
    vid = await _volume(svc)
    await files.write("team-a", vid, "/f", _body(b"abc"))
    v1 = (await files.info("team-a", vid, "/f")).version
    assert (await files.info("team-a", vid, "/f")).version == v1  # unchanged: same version
    host = Path(svc.tree(vid).host("/f"))
    with open(host, "r+b") as f:  # in place, same size: as a live mount would
        f.write(b"xyz")
    os.utime(host, ns=(1, 1))
    v2 = (await files.info("team-a", vid, "/f")).version
    assert v2 > v1
    listed = {e.name: e.version for e in await files.list("team-a", vid, "/")}
    assert listed == {"f": v2}
    (Path(svc.tree(vid).host("/")) / "made-inside").write_bytes(b"new")
    listed = {e.name: e.version for e in await files.list("team-a", vid, "/")}
    assert listed["made-inside"] > v2
    host.unlink()
    with pytest.raises(NotFound):
        await files.info("team-a", vid, "/f")
    # a version is never handed out twice, even for a path that comes back
    again = await files.write("team-a", vid, "/f", _body(b"abc"))
    assert again.version > listed["made-inside"]


async def test_listing_hides_symlinks_and_special_files(
    svc: VolumeService, files: VolumeFiles, tmp_path: Path
) -> None:
    vid = await _volume(svc)
    root = Path(svc.tree(vid).host("/"))
    (root / "link").symlink_to(tmp_path)
    os.mkfifo(root / "fifo")
    (root / "d").mkdir()
    assert [e.name for e in await files.list("team-a", vid, "/")] == ["d"]
    assert not await files.exists("team-a", vid, "/link")
    with pytest.raises(NotFound):
        await files.read("team-a", vid, "/link")


async def test_quota_counts_every_volume_of_the_team(
    svc: VolumeService, files: VolumeFiles
) -> None:
    a, b = await _volume(svc), await _volume(svc)
    await files.write("team-a", a, "/big", _body(b"x" * 700_000))
    with pytest.raises(TooLarge, match="quota of 1 MiB"):
        await files.write("team-a", b, "/more", _body(b"y" * 400_000))
    with pytest.raises(TooLarge):
        await files.write("team-a", b, "/more", _body(b"y"), declared=400_000)
    # overwriting counts only the difference
    await files.write("team-a", a, "/big", _body(b"z" * 1_000_000))
    assert (await svc.get("team-a", a)).size_bytes == 1_000_000
    await files.remove("team-a", a, "/big", recursive=False)
    assert await svc.usage("team-a") == 0
    # another team has a quota of its own
    c = await _volume(svc, "team-b")
    await files.write("team-b", c, "/big", _body(b"x" * 700_000))


async def test_an_archive_over_the_quota_makes_no_volume(svc: VolumeService, store: Store) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        info = tarfile.TarInfo("zeros")
        info.size = 2 << 20
        t.addfile(info, io.BytesIO(b"\x00" * info.size))
    with pytest.raises(TooLarge):
        await svc.create("team-a", "big", _body(buf.getvalue()))
    assert store.list_volumes("team-a") == []
    assert [p.name for p in svc.root.iterdir() if p.name.startswith("vol-")] == []


async def test_another_teams_volume_is_not_found(svc: VolumeService, files: VolumeFiles) -> None:
    vid = await _volume(svc, "team-a")
    with pytest.raises(NotFound, match=f"volume '{vid}' not found"):
        await svc.get("team-b", vid)
    with pytest.raises(NotFound):
        await files.write("team-b", vid, "/f", _body(b"x"))
    with pytest.raises(NotFound):
        await svc.delete("team-b", vid)
    assert [v.volume_id for v in await svc.list("team-b")] == []


async def test_paths_cannot_climb_out(svc: VolumeService, files: VolumeFiles) -> None:
    vid = await _volume(svc)
    with pytest.raises(InvalidInput, match="path: must not contain '..'"):
        await files.write("team-a", vid, "/../escape", _body(b"x"))
    with pytest.raises(InvalidInput, match="path: is the volume root"):
        await files.write("team-a", vid, "/", _body(b"x"))


async def test_mkdir_rename_remove(svc: VolumeService, files: VolumeFiles) -> None:
    vid = await _volume(svc)
    assert await files.mkdir("team-a", vid, "a/b/c") == "/a/b/c"
    await files.write("team-a", vid, "/a/b/c/f", _body(b"1"))
    with pytest.raises(Conflict):
        await files.mkdir("team-a", vid, "/a/b/c/f")
    moved = await files.rename("team-a", vid, "/a/b", "/z/b")
    assert moved.path == "/z/b" and moved.stat.is_dir
    assert await files.exists("team-a", vid, "/z/b/c/f")
    assert not await files.exists("team-a", vid, "/a/b")
    with pytest.raises(InvalidInput, match="inside it"):
        await files.rename("team-a", vid, "/z", "/z/b/c/z")
    with pytest.raises(InvalidInput, match="not empty"):
        await files.remove("team-a", vid, "/z", recursive=False)
    await files.remove("team-a", vid, "/z", recursive=True)
    assert not await files.exists("team-a", vid, "/z")
    with pytest.raises(NotFound):
        await files.remove("team-a", vid, "/z", recursive=True)


async def test_delete_refuses_a_live_mounted_volume(
    svc: VolumeService, store: Store, tmp_path: Path
) -> None:
    from declawd.store.volumes import AttachmentRow
    from tests.unit.test_volumes_attach import insert_sandbox

    vid = await _volume(svc)
    insert_sandbox(store, "sbx-000000000001", "team-a")
    store.record_attachments(
        "sbx-000000000001", [AttachmentRow("sbx-000000000001", vid, "/data", "mount")]
    )
    with pytest.raises(Conflict, match="mounted by sandbox sbx-000000000001"):
        await svc.delete("team-a", vid)
    store.update_sandbox("sbx-000000000001", released=True)
    await svc.delete("team-a", vid)
    assert store.get_volume(vid) is None
    assert not (svc.root / vid).exists()


async def test_start_sweeps_trees_without_a_record(svc: VolumeService, store: Store) -> None:
    vid = await _volume(svc)
    orphan = svc.root / "vol-00000000dead"
    (orphan / "tree").mkdir(parents=True)
    (svc.root / vid / "tree.partial").mkdir()
    fresh = VolumeService(svc.settings, store, owner=None, guard=False)
    await fresh.start()
    assert not orphan.exists()
    assert not (svc.root / vid / "tree.partial").exists()
    assert (svc.root / vid / "tree").is_dir()
