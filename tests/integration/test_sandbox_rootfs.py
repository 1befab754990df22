"""SandboxHost's rootfs: a detached overlay attached in the runtime's namespace, or (without
the launch helper) a host mount; what `is_ready`, `rootfs_view` and `release` make of each;
the per-sandbox subtrees (quota disks, netns files) that the runtime's namespace drops.

Needs root and the built `python` template (`make templates`). No container is started
here (tests/integration/test_runtime_containers.py starts them); every mount and fd made
is checked gone at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from declawd.config import Settings
from declawd.envd import ensure_envd
from declawd.host.netns import (
    NETNS_DIR,
    add_netns_sync,
    delete_netns_sync,
    netns_exists,
    netns_path,
)
from declawd.node.sandbox import ROOTFS_IN_CONTAINER, SANDBOXES_PIN, SandboxHost
from declawd.runtime import Prune, RootfsMount, is_mounted
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
    if is_mounted(h.settings.sandboxes_dir):  # a failed test's pin
        subprocess.run(["umount", "-l", str(h.settings.sandboxes_dir)], check=True)


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


def _tmpfs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "none", str(path)], check=True)


def _launch(mount: RootfsMount, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        mount.wrap(["sh", "-c", script]),
        pass_fds=(mount.fd,),
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_the_runtimes_namespace_goes_without_the_other_sandboxes_disks_and_netns(
    host: SandboxHost, layers: list[Path], tmp_path: Path
) -> None:
    """The sandboxes' dir is pinned (a bind of itself, recorded), so a launch drops every
    quota disk below it and every netns file but its own sandbox's in one call each; the
    host keeps them all; the pin goes only once no disk is mounted below it."""
    host._launcher = ensure_launchns(tmp_path / "bin" / "declawd-launchns")
    sandboxes = host.settings.sandboxes_dir
    sandboxes.mkdir(parents=True)
    res = host.resources(SID)
    other = host.resources("sbx-0000000000bb")
    mine, theirs = "rootfstest-mine", "rootfstest-theirs"
    try:
        assert host._pin_sandboxes_dir() and is_mounted(sandboxes)
        host._pinned = True
        pin = host.settings.run_dir / SANDBOXES_PIN
        assert pin.read_text().strip().isdigit()
        assert host._pin_sandboxes_dir()  # a restart finds its own pin, makes no second
        assert _lines_naming(sandboxes).count(_lines_naming(sandboxes)[0]) == 1
        for r in (res, other):
            _tmpfs(r.disk)  # stands for each one's quota disk
        (other.disk / "theirs").write_text("x")
        add_netns_sync(mine)
        add_netns_sync(theirs)
        host.prepare(SID, layers, "10.0.0.2", "10.0.0.1")
        mount = host.rootfs_mount(SID, netns_path(mine))
        assert mount is not None
        assert mount.prune == (
            Prune(sandboxes, (res.disk,)),
            Prune(NETNS_DIR, (Path(netns_path(mine)),)),
        )
        ran = _launch(
            mount,
            f"cat /proc/self/mountinfo; cat {res.rootfs}/etc/hostname; ls {other.disk}",
        )
        assert ran.returncode == 0, ran.stderr
        points = [line.split()[4] for line in ran.stdout.splitlines() if line.count(" ") > 5]
        assert str(res.rootfs) in points and str(res.disk) in points
        assert f"/run/netns/{mine}" in points and f"/run/netns/{theirs}" not in points
        assert str(other.disk) not in points
        assert SID + "\n" in ran.stdout and "theirs" not in ran.stdout.split(SID, 1)[1]
        # the host's table is as it was
        assert is_mounted(other.disk) and (other.disk / "theirs").exists()
        assert netns_exists(theirs)
        host.rootfs_started(SID)
        host.unpin()  # disks below: the pin stays
        assert is_mounted(sandboxes) and pin.exists()
    finally:
        host.rootfs_started(SID)
        for r in (res, other):
            subprocess.run(["umount", str(r.disk)], check=False)
        delete_netns_sync(mine)
        delete_netns_sync(theirs)
        shutil.rmtree(other.dir)
    assert await host.release(SID, None) == []
    host.close()  # no sandbox left: the pin goes
    assert not is_mounted(sandboxes) and not pin.exists()


def test_a_prune_of_a_mount_that_is_not_a_bind_of_itself_fails_the_launch(
    tmp_path: Path,
) -> None:
    """Detaching another filesystem would show what lies under it, not the same dir: the
    helper refuses (status 125, a line naming the dir) and runs nothing."""
    launcher = ensure_launchns(tmp_path / "bin" / "declawd-launchns")
    disk, target = tmp_path / "disk", tmp_path / "target"
    target.mkdir()
    _tmpfs(disk)
    try:
        fd = os.open(tmp_path, os.O_RDONLY)  # never attached: the launch fails first
        mount = RootfsMount(launcher, fd, target, (Prune(disk),))
        ran = _launch(mount, "echo ran")
        os.close(fd)
        assert ran.returncode == 125 and "ran" not in ran.stdout
        assert f"prune (not a bind mount of itself) {disk}" in ran.stderr
    finally:
        subprocess.run(["umount", str(disk)], check=True)


async def test_a_pinned_node_takes_its_ready_disks_by_rename(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The disks made ahead live in the sandboxes' dir, on the pin's mount: a create takes
    one by a rename (across mounts that is EXDEV, and every create made its own disk)."""
    envd = Settings.from_env().envd_path
    ensure_envd(envd)
    (tmp_path / "bin").mkdir()
    for name in (envd.name, envd.name + ".srchash"):
        shutil.copy2(envd.with_name(name), tmp_path / "bin" / name)
    host = SandboxHost(Settings(state_dir=tmp_path, instance="rootfstest", disk_quota_mb=64))
    host.prepare_node()
    ready = host._ready_disks
    try:
        assert host._pinned and is_mounted(host.settings.sandboxes_dir)
        assert ready is not None and ready.dir == host.ready_disks_dir
        deadline = time.monotonic() + 60
        while ready.count() < ready.target and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.count() == ready.target
        made_ahead = {p.stat().st_ino for p in ready.dir.glob("*.img")}
        res = host.resources(SID)
        res.prepare_dirs(ready)
        assert res.disk_image.stat().st_ino in made_ahead  # renamed, not made anew
        assert "not usable" not in caplog.text
        assert is_mounted(res.disk) and (res.disk / "upper").is_dir()
        assert host.present() == [SID]  # the ready disks' dir is no sandbox
    finally:
        assert await host.release(SID, None) == []
        host.close()
    assert not is_mounted(host.settings.sandboxes_dir)
    assert list(host.ready_disks_dir.glob("*.img")) == []
