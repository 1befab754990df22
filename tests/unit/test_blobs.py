"""The filesystem blob store: keys, atomic writes, listing, deletion, the cross-host lock."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from declawd.blobs import BlobLockTimeout, FsBlobStore, check_key, open_blobs
from declawd.config import Settings


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", "a/.", "x.partial", "a\x00b"])
def test_bad_keys_are_refused_naming_the_key(key: str) -> None:
    with pytest.raises(ValueError, match="blob key"):
        check_key(key)


def test_a_blob_appears_only_when_its_block_exits_cleanly(tmp_path: Path) -> None:
    blobs = FsBlobStore(tmp_path)
    with pytest.raises(RuntimeError), blobs.writing("snapshots/s1/fs.tar") as partial:
        partial.write_bytes(b"half")
        assert not blobs.exists("snapshots/s1/fs.tar")
        raise RuntimeError("writer died")
    assert not blobs.exists("snapshots/s1/fs.tar")
    assert blobs.list("snapshots/s1") == []  # no partial left behind
    with blobs.writing("snapshots/s1/fs.tar") as partial:
        partial.write_bytes(b"whole")
        assert blobs.list("snapshots/s1") == []  # unfinished blobs are not listed
    assert blobs.size("snapshots/s1/fs.tar") == 5
    with blobs.reading("snapshots/s1/fs.tar") as path:
        assert path.read_bytes() == b"whole"


def test_put_replaces_and_delete_is_idempotent_for_files_and_trees(tmp_path: Path) -> None:
    blobs = FsBlobStore(tmp_path / "root")
    src = tmp_path / "src"
    src.write_bytes(b"one")
    assert blobs.put("layers/k.tar", src) == 3
    src.write_bytes(b"second")
    assert blobs.put("layers/k.tar", src) == 6
    assert blobs.list("layers") == ["k.tar"]
    (blobs.tree("volumes/v1") / "d").mkdir(parents=True)
    (blobs.tree("volumes/v1") / "d" / "f").write_text("x")
    blobs.delete("volumes/v1")
    blobs.delete("volumes/v1")
    blobs.delete("layers/k.tar")
    blobs.delete("layers/k.tar")
    assert blobs.list("volumes") == [] and blobs.list("layers") == []
    with pytest.raises(FileNotFoundError), blobs.reading("layers/k.tar"):
        pass
    assert blobs.size("layers/k.tar") is None


def test_settings_put_the_blobs_under_blob_dir_or_the_state_dir(tmp_path: Path) -> None:
    plain = Settings(state_dir=tmp_path / "state")
    assert open_blobs(plain).root == tmp_path / "state" and not plain.blobs_shared
    assert plain.snapshots_dir == tmp_path / "state" / "snapshots"
    shared = Settings(state_dir=tmp_path / "state", blob_dir=tmp_path / "nfs")
    assert open_blobs(shared).root == tmp_path / "nfs" and shared.blobs_shared
    assert shared.volumes_dir == tmp_path / "nfs" / "volumes"


def check_lock_excludes(a: FsBlobStore, b: FsBlobStore) -> None:
    """`b` cannot take the lock `a` holds, and gets it once `a` let go (also run with `a`
    and `b` on two hosts' mounts of one NFS export: tests/integration/test_shared_fs.py)."""
    order: list[str] = []
    with a.lock("build-x", wait_s=5, stale_s=30):
        with (
            pytest.raises(BlobLockTimeout, match="build-x is held by"),
            b.lock("build-x", wait_s=0.5, stale_s=30),
        ):
            pass

        def second() -> None:
            with b.lock("build-x", wait_s=10, stale_s=30):
                order.append("b")

        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.5)
        order.append("a")
    t.join()
    assert order == ["a", "b"]
    assert a.list("locks") == []


def test_the_lock_excludes_a_second_holder_until_released(tmp_path: Path) -> None:
    check_lock_excludes(FsBlobStore(tmp_path), FsBlobStore(tmp_path))  # two hosts, one dir


def test_a_lock_its_holder_stopped_renewing_is_broken(tmp_path: Path) -> None:
    blobs = FsBlobStore(tmp_path)
    (tmp_path / "locks").mkdir()
    dead = tmp_path / "locks" / "build-y"
    dead.write_text('{"holder": "crashed-host:1:x"}')
    old = time.time() - 120
    os.utime(dead, (old, old))
    with blobs.lock("build-y", wait_s=5, stale_s=60):
        assert "crashed" not in dead.read_text()
    assert not dead.exists()


def test_a_held_lock_is_renewed_so_it_never_looks_stale(tmp_path: Path) -> None:
    a, b = FsBlobStore(tmp_path), FsBlobStore(tmp_path)
    with a.lock("build-z", wait_s=1, stale_s=0.8):
        time.sleep(1.2)  # longer than stale_s: only the renewals keep it
        with pytest.raises(BlobLockTimeout), b.lock("build-z", wait_s=0.3, stale_s=0.8):
            pass
