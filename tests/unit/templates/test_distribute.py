"""Layers through the blob store: a real GNU tar round trip (as root) and the idempotence,
partial-blob and concurrency rules of `LayerDistributor`."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from declawd.blobs import FsBlobStore
from declawd.errors import Internal, NotFound
from declawd.templates.context import context_blob_key, fetch_context, publish_context
from declawd.templates.distribute import LayerDistributor, info_key, tar_key
from declawd.templates.layers import LayerCache

KEY = "a" * 64
SPARSE_SIZE = 64 * 2**20

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts and trusted.* need root")


def _commit_tree(cache: LayerCache, key: str = KEY, parent: str = "") -> None:
    """A layer shaped like an overlay upper dir: a whiteout, an opaque dir, a symlink, a
    sparse file, a file of another owner."""
    with cache.staging(key) as tmp:
        fs = tmp / "fs"
        fs.mkdir()
        (fs / "etc").mkdir()
        (fs / "etc" / "motd").write_text("hello from the layer\n")
        os.chown(fs / "etc" / "motd", 1234, 5678)
        os.chmod(fs / "etc" / "motd", 0o640)
        os.mknod(fs / "etc" / "removed", stat.S_IFCHR | 0o000, os.makedev(0, 0))  # whiteout
        (fs / "opaque").mkdir()
        os.setxattr(fs / "opaque", "trusted.overlay.opaque", b"y")
        os.symlink("../etc/motd", fs / "opaque" / "link")
        with open(fs / "sparse", "wb") as f:
            f.seek(SPARSE_SIZE - 5)
            f.write(b"tail!")
        cache.commit(tmp, key, parent, "RUN make the tree", 12.5)


def _check_tree(fs: Path) -> None:
    motd = fs / "etc" / "motd"
    assert motd.read_text() == "hello from the layer\n"
    st = motd.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o640)
    wh = os.lstat(fs / "etc" / "removed")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == os.makedev(0, 0)
    assert os.getxattr(fs / "opaque", "trusted.overlay.opaque") == b"y"
    assert os.readlink(fs / "opaque" / "link") == "../etc/motd"
    sparse = (fs / "sparse").stat()
    assert sparse.st_size == SPARSE_SIZE
    assert sparse.st_blocks * 512 < 1 * 2**20  # still sparse, not 64 MiB of zeros on disk
    with open(fs / "sparse", "rb") as f:
        f.seek(SPARSE_SIZE - 5)
        assert f.read() == b"tail!"


def _pair(tmp_path: Path) -> tuple[LayerDistributor, LayerDistributor]:
    """Two hosts' layer caches over one blob store."""
    blobs = FsBlobStore(tmp_path / "shared")
    here = LayerDistributor(LayerCache(tmp_path / "a" / "templates"), blobs)
    there = LayerDistributor(LayerCache(tmp_path / "b" / "templates"), blobs)
    return here, there


def test_a_published_layer_is_fetched_exactly_with_whiteouts_xattrs_links_and_holes(
    tmp_path: Path,
) -> None:
    here, there = _pair(tmp_path)
    _commit_tree(here.cache, parent="p" * 64)
    _check_tree(here.cache.fs(KEY))  # the fixture itself is what the checks expect
    assert not here.published(KEY)

    assert here.publish(KEY) is True
    assert here.published(KEY) and there.published(KEY)
    record = json.loads((tmp_path / "shared" / info_key(KEY)).read_text())
    assert record["tar_bytes"] == (tmp_path / "shared" / tar_key(KEY)).stat().st_size
    assert record["layer"]["origin"] == "built" and record["layer"]["build_seconds"] == 12.5

    assert there.fetch(KEY) is True
    _check_tree(there.cache.fs(KEY))
    info = there.cache.info(KEY)
    assert info is not None
    assert (info.origin, info.parent, info.label) == ("fetched", "p" * 64, "RUN make the tree")
    assert info.build_seconds == 12.5 and info.fetch_seconds >= 0
    assert here.cache.info(KEY).origin == "built"  # type: ignore[union-attr]
    assert list((there.cache.tmp_dir).iterdir()) == []  # no staging debris


def test_publish_and_fetch_are_idempotent_and_name_what_is_missing(tmp_path: Path) -> None:
    here, there = _pair(tmp_path)
    with pytest.raises(NotFound, match="not in the local layer cache"):
        here.publish(KEY)
    with pytest.raises(NotFound, match="neither local nor in the blob store"):
        there.fetch(KEY)
    _commit_tree(here.cache)
    assert here.publish(KEY) is True
    mtime = (tmp_path / "shared" / tar_key(KEY)).stat().st_mtime_ns
    assert here.publish(KEY) is False and there.publish_all([KEY]) == []
    assert (tmp_path / "shared" / tar_key(KEY)).stat().st_mtime_ns == mtime  # not rewritten
    assert here.fetch(KEY) is False  # local already
    assert there.fetch_all([KEY]) == [KEY] and there.fetch_all([KEY]) == []
    assert here.unpublished([KEY, "b" * 64]) == ["b" * 64]


def test_an_archive_without_its_record_is_not_a_layer(tmp_path: Path) -> None:
    """A publisher that died between the tar and the json left a blob nobody may use."""
    here, there = _pair(tmp_path)
    _commit_tree(here.cache)
    here.publish(KEY)
    (tmp_path / "shared" / info_key(KEY)).unlink()
    assert not there.published(KEY)
    with pytest.raises(NotFound):
        there.fetch(KEY)
    assert not there.cache.exists(KEY)
    assert here.publish(KEY) is True  # the next publisher completes it
    assert there.fetch(KEY) is True


def test_an_archive_of_the_wrong_size_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    here, there = _pair(tmp_path)
    _commit_tree(here.cache)
    here.publish(KEY)
    with open(tmp_path / "shared" / tar_key(KEY), "ab") as f:
        f.write(b"\0" * 512)
    with pytest.raises(Internal, match="bytes"):
        there.fetch(KEY)
    assert not there.cache.exists(KEY) and not there.cache.dir(KEY).exists()
    assert list(there.cache.tmp_dir.iterdir()) == []


def test_hosts_publishing_and_fetching_at_once_write_once_and_commit_once(
    tmp_path: Path,
) -> None:
    here, there = _pair(tmp_path)
    _commit_tree(here.cache)
    _commit_tree(there.cache)  # both hosts built it (before the blob store was shared)
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda d=d: results.append(d.publish(KEY)))
        for d in (here, there, here, there)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]
    assert FsBlobStore(tmp_path / "shared").list("layers") == [f"{KEY}.json", f"{KEY}.tar"]

    third = LayerDistributor(LayerCache(tmp_path / "c" / "templates"), here.blobs)
    fetched: list[bool] = []
    threads = [threading.Thread(target=lambda: fetched.append(third.fetch(KEY))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(fetched) == [False, False, True]
    _check_tree(third.cache.fs(KEY))


def test_a_build_context_reaches_another_host_through_the_blob_store(tmp_path: Path) -> None:
    import io
    import tarfile

    from declawd.templates.context import store_context

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"print('hi')\n"
        member = tarfile.TarInfo("app/main.py")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    body = buf.getvalue()
    blobs = FsBlobStore(tmp_path / "shared")
    context_id = store_context(tmp_path / "a", body)
    assert publish_context(blobs, context_id, body) is True
    assert publish_context(blobs, context_id, body) is False
    assert blobs.exists(context_blob_key(context_id))
    assert fetch_context(blobs, tmp_path / "b", context_id) is True
    assert (tmp_path / "b" / context_id / "files" / "app" / "main.py").read_bytes() == data
    assert fetch_context(blobs, tmp_path / "b", context_id) is False
    assert fetch_context(blobs, tmp_path / "c", "ctx-" + "0" * 64) is False  # unknown


def test_a_context_blob_that_does_not_hash_to_its_id_is_refused(tmp_path: Path) -> None:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        member = tarfile.TarInfo("x")
        tar.addfile(member, io.BytesIO(b""))
    blobs = FsBlobStore(tmp_path / "shared")
    forged = "ctx-" + "1" * 64
    publish_context(blobs, forged, buf.getvalue())
    with pytest.raises(Internal, match="holds"):
        fetch_context(blobs, tmp_path / "b", forged)
