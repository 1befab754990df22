"""Disk usage of a sandbox's overlay upper dir (what the sandbox has written).

Invariant: never follows symlinks (the upper dir is written by hostile code; a link to
/ must not make us walk the host) and counts a hard-linked inode once.
"""

from __future__ import annotations

import os
from pathlib import Path


def dir_size(path: Path) -> int:
    """Allocated bytes under path (like `du -s --bytes` of blocks); 0 if path is missing."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [str(path)]
    while stack:
        current = stack.pop()
        try:
            entries = os.scandir(current)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if st.st_nlink > 1 and not entry.is_dir(follow_symlinks=False):
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                total += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return total
