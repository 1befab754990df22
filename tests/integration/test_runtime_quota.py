"""The per-sandbox disk quota filesystem: ENOSPC at the quota, idempotent create/destroy.

Needs root (mkfs, loop devices, mount). Every test removes its image, loop device and
mount, also when an assertion fails halfway.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from declawd.host import CommandFailed
from declawd.runtime import is_mounted, quota

pytestmark = pytest.mark.integration


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    image, mountpoint = tmp_path / "disk.img", tmp_path / "disk"
    try:
        yield image, mountpoint
    finally:
        quota.destroy_disk(image, mountpoint)


def test_writes_beyond_quota_fail_with_enospc(disk: tuple[Path, Path]) -> None:
    image, mountpoint = disk
    quota.create_disk(image, mountpoint, 16)
    assert is_mounted(mountpoint)
    st = os.statvfs(mountpoint)
    assert st.f_blocks * st.f_frsize <= 16 * 2**20
    written = 0
    with pytest.raises(OSError) as exc, open(mountpoint / "fill", "wb") as f:
        while written < 64 * 2**20:
            f.write(b"x" * 2**20)
            f.flush()
            os.fsync(f.fileno())
            written += 2**20
    assert exc.value.errno == errno.ENOSPC
    assert written <= 16 * 2**20
    # The host file holds at most the quota (plus ext4 metadata), never more.
    assert image.stat().st_size == 16 * 2**20


def test_create_and_destroy_are_idempotent_and_leave_nothing(disk: tuple[Path, Path]) -> None:
    image, mountpoint = disk
    quota.create_disk(image, mountpoint, 64)
    quota.create_disk(image, mountpoint, 64)
    assert len(quota.loop_devices(image)) == 1
    (mountpoint / "upper").mkdir()
    quota.destroy_disk(image, mountpoint)
    quota.destroy_disk(image, mountpoint)
    assert not is_mounted(mountpoint)
    assert not image.exists()
    assert not any(str(image) in line for line in os.popen("losetup -a").read().splitlines())


def test_failed_create_leaves_nothing(disk: tuple[Path, Path]) -> None:
    image, mountpoint = disk
    # A regular file where the mount point should be: mkdir fails after nothing was made.
    mountpoint.write_text("not a directory")
    with pytest.raises(OSError):
        quota.create_disk(image, mountpoint, 64)
    assert not image.exists()
    assert not is_mounted(mountpoint)
    mountpoint.unlink()


def test_failed_mount_leaves_no_image_or_loop_device(
    disk: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    image, mountpoint = disk
    monkeypatch.setattr(quota, "MOUNT_OPTIONS", "loop,no_such_option")
    with pytest.raises(CommandFailed, match="mount -t ext4 -o loop,no_such_option"):
        quota.create_disk(image, mountpoint, 64)
    assert not image.exists()
    assert not is_mounted(mountpoint)
    assert not any(str(image) in line for line in os.popen("losetup -a").read().splitlines())
