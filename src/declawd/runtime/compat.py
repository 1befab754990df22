"""Runtime compatibility shims injected read-only into sandboxes (never baked into templates).

`ensure_statx_shim` builds a tiny preload library for runsc sandboxes (see statx_shim.c for
why); like envd it is rebuilt only when its source changes and installed atomically.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from declawd.host import run_sync

_SOURCE = Path(__file__).with_name("statx_shim.c")


def ensure_statx_shim(dest: Path) -> Path:
    source = _SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()
    stamp = dest.with_name(dest.name + ".srchash")
    if dest.exists() and stamp.exists() and stamp.read_text() == digest:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".statx-")
    os.close(fd)
    try:
        run_sync("cc", "-O2", "-shared", "-fPIC", "-o", tmp, str(_SOURCE))  # CommandFailed
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
