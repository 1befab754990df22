"""The volumes dir guard on the real kernel: the host never follows a symlink in a tree."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from declawd.volumes import host
from declawd.volumes.tree import VolumeTree

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]


def test_protect_refuses_symlinks_anywhere_in_a_walk(tmp_path: Path) -> None:
    volumes = tmp_path / "volumes"
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    host.protect(volumes)
    try:
        assert host.is_protected(volumes)
        host.protect(volumes)  # idempotent: still one guard mount
        opts = host.mount_options(volumes.resolve())
        assert opts is not None and {"nosymfollow", "nosuid", "nodev"} <= opts
        tree = volumes / "vol-000000000001" / "tree"
        tree.mkdir(parents=True)
        # what a live-mounted sandbox could plant
        (tree / "file-link").symlink_to(secret)
        (tree / "dir-link").symlink_to(tmp_path)
        with pytest.raises(OSError) as exc:
            (tree / "file-link").read_text()
        assert exc.value.errno == errno.ELOOP
        with pytest.raises(OSError) as exc:
            (tree / "dir-link" / "secret").read_text()
        assert exc.value.errno == errno.ELOOP
        vt = VolumeTree(tree, tree.parent / "staging", None)
        assert vt.stat("/dir-link/secret") is None
        assert vt.stat("/file-link") is None
        assert [e.name for e in vt.list("/")] == []
        assert os.readlink(tree / "file-link") == str(secret)  # still a plain link inside
    finally:
        host.unprotect(volumes)
    assert not host.is_protected(volumes)
    assert (tree / "file-link").read_text() == "host secret"  # the guard was the only reason
    host.unprotect(volumes)  # idempotent


async def test_everything_a_volume_gets_belongs_to_the_sandbox_user(tmp_path: Path) -> None:
    import io
    import tarfile

    from declawd.config import Settings
    from declawd.store import Store
    from declawd.volumes import VolumeFiles, VolumeService

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        info = tarfile.TarInfo("d/f")
        info.size, info.uid, info.gid = 2, 0, 0
        t.addfile(info, io.BytesIO(b"hi"))

    async def body(data: bytes):  # type: ignore[no-untyped-def]
        yield data

    with Store(tmp_path / "declawd.db") as store:
        svc = VolumeService(Settings(state_dir=tmp_path / "state"), store, guard=False)
        rec, _ = await svc.create("team-a", "v", body(buf.getvalue()))
        await VolumeFiles(svc).write("team-a", rec.volume_id, "/new/dir/g", body(b"x"))
        root = Path(svc.tree(rec.volume_id).host("/"))
        owners = {
            str(p.relative_to(root)): (p.stat().st_uid, p.stat().st_gid)
            for p in [root, *root.rglob("*")]
        }
        assert owners == dict.fromkeys(
            [".", "d", "d/f", "new", "new/dir", "new/dir/g"], (1000, 1000)
        )
        assert (root / "new" / "dir" / "g").stat().st_mode & 0o777 == 0o644
