"""Per-sandbox disk quota: a sparse ext4 image, loop-mounted, that holds the overlay upper.

Invariant: whatever the sandbox writes lands in its own fixed-size filesystem, so filling
it fails with ENOSPC inside the sandbox and never fills the host. `create_disk` and
`destroy_disk` sit side by side; both are idempotent, and a create that fails halfway
leaves no image, loop device or mount behind.
"""

from __future__ import annotations

from pathlib import Path

from declawd.host import run_sync, undo_all_sync
from declawd.runtime import overlay as ovl

# No journal (the upper dir dies with the sandbox, crash consistency buys nothing), no
# root reserve (in-sandbox root must hit the same wall), and no inode-table zeroing: the
# image is a fresh sparse file, so its tables already read as zeros.
MKFS_ARGS: tuple[str, ...] = (
    "mkfs.ext4",
    "-q",
    "-F",
    "-m",
    "0",
    "-O",
    "^has_journal",
    "-E",
    "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
)
# `loop` makes mount(8) attach the device with autoclear: the last unmount detaches it.
MOUNT_OPTIONS = "loop,nosuid,nodev,noinit_itable"
_TIMEOUT_S = 60


def create_disk(image: Path, mountpoint: Path, size_mb: int) -> None:
    """Make a `size_mb` ext4 filesystem in the sparse file `image` and mount it.

    A no-op when already mounted; on any failure everything made so far is removed, and
    a failing mkfs or mount raises CommandFailed with its stderr.
    """
    if size_mb <= 0:
        raise ValueError("size_mb: must be positive")
    if ovl.is_mounted(mountpoint):
        return
    try:
        mountpoint.mkdir(parents=True, exist_ok=True)
        with open(image, "wb") as f:
            f.truncate(size_mb * 1024 * 1024)
        run_sync(*MKFS_ARGS, str(image), timeout=_TIMEOUT_S)
        run_sync("mount", "-t", "ext4", "-o", MOUNT_OPTIONS, str(image), str(mountpoint),
                 timeout=_TIMEOUT_S)  # fmt: skip
        mountpoint.chmod(0o700)
    except BaseException:
        destroy_disk(image, mountpoint)
        raise


def destroy_disk(image: Path, mountpoint: Path) -> None:
    """Unmount, detach any loop device still backed by `image`, delete it. Idempotent;
    every step runs, and what could not be undone is raised afterwards."""
    undo_all_sync(
        f"disk {image}",
        lambda: ovl.unmount(mountpoint),
        lambda: _detach_loop_devices(image),
        lambda: image.unlink(missing_ok=True),
    )


def _detach_loop_devices(image: Path) -> None:
    """Still attached: a lazy unmount in progress or a crash between attach and mount."""
    for dev in loop_devices(image):
        done = run_sync("losetup", "-d", dev, check=False, timeout=_TIMEOUT_S)
        if not done.ok and dev in loop_devices(image):  # else autoclear beat us to it
            done.check()


def loop_devices(image: Path) -> list[str]:
    """Loop devices whose backing file is `image` (empty when none or image is gone)."""
    if not image.exists():
        return []
    listed = run_sync("losetup", "-j", str(image), "-O", "NAME", "-n", timeout=_TIMEOUT_S)
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()]
