"""Where a sandbox's host-side paths are (pure path logic, no mounts)."""

from __future__ import annotations

from pathlib import Path

from declawd.config import Settings
from declawd.node.sandbox import SandboxResources
from declawd.node.spec import ENVD_SOCKET_NAME


def _res(tmp_path: Path) -> SandboxResources:
    return SandboxResources(Settings(state_dir=tmp_path), "sbx-0123456789ab")


def test_envd_socket_dir_is_on_the_quota_disk_beside_upper(tmp_path: Path) -> None:
    res = _res(tmp_path)
    assert res.envd_dir == res.disk / "envd"
    assert res.envd_dir.parent == res.upper.parent  # never inside what the sandbox sees
    assert res.envd_socket == res.disk / "envd" / ENVD_SOCKET_NAME


def test_a_sandbox_made_by_an_older_version_keeps_its_socket(tmp_path: Path) -> None:
    res = _res(tmp_path)
    res.legacy_envd_dir.mkdir(parents=True)
    assert res.envd_dir == res.disk / "envd"  # an empty legacy dir is not a socket dir
    (res.legacy_envd_dir / ENVD_SOCKET_NAME).touch()
    assert res.envd_socket == res.dir / "envd" / ENVD_SOCKET_NAME
