"""envd: the in-sandbox agent (Go, std lib only) and the helpers that build it.

The node bind-mounts one static binary read-only into every sandbox, so the Go
sources ship as package data and are compiled on the host. `ensure_envd` rebuilds
only when the sources' hash changes and installs atomically, so a running sandbox
never sees a half-written binary.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from pathlib import Path

from declawd.host import run_sync

__all__ = ["build_envd", "ensure_envd", "source_hash"]

SOURCE_DIR = Path(__file__).resolve().parent
GO_WORK_DIR = Path("/tmp/declawd-go")


def _sources() -> list[Path]:
    files = [p for p in SOURCE_DIR.glob("*.go") if not p.name.endswith("_test.go")]
    return sorted([*files, SOURCE_DIR / "go.mod"])


def source_hash() -> str:
    """sha256 over the names and contents of the Go sources that go into the binary."""
    h = hashlib.sha256()
    for path in _sources():
        h.update(path.name.encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def _go_env() -> dict[str, str]:
    # Caches live under /tmp so the build works as root in CI without a HOME; the
    # module proxy is off because envd has no dependencies and there is no internet.
    env = dict(os.environ)
    env.update(
        CGO_ENABLED="0",
        GOCACHE=str(GO_WORK_DIR / "cache"),
        GOPATH=str(GO_WORK_DIR / "path"),
        GOPROXY="off",
        GOFLAGS="-mod=mod",
        GO111MODULE="on",
        HOME=env.get("HOME") or str(GO_WORK_DIR),
    )
    return env


def build_envd(out: Path) -> Path:
    """Compile envd into `out` (static, stripped) and return `out`; CommandFailed if go fails."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        "go",
        "build",
        "-trimpath",
        "-buildvcs=false",
        "-ldflags",
        "-s -w",
        "-o",
        str(out),
        ".",
    ]
    run_sync(*cmd, cwd=SOURCE_DIR, env=_go_env())  # CommandFailed carries the compiler's output
    return out


def ensure_envd(dest: Path) -> Path:
    """Make `dest` an up-to-date envd binary (mode 0555); rebuild only if sources changed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    hash_file = dest.with_name(dest.name + ".srchash")
    want = source_hash()
    lock_path = dest.with_name(dest.name + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.exists() and hash_file.exists() and hash_file.read_text().strip() == want:
            return dest
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            build_envd(tmp)
            tmp.chmod(0o555)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        hash_file.write_text(want + "\n")
    return dest
