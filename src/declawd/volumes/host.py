"""The volumes directory on the host, and the mount that guards it.

A live-mounted sandbox can plant symlinks in its volume; the host must never follow one (not
the API, not runc resolving a bind source, not runsc's gofer). So the volumes dir is bind-
mounted onto itself `nosymfollow,nosuid,nodev` and private (Linux 5.10+): a walk on it that
meets a symlink fails with ELOOP. `protect` is idempotent; `unprotect` is its teardown.
"""

from __future__ import annotations

import logging
from pathlib import Path

from declawd.host import CommandFailed, run_sync

log = logging.getLogger(__name__)

GUARD_OPTIONS = ("nosymfollow", "nosuid", "nodev")


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")


def mount_options(target: Path) -> set[str] | None:
    """The per-mount options of the topmost mount exactly at `target`, or None."""
    found: set[str] | None = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" ")
            if len(fields) > 5 and _unescape(fields[4]) == str(target):
                found = set(fields[5].split(","))
    return found


def is_protected(volumes_dir: Path) -> bool:
    opts = mount_options(volumes_dir.resolve())
    return opts is not None and all(o in opts for o in GUARD_OPTIONS)


def protect(volumes_dir: Path) -> None:
    """Make `volumes_dir` (created if missing) a private `nosymfollow` mount of itself.

    Raises CommandFailed when the host cannot (no root, a kernel without nosymfollow).
    """
    volumes_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = str(volumes_dir.resolve())
    if is_protected(volumes_dir):
        return
    # Always a bind of our own on top, even when the directory is a mount point already
    # (its own disk): the guard is then ours to remove without touching that mount.
    run_sync("mount", "--bind", target, target, timeout=30)
    try:
        run_sync("mount", "-o", "remount,bind," + ",".join(GUARD_OPTIONS), target, timeout=30)
        run_sync("mount", "--make-private", target, timeout=30)
    except CommandFailed:
        run_sync("umount", target, check=False, timeout=30)
        raise


def unprotect(volumes_dir: Path) -> None:
    """Undo `protect`: remove the guard mount, only it (idempotent). Sandboxes that mount a
    volume keep their mounts."""
    if volumes_dir.exists() and is_protected(volumes_dir):
        run_sync("umount", str(volumes_dir.resolve()), timeout=30)
