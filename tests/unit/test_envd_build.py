"""Building envd: Go unit tests pass, the build is static and cached by source hash."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from declawd.envd import SOURCE_DIR, _go_env, ensure_envd, source_hash

pytestmark = pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain")


def test_go_unit_tests_pass() -> None:
    proc = subprocess.run(
        ["go", "test", "-count=1", "./..."],
        cwd=SOURCE_DIR,
        env=_go_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ensure_envd_builds_once_per_source_hash(tmp_path: Path) -> None:
    dest = tmp_path / "bin" / "envd"
    ensure_envd(dest)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o555
    assert (tmp_path / "bin" / "envd.srchash").read_text().strip() == source_hash()
    out = subprocess.run([str(dest), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0.1.0"
    first = dest.stat().st_ino
    ensure_envd(dest)
    assert dest.stat().st_ino == first  # up to date: not rebuilt
    (tmp_path / "bin" / "envd.srchash").write_text("stale\n")
    ensure_envd(dest)
    assert dest.stat().st_ino != first  # replaced atomically by a fresh build
    assert not list((tmp_path / "bin").glob(".envd.*"))


def test_binary_is_static(tmp_path: Path) -> None:
    dest = ensure_envd(tmp_path / "envd")
    with open(dest, "rb") as f:
        data = f.read()
    assert data[:4] == b"\x7fELF"
    assert b"/lib64/ld-linux" not in data  # no program interpreter: fully static
