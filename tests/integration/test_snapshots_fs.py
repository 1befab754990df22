"""A snapshot's filesystem round trip on the real kernel (needs root): an overlay upper dir
with everything overlayfs and users put there is archived, extracted into a fresh upper, and
an overlay over the same lower shows exactly the same files, modes, owners and hidden ones."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from declawd.blobs import FsBlobStore
from declawd.config import Settings
from declawd.node.snapshots import archive, fs_key, materialize
from declawd.runtime import mount_overlay, unmount
from declawd.store.snapshots import SnapshotRecord, SnapshotSource, SnapshotState

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

SPARSE_SIZE = 64 * 2**20
OPAQUE = "trusted.overlay.opaque"


def _lower(root: Path) -> Path:
    lower = root / "lower"
    (lower / "opaque").mkdir(parents=True)
    (lower / "opaque" / "from-lower-a").write_text("a")
    (lower / "opaque" / "from-lower-b").write_text("b")
    (lower / "gone").write_text("deleted in the sandbox")
    (lower / "keep").write_text("untouched")
    (lower / "changed").write_text("v1")
    (lower / "etc").mkdir()
    (lower / "etc" / "motd").write_text("hello")
    return lower


def _upper(root: Path) -> Path:
    """What a sandbox's writes leave in an upper dir, built by hand."""
    upper = root / "upper"
    upper.mkdir()
    # a deleted lower file: a 0:0 character device (overlayfs' whiteout)
    os.mknod(upper / "gone", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    # a directory replaced wholesale: opaque, so nothing of the lower's shows through
    (upper / "opaque").mkdir()
    os.setxattr(upper / "opaque", OPAQUE, b"y")
    (upper / "opaque" / "new").write_text("only this")
    (upper / "changed").write_text("v2, longer than before")
    home = upper / "home" / "user"
    home.mkdir(parents=True)
    (home / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (home / "script.sh").chmod(0o755)
    (home / "secret").write_text("token")
    (home / "secret").chmod(0o600)
    for p in (upper / "home" / "user", home / "script.sh", home / "secret"):
        os.chown(p, 1000, 1000)
    (home / "odd-owner").write_bytes(os.urandom(5000))
    os.chown(home / "odd-owner", 4321, 8765)
    (home / "setuid").write_bytes(b"\x7fELF")
    (home / "setuid").chmod(0o4755)
    with open(home / "sparse.img", "wb") as f:
        f.seek(SPARSE_SIZE - 6)
        f.write(b"tail!\n")
    (home / "hard-a").write_text("linked")
    os.link(home / "hard-a", home / "hard-b")
    (home / "link-rel").symlink_to("script.sh")
    (home / "link-abs").symlink_to("/etc/motd")
    (home / "link-dangling").symlink_to("../nowhere")
    os.setxattr(home / "secret", "user.origin", b"sandbox")
    (upper / "tmp").mkdir()
    (upper / "tmp").chmod(0o1777)
    (upper / "empty-dir").mkdir()
    os.mkfifo(home / "pipe")
    os.utime(home / "secret", (1_600_000_000, 1_600_000_000))
    return upper


def _tree(root: Path, *, xattr_prefixes: tuple[str, ...]) -> dict[str, tuple[Any, ...]]:
    """Every entry under root: type, mode, owner, and content hash / link target / device,
    its xattrs of the given namespaces, and the mtime of regular files."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            if stat.S_ISREG(st.st_mode):
                detail: Any = (
                    st.st_size,
                    hashlib.sha256(path.read_bytes()).hexdigest(),
                    st.st_mtime,
                )
            elif stat.S_ISLNK(st.st_mode):
                detail = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode):
                detail = (os.major(st.st_rdev), os.minor(st.st_rdev))
            else:
                detail = None
            xattrs = tuple(
                sorted(
                    (k, os.getxattr(path, k, follow_symlinks=False))
                    for k in os.listxattr(path, follow_symlinks=False)
                    if k.startswith(xattr_prefixes)
                )
            )
            rel = str(path.relative_to(root))
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, detail, xattrs)
    return out


def _merged(lower: Path, upper: Path, root: Path, name: str) -> dict[str, tuple[Any, ...]]:
    work, target = root / f"{name}-work", root / f"{name}-merged"
    work.mkdir()
    target.mkdir()
    mount_overlay([lower], upper, work, target)
    try:
        return _tree(target, xattr_prefixes=("user.",))
    finally:
        unmount(target)


async def test_an_upper_dir_survives_capture_and_materialize_exactly(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    lower, upper = _lower(tmp_path), _upper(tmp_path)
    before = _merged(lower, upper, tmp_path, "before")
    upper_before = _tree(upper, xattr_prefixes=("user.", "trusted."))

    snap = SnapshotRecord(
        snapshot_id="snap-0000000000f5",
        team_id="team-a",
        sandbox_id="sbx-000000000001",
        source=SnapshotSource.MANUAL,
        state=SnapshotState.READY,
        created_at=1.0,
    )
    blobs = FsBlobStore(settings.blobs_path)
    blob = blobs.path(fs_key(snap.snapshot_id))
    with blobs.writing(fs_key(snap.snapshot_id)) as partial:
        await archive(upper, partial)
        assert not blob.exists()  # not visible before it is published
    size = blobs.size(fs_key(snap.snapshot_id))
    assert size == blob.stat().st_size
    assert size < SPARSE_SIZE // 8  # the hole is not stored as zeros

    restored = tmp_path / "restored-upper"
    restored.mkdir()
    materialize(blobs, snap, restored)

    assert _tree(restored, xattr_prefixes=("user.", "trusted.")) == upper_before
    after = _merged(lower, restored, tmp_path, "after")
    assert after == before
    # what the merged view hides and shows, said outright
    assert "gone" not in after
    assert "opaque/from-lower-a" not in after and "opaque/from-lower-b" not in after
    assert after["opaque/new"][4][1] == hashlib.sha256(b"only this").hexdigest()
    assert after["keep"][4][1] == hashlib.sha256(b"untouched").hexdigest()
    assert after["changed"][4][1] == hashlib.sha256(b"v2, longer than before").hexdigest()
    assert after["home/user/secret"][1:4] == (0o600, 1000, 1000)
    assert after["home/user/secret"][4][2] == 1_600_000_000
    assert after["home/user/setuid"][1] == 0o4755
    assert after["tmp"][1] == 0o1777
    assert after["home/user/link-abs"][4] == "/etc/motd"
    hard = restored / "home" / "user"
    assert os.lstat(hard / "hard-a").st_ino == os.lstat(hard / "hard-b").st_ino
    sparse = os.lstat(hard / "sparse.img")
    assert sparse.st_size == SPARSE_SIZE and sparse.st_blocks * 512 < 1 * 2**20


def test_materialize_refuses_what_it_cannot_restore_exactly(tmp_path: Path) -> None:
    blobs = FsBlobStore(Settings(state_dir=tmp_path / "state").blobs_path)
    snap = SnapshotRecord(
        snapshot_id="snap-0000000000f6",
        team_id="team-a",
        sandbox_id="sbx-000000000001",
        source=SnapshotSource.PAUSE,
        state=SnapshotState.WRITING,
        created_at=1.0,
    )
    upper = tmp_path / "upper"
    upper.mkdir()
    with pytest.raises(Exception, match="is writing, not ready"):
        materialize(blobs, snap, upper)
    ready = snap.replace(state=SnapshotState.READY)
    with pytest.raises(Exception, match="blob is missing"):
        materialize(blobs, ready, upper)
    blobs.path(fs_key(snap.snapshot_id)).parent.mkdir(parents=True)
    blobs.path(fs_key(snap.snapshot_id)).write_bytes(b"")
    (upper / "leftover").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        materialize(blobs, ready, upper)
