"""Small native parts built on the node from their C source (never baked into templates).

`ensure_statx_shim` builds a tiny preload library for runsc sandboxes (see statx_shim.c for
why); `ensure_launchns` the helper that starts a runtime in a mount namespace of its own with
the sandbox's rootfs attached (launchns.c). Like envd, each is rebuilt only when its source
changes and installed atomically.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from declawd.host import run_sync

_SOURCE = Path(__file__).with_name("statx_shim.c")
_LAUNCHNS_SOURCE = Path(__file__).with_name("launchns.c")


def ensure_statx_shim(dest: Path) -> Path:
    return _build(_SOURCE, dest, ("-shared", "-fPIC"))


def ensure_launchns(dest: Path) -> Path:
    """The launch helper (launchns.c) at `dest`; raises CommandFailed (or OSError) when it
    cannot be built."""
    return _build(_LAUNCHNS_SOURCE, dest, ())


def _build(source_path: Path, dest: Path, flags: tuple[str, ...]) -> Path:
    source = source_path.read_bytes()
    digest = hashlib.sha256(source + " ".join(flags).encode()).hexdigest()
    stamp = dest.with_name(dest.name + ".srchash")
    if dest.exists() and stamp.exists() and stamp.read_text() == digest:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}-")
    os.close(fd)
    try:
        run_sync("cc", "-O2", "-Wall", *flags, "-o", tmp, str(source_path))  # CommandFailed
        os.chmod(tmp, 0o555)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    stamp.write_text(digest)
    return dest


def preload_file(shim_in_sandbox: str, dest: Path) -> Path:
    """The /etc/ld.so.preload content that loads the shim (one line), written once."""
    content = shim_in_sandbox + "\n"
    if not dest.exists() or dest.read_text() != content:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(content)
        dest.chmod(0o444)
    return dest
