"""SandboxHost's rootfs: a detached overlay attached in the runtime's namespace, or (without
the launch helper) a host mount; what `is_ready`, `rootfs_view` and `release` make of each.

Needs root and the built `python` template (`make templates`). No container is started
here (tests/integration/test_runtime_containers.py starts them); every mount and fd made
is checked gone at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from declawd.config import Settings
from declawd.node.sandbox import ROOTFS_IN_CONTAINER, SandboxHost
from declawd.runtime import RootfsMount, is_mounted
from declawd.runtime.compat import ensure_launchns
from declawd.templates.catalog import catalog_plan
from declawd.templates.layers import LayerCache

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

SID = "sbx-0000000000aa"


@pytest.fixture(scope="module")
def layers() -> list[Path]:
    cache = LayerCache(Settings.from_env().templates_path)
    keys = catalog_plan("python").keys
    if not all(cache.exists(k) for k in keys):
        pytest.fail("the python template is not built: run `make templates`")
    return [cache.fs(k) for k in keys]


@pytest.fixture
def host(tmp_path: Path) -> Iterator[SandboxHost]:
    # No quota disk (its own tests are test_runtime_quota.py): plain upper and work dirs.
    h = SandboxHost(Settings(state_dir=tmp_path, instance="rootfstest", disk_quota_mb=0))
    yield h
    h.rootfs_started(SID)
    assert not is_mounted(h.resources(SID).rootfs)


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _lines_naming(path: Path) -> list[str]:
    return [
        line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(path) in line
    ]


async def test_with_the_launcher_the_rootfs_is_an_fd_until_the_runtime_starts(
    host: SandboxHost, layers: list[Path], tmp_path: Path
) -> None:
    host._launcher = ensure_launchns(tmp_path / "bin" / "declawd-launchns")
    before = _fds()
    host.prepare(SID, layers, "10.0.0.2", "10.0.0.1")
    res = host.resources(SID)
    assert _lines_naming(res.dir) == []  # nothing mounted on the host
    assert (res.dir / ROOTFS_IN_CONTAINER).exists()
    view = host.rootfs_view(SID)
    assert str(view).startswith("/proc/self/fd/")
    assert (view / "usr" / "bin" / "python3").exists()  # the merged view, through the fd
    assert (view / "etc" / "hostname").read_text() == SID + "\n"  # the upper's own files
    mount = host.rootfs_mount(SID)
    assert isinstance(mount, RootfsMount) and mount.target == res.rootfs
    assert _fds() - before == {str(mount.fd)}
    res.envd_socket.parent.mkdir(parents=True, exist_ok=True)
    res.envd_socket.touch()
    assert host.is_ready(SID)  # the marker stands for the mount the container holds
    host.rootfs_started(SID)
    assert _fds() == before and host.rootfs_mount(SID) is None
    assert host.rootfs_view(SID) == res.rootfs
    assert await host.release(SID, None) == []
    assert not res.dir.exists()


async def test_without_the_launcher_the_overlay_is_mounted_on_the_host(
    host: SandboxHost, layers: list[Path]
) -> None:
    assert host._launcher is None  # prepare_node was not called: no helper
    host.prepare(SID, layers, "10.0.0.2", "10.0.0.1")
    res = host.resources(SID)
    assert is_mounted(res.rootfs) and not (res.dir / ROOTFS_IN_CONTAINER).exists()
    assert host.rootfs_mount(SID) is None and host.rootfs_view(SID) == res.rootfs
    assert (res.rootfs / "usr" / "bin" / "python3").exists()
    assert not host.is_ready(SID)  # no envd socket yet
    res.envd_socket.parent.mkdir(parents=True, exist_ok=True)
    res.envd_socket.touch()
    assert host.is_ready(SID)
    assert await host.release(SID, None) == []
    assert _lines_naming(res.dir) == [] and not res.dir.exists()


async def test_release_after_a_failed_start_closes_the_overlay(
    host: SandboxHost, layers: list[Path], tmp_path: Path
) -> None:
    """A create that fails between `prepare` and the runtime's start: release lets go of
    the detached overlay (nothing else holds it, so it is gone)."""
    host._launcher = ensure_launchns(tmp_path / "bin" / "declawd-launchns")
    before = _fds()
    host.prepare(SID, layers, "10.0.0.2", "10.0.0.1")
    assert host.rootfs_mount(SID) is not None
    assert await host.release(SID, None) == []
    assert _fds() == before and host.rootfs_mount(SID) is None
    assert not host.resources(SID).dir.exists()
