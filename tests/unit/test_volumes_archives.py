"""The volume archive filter: hostile tars keep only files and directories inside the target."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from declawd.errors import InvalidInput, TooLarge
from declawd.volumes import archives
from declawd.volumes.archives import extract, member_verdict, write_tar
from declawd.volumes.tree import VolumeTree


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]], *, gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=tarfile.GNU_FORMAT) as t:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
            else:
                t.addfile(info)
    return buf.getvalue()


def _file(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    info.mtime = 1_700_000_000
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def _dir(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    return info, None


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(target, outside): `outside` is a sibling the archive must never reach."""
    target, outside = tmp_path / "vol" / "tree", tmp_path / "outside"
    target.mkdir(parents=True)
    outside.mkdir()
    return target, outside


def _files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_hostile_entries_are_dropped_and_counted(dirs: tuple[Path, Path]) -> None:
    target, outside = dirs
    escape = os.path.relpath(outside, target)
    data = _tar(
        [
            _file("./ok.txt", b"fine"),
            _dir("sub"),
            _file("sub/deep/f.bin", b"\x00\x01", mode=0o4755),
            _file("../x", b"up"),
            _file(f"{escape}/pwned", b"up"),
            _file("a/../../y", b"up"),
            _file("/etc/passwd-declawd-test", b"abs"),
            _special("link", tarfile.SYMTYPE, str(outside)),
            _file("link/through-link", b"where?"),
            _special("hard", tarfile.LNKTYPE, "/etc/passwd"),
            _special("tty", tarfile.CHRTYPE),
            _special("disk", tarfile.BLKTYPE),
            _special("pipe", tarfile.FIFOTYPE),
        ]
    )
    report = extract(io.BytesIO(data), target, max_bytes=1 << 20)
    assert dict(report.dropped) == {
        "parent reference (..)": 3,
        "absolute path": 1,
        "symlink": 1,
        "hardlink": 1,
        "device node": 2,
        "fifo": 1,
    }
    assert report.dropped_total == 9
    assert (report.files, report.dirs) == (3, 3)  # sub, sub/deep, link (a real dir now)
    assert _files_under(target) == {
        "ok.txt",
        "sub",
        "sub/deep",
        "sub/deep/f.bin",
        "link",
        "link/through-link",
    }
    assert not (target / "link").is_symlink()
    assert (target / "ok.txt").read_bytes() == b"fine"
    # setuid and friends never survive; the owner can always read and write
    assert (target / "sub/deep/f.bin").stat().st_mode & 0o7777 == 0o755
    assert (target / "ok.txt").stat().st_mtime == 1_700_000_000
    assert _files_under(outside) == set()
    assert not Path("/etc/passwd-declawd-test").exists()


def test_plain_tar_and_root_entry_are_accepted(dirs: tuple[Path, Path]) -> None:
    target, _ = dirs
    data = _tar([_dir("."), _file("./a", b"1")], gz=False)
    report = extract(io.BytesIO(data), target, max_bytes=100)
    assert (report.files, report.dirs, report.dropped_total) == (1, 0, 0)
    assert (target / "a").read_bytes() == b"1"


def test_a_file_where_a_directory_is_and_back_is_dropped(dirs: tuple[Path, Path]) -> None:
    target, _ = dirs
    data = _tar([_file("a", b"f"), _file("a/b", b"g"), _dir("d"), _file("d", b"h")])
    report = extract(io.BytesIO(data), target, max_bytes=100)
    assert report.dropped_total == 2
    assert (target / "a").read_bytes() == b"f"
    assert (target / "d").is_dir()


def test_member_count_is_bounded(dirs: tuple[Path, Path]) -> None:
    target, _ = dirs
    data = _tar([_file(f"f{i}") for i in range(11)])
    with pytest.raises(TooLarge, match="more than 10 entries"):
        extract(io.BytesIO(data), target, max_bytes=1 << 20, max_members=10)


def test_file_bytes_are_bounded_while_reading(dirs: tuple[Path, Path]) -> None:
    target, _ = dirs
    # 8 MiB of zeros compresses to a few KiB: the bound is on what is written, not read.
    data = _tar([_file("bomb", b"\x00" * (8 << 20))])
    assert len(data) < 64 << 10
    with pytest.raises(TooLarge, match="quota"):
        extract(io.BytesIO(data), target, max_bytes=1 << 20)


def test_dropped_members_still_count_towards_the_member_bound(dirs: tuple[Path, Path]) -> None:
    target, _ = dirs
    data = _tar([_special(f"l{i}", tarfile.SYMTYPE, "/") for i in range(6)])
    with pytest.raises(TooLarge):
        extract(io.BytesIO(data), target, max_bytes=1 << 20, max_members=5)


def test_garbage_is_a_bad_request(dirs: tuple[Path, Path]) -> None:
    target, _ = dirs
    with pytest.raises(InvalidInput, match="request body: not a readable tar archive"):
        extract(io.BytesIO(b"this is not a tarball" * 100), target, max_bytes=1 << 20)


@pytest.mark.parametrize(
    ("name", "kind", "reason"),
    [
        ("ok", tarfile.REGTYPE, None),
        ("x/../../y", tarfile.REGTYPE, "parent reference (..)"),
        ("/abs", tarfile.DIRTYPE, "absolute path"),
        ("s", tarfile.SYMTYPE, "symlink"),
        ("h", tarfile.LNKTYPE, "hardlink"),
        ("c", tarfile.CHRTYPE, "device node"),
        ("p", tarfile.FIFOTYPE, "fifo"),
        ("g", tarfile.GNUTYPE_SPARSE, "sparse file"),
        ("n" * 300, tarfile.REGTYPE, "name too long"),
        (".", tarfile.REGTYPE, "invalid name"),
    ],
)
def test_member_verdict(name: str, kind: bytes, reason: str | None) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    assert member_verdict(info)[0] == reason


def test_write_tar_packs_only_files_and_dirs_and_never_follows_links(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"data")
    (root / "empty").mkdir()
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    (root / "to-secret").symlink_to(secret)
    (root / "to-dir").symlink_to(tmp_path)
    os.mkfifo(root / "fifo")
    out = io.BytesIO()
    count = write_tar(VolumeTree(root, tmp_path / "staging", None), out, compress=True)
    out.seek(0)
    with tarfile.open(fileobj=out, mode="r:gz") as t:
        names = {m.name: m for m in t.getmembers()}
        assert set(names) == {"d", "d/f", "empty"}
        assert count == 3
        assert names["d"].isdir() and names["empty"].isdir()
        member = t.extractfile(names["d/f"])
        assert member is not None and member.read() == b"data"


def test_exact_reader_pads_a_file_that_shrank(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    fd = os.open(p, os.O_RDONLY)
    try:
        reader = archives._Exact(fd, 6)
        assert reader.read(4) == b"abc\x00"
        assert reader.read() == b"\x00\x00"
        assert reader.read() == b""
    finally:
        os.close(fd)


async def test_tar_chunks_streams_the_tree_and_stops_when_abandoned(tmp_path: Path) -> None:
    import threading
    import time

    root = tmp_path / "tree"
    root.mkdir()
    for i in range(3):
        (root / f"f{i}").write_bytes(os.urandom(3 << 20))  # incompressible: many chunks
    tree = VolumeTree(root, tmp_path / "staging", None)
    whole = b"".join([c async for c in archives.tar_chunks(tree, compress=True)])
    with tarfile.open(fileobj=io.BytesIO(whole), mode="r:gz") as t:
        assert sorted(t.getnames()) == ["f0", "f1", "f2"]
    stream = archives.tar_chunks(tree, compress=False)
    first = await anext(stream)
    assert first
    await stream.aclose()
    deadline = time.monotonic() + 5
    while any(t.name == "volume-tar" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the packing thread outlived its consumer"
        time.sleep(0.05)
