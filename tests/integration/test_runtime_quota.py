"""The per-sandbox disk quota filesystem: ENOSPC at the quota, idempotent create/destroy.

Needs root (mkfs, loop devices, mount). Every test removes its image, loop device and
mount, also when an assertion fails halfway; the formatted images live in the test's own
cache directory.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from declawd.runtime import is_mounted, loop, quota
from declawd.runtime.overlay import MountError

pytestmark = pytest.mark.integration


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    cache = tmp_path / "cache"
    monkeypatch.setattr(quota, "default_cache_dir", lambda _image: cache)
    image, mountpoint = tmp_path / "disk.img", tmp_path / "disk"
    try:
        yield image, mountpoint
    finally:
        quota.destroy_disk(image, mountpoint)


def _attached(image: Path) -> bool:
    return any(str(image) in line for line in os.popen("losetup -a").read().splitlines())


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
    assert not _attached(image)


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
    monkeypatch.setattr(quota, "MOUNT_DATA", "no_such_option")
    with pytest.raises(MountError, match="mount ext4 on"):
        quota.create_disk(image, mountpoint, 64)
    assert not image.exists()
    assert not is_mounted(mountpoint)
    assert not _attached(image)


def test_a_failed_attach_leaves_no_image(
    disk: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    image, mountpoint = disk

    def refuse(_backing: Path) -> tuple[str, int]:
        raise loop.LoopError(errno.EBUSY, "no free loop device")

    monkeypatch.setattr(loop, "attach", refuse)
    with pytest.raises(loop.LoopError):
        quota.create_disk(image, mountpoint, 64)
    assert not image.exists()
    assert not is_mounted(mountpoint)


def test_a_10_gib_disk_allocates_a_few_mib_and_is_made_without_mkfs(
    disk: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image, mountpoint = disk
    quota.create_disk(image, mountpoint, 10240)  # formats the cached image
    quota.destroy_disk(image, mountpoint)

    def no_process(*argv: str, **_kw: object) -> None:
        raise AssertionError(f"ran {argv}")

    monkeypatch.setattr(quota, "run_sync", no_process)
    quota.create_disk(image, mountpoint, 10240)
    assert image.stat().st_size == 10240 * 2**20
    assert image.stat().st_blocks * 512 < 16 * 2**20
    st = os.statvfs(mountpoint)
    assert st.f_blocks * st.f_frsize > 9 * 2**30
    (mountpoint / "f").write_bytes(b"x" * 4096)
    assert (mountpoint / "f").read_bytes() == b"x" * 4096


def test_two_disks_from_one_formatted_image_are_independent(
    disk: tuple[Path, Path], tmp_path: Path
) -> None:
    image, mountpoint = disk
    image2, mountpoint2 = tmp_path / "disk2.img", tmp_path / "disk2"
    try:
        quota.create_disk(image, mountpoint, 32)
        quota.create_disk(image2, mountpoint2, 32)  # same ext4 UUID: ext4 mounts both
        (mountpoint / "only-in-one").write_text("1")
        assert not (mountpoint2 / "only-in-one").exists()
        assert quota.loop_devices(image) != quota.loop_devices(image2)
    finally:
        quota.destroy_disk(image2, mountpoint2)
    assert not _attached(image2)


def test_formatted_image_is_remade_when_of_another_size_or_version(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = quota.formatted(cache, 16)
    assert quota.formatted(cache, 16) == first
    made = first.stat().st_mtime_ns
    with open(first, "r+b") as f:
        f.truncate(8 * 2**20)  # truncated (a crash, a full disk): not that size any more
    assert quota.formatted(cache, 16).stat().st_size == 16 * 2**20
    assert first.stat().st_mtime_ns != made
    stale = cache / "ext4-v0-000000000000-16m.img"
    stale.write_bytes(b"old")
    quota.formatted(cache, 32)
    assert not stale.exists()
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        f"ext4-{quota.format_tag()}-{n}m.img" for n in (16, 32)
    )


def _wait(cond: Callable[[], bool], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def _mounted_devices() -> set[str]:
    """The source device of every mount in the mount table."""
    with open("/proc/self/mountinfo") as f:
        return {line.split(" - ", 1)[1].split()[1] for line in f}


def _devices(images: list[Path]) -> set[str]:
    return {device for image in images for device in loop.devices_of(image)}


@pytest.mark.parametrize("detached", [True, False], ids=["mounted-ahead", "no-mount-api"])
def test_ready_disks_are_made_ahead_used_once_and_leave_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, detached: bool
) -> None:
    if not detached:  # a kernel without fsopen/fsmount: the disks are mounted by each create

        def no_api(*_args: object) -> int:
            raise MountError(errno.ENOSYS, "fsopen: Function not implemented")

        monkeypatch.setattr(quota.ovl, "mount_detached", no_api)
    cache = tmp_path / "cache"
    (cache / quota.READY_SUBDIR).mkdir(parents=True)
    stale = cache / quota.READY_SUBDIR / "0123456789abcdef.img"
    stale.write_bytes(b"left by a process that died")
    ready = quota.ReadyDisks(cache, 64, target=2, dirs=("upper", "work"))
    images = [tmp_path / f"d{i}.img" for i in range(3)]
    mounts = [tmp_path / f"d{i}" for i in range(3)]
    try:
        ready.start()
        assert not stale.exists()  # an earlier process's leftovers go first
        assert _wait(lambda: ready.count() == 2)
        made = sorted((cache / quota.READY_SUBDIR).glob("*.img"))
        assert len(made) == 2 and all(loop.devices_of(p) for p in made)
        # Mounted ahead, they are attached nowhere: no line in the mount table.
        assert len(_devices(made)) == 2 and not _devices(made) & _mounted_devices()
        # Another size: not one of these.
        assert ready.take(tmp_path / "other.img", 32) is None
        for image, mountpoint in zip(images, mounts, strict=True):
            # The third take waits for the background refill: each create here takes a
            # ready disk (a create with none ready makes its own: the tests above).
            assert _wait(lambda: ready.count() >= 1)
            quota.create_disk(image, mountpoint, 64, cache_dir=cache, ready=ready)
            assert is_mounted(mountpoint)
            assert (mountpoint / "upper").is_dir() is detached  # made ahead when mounted ahead
            assert (mountpoint.stat().st_mode & 0o777) == 0o700
            (mountpoint / "mine").write_text(image.name)
            # The device follows its renamed file: teardown finds it under the new name.
            assert loop.devices_of(image) and _attached(image)
        # Three disks, each its own filesystem, though the pool held two at a time.
        assert [(m / "mine").read_text() for m in mounts] == [i.name for i in images]
        assert _devices(images) <= _mounted_devices() and len(_devices(images)) == 3
        assert _wait(lambda: ready.count() == 2)  # refilled after the takes
        for image, mountpoint in zip(images, mounts, strict=True):
            quota.destroy_disk(image, mountpoint)
            assert not image.exists() and not loop.devices_of(image)
        pooled = sorted((cache / quota.READY_SUBDIR).glob("*.img"))
        ready.close()
        ready.close()  # idempotent
        assert list((cache / quota.READY_SUBDIR).glob("*")) == []
        assert _wait(lambda: not any(loop.devices_of(p) for p in pooled))
    finally:
        ready.close()
        for image, mountpoint in zip(images, mounts, strict=True):
            quota.destroy_disk(image, mountpoint)


def test_a_process_that_dies_leaves_no_ready_mount_or_device(tmp_path: Path) -> None:
    """Ready disks are held by fds alone: killed before any cleanup, the process takes its
    mounts and loop devices along; the next start removes the image files."""
    cache = tmp_path / "cache"
    script = f"""
import os, signal, sys, time
from pathlib import Path
from declawd.runtime import quota
ready = quota.ReadyDisks(Path({str(cache)!r}), 64, target=2, dirs=("upper",))
ready.start()
deadline = time.monotonic() + 30
while ready.count() < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
print(ready.count(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout.strip() == "2", proc.stderr
    left = sorted((cache / quota.READY_SUBDIR).glob("*.img"))
    assert len(left) == 2
    assert _wait(lambda: not _devices(left))  # and so no mount of them either
    ready = quota.ReadyDisks(cache, 64, target=0)
    ready.start()
    assert list((cache / quota.READY_SUBDIR).glob("*")) == []


def test_a_take_is_refilled_after_the_delay_or_at_once_when_none_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quota, "REFILL_DELAY_S", 3600.0)  # "later" is never, within the test
    ready = quota.ReadyDisks(tmp_path / "cache", 64, target=2)
    taken: list[quota.ReadyDisk | None] = []
    try:
        ready.start()
        assert _wait(lambda: ready.count() == 2)  # the first fill does not wait
        taken.append(ready.take(tmp_path / "a.img", 64))
        time.sleep(0.3)
        assert ready.count() == 1  # one left: the refill waits for the delay
        taken.append(ready.take(tmp_path / "b.img", 64))
        assert _wait(lambda: ready.count() == 1)  # none left: one is made at once
        time.sleep(0.3)
        assert ready.count() == 1  # and the next waits again
    finally:
        ready.close()
        for disk in taken:
            if disk is not None:
                disk.close()
                disk.path.unlink(missing_ok=True)
