"""runtime.quota and runtime.loop without root: the sparse copy and the ioctl structures."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest

from declawd.runtime import loop, quota


def test_sparse_copy_keeps_data_and_holes(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    size = 64 * 2**20
    with open(src, "wb") as f:
        f.truncate(size)
        for offset in (0, 5 * 2**20, size - 4096):
            f.seek(offset)
            f.write(os.urandom(4096))
    copied = quota.copy_sparse(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    assert dst.stat().st_size == size
    assert copied < 2**20  # the extents only (a filesystem may round them to its blocks)
    assert dst.stat().st_blocks * 512 < 2**20


def test_sparse_copy_of_a_file_that_is_all_hole(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    with open(src, "wb") as f:
        f.truncate(2**20)
    assert quota.copy_sparse(src, dst) == 0
    assert dst.read_bytes() == bytes(2**20)


def test_format_tag_follows_the_mkfs_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    tag = quota.format_tag()
    assert tag.startswith(f"v{quota.FORMAT_VERSION}-")
    monkeypatch.setattr(quota, "MKFS_ARGS", (*quota.MKFS_ARGS, "-b", "1024"))
    assert quota.format_tag() != tag


def test_default_cache_is_the_state_dirs_run_directory() -> None:
    image = Path("/var/lib/declawd/sandboxes/sbx-1/disk.img")
    assert quota.default_cache_dir(image) == Path("/var/lib/declawd/run/quota")


def test_loop_structures_match_linux_loop_h() -> None:
    assert ctypes.sizeof(loop.LoopInfo64) == 232
    assert ctypes.sizeof(loop.LoopConfig) == 304
    cfg = loop.config_for(7, Path("/x/disk.img"))
    assert cfg.fd == 7 and cfg.info.lo_flags == loop.LO_FLAGS_AUTOCLEAR
    assert bytes(cfg.info.lo_file_name).rstrip(b"\0") == b"/x/disk.img"


def test_devices_of_reads_the_backing_files_in_sysfs(tmp_path: Path) -> None:
    for name, backing in (("loop3", "/s/a.img"), ("loop9", "/s/a.img (deleted)"),
                          ("loop4", "/s/b.img")):  # fmt: skip
        d = tmp_path / name / "loop"
        d.mkdir(parents=True)
        (d / "backing_file").write_text(backing + "\n")
    (tmp_path / "loop5").mkdir()  # not attached: no loop/ directory
    assert loop.devices_of(Path("/s/a.img"), tmp_path) == ["/dev/loop3", "/dev/loop9"]
    assert loop.devices_of(Path("/s/c.img"), tmp_path) == []
