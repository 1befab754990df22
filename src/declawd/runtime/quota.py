"""Per-sandbox disk quota: a sparse ext4 image, loop-mounted, that holds the overlay upper.

Invariant: whatever the sandbox writes lands in its own fixed-size filesystem, so filling
it fails with ENOSPC inside the sandbox and never fills the host. `create_disk` and
`destroy_disk` sit side by side; both are idempotent, and a create that fails halfway
leaves no image, loop device or mount behind.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

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


class QuotaError(OSError):
    """Creating the quota filesystem failed; carries the failing command's stderr."""


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise QuotaError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.strip()[:500]}")


def create_disk(image: Path, mountpoint: Path, size_mb: int) -> None:
    """Make a `size_mb` ext4 filesystem in the sparse file `image` and mount it.

    A no-op when already mounted; on any failure everything made so far is removed.
    """
    if size_mb <= 0:
        raise ValueError("size_mb: must be positive")
    if ovl.is_mounted(mountpoint):
        return
    try:
        mountpoint.mkdir(parents=True, exist_ok=True)
        with open(image, "wb") as f:
            f.truncate(size_mb * 1024 * 1024)
        _run([*MKFS_ARGS, str(image)])
        _run(["mount", "-t", "ext4", "-o", MOUNT_OPTIONS, str(image), str(mountpoint)])
        mountpoint.chmod(0o700)
    except BaseException:
        destroy_disk(image, mountpoint)
        raise


def destroy_disk(image: Path, mountpoint: Path) -> None:
    """Unmount, detach any loop device still backed by `image`, delete it. Idempotent."""
    ovl.unmount(mountpoint)
    for dev in loop_devices(image):
        # Still attached: a lazy unmount in progress or a crash between attach and mount.
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=30, check=False)
    image.unlink(missing_ok=True)


def loop_devices(image: Path) -> list[str]:
    """Loop devices whose backing file is `image` (empty when none or image is gone)."""
    if not image.exists():
        return []
    try:
        proc = subprocess.run(
            ["losetup", "-j", str(image), "-O", "NAME", "-n"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (subprocess.SubprocessError, OSError):
        return []
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]
