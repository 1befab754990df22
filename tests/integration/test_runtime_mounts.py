"""Overlay and tmpfs mounts, and the cgroup sweep, on the real kernel (needs root)."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest

from declawd.runtime import is_mounted, mount_overlay, mount_tmpfs, remove_cgroup, unmount
from declawd.runtime.cgroups import cgroup_dirs

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]


def _layer(root: Path, index: int, long_name: str) -> Path:
    layer = root / f"{long_name}-{index:03d}"
    layer.mkdir(parents=True)
    (layer / f"only-{index}").write_text(str(index))
    (layer / "shadowed").write_text(str(index))
    return layer


def test_overlay_stacks_layers_lowest_first_and_writes_go_to_upper(tmp_path: Path) -> None:
    layers = [_layer(tmp_path / "layers", i, "l") for i in range(3)]
    upper, work, target = tmp_path / "upper", tmp_path / "work", tmp_path / "rootfs"
    for d in (upper, work, target):
        d.mkdir()
    mount_overlay(layers, upper, work, target)
    try:
        assert is_mounted(target)
        assert (target / "shadowed").read_text() == "2"  # last lower is topmost
        assert {(target / f"only-{i}").read_text() for i in range(3)} == {"0", "1", "2"}
        (target / "new").write_text("w")
        (target / "shadowed").write_text("changed")
        assert (upper / "new").read_text() == "w"
        assert (layers[2] / "shadowed").read_text() == "2"  # layers stay untouched
    finally:
        unmount(target)
    assert not is_mounted(target)
    unmount(target)  # idempotent
    unmount(tmp_path / "never-existed")


def test_overlay_with_more_layer_paths_than_fit_in_one_mount_page(tmp_path: Path) -> None:
    long_name = "template-layer-" + "x" * 120
    layers = [_layer(tmp_path / "layers", i, long_name) for i in range(40)]
    assert sum(len(str(p)) + 1 for p in layers) > 4096  # too long for mount(2)'s data page
    upper, work, target = tmp_path / "upper", tmp_path / "work", tmp_path / "rootfs"
    for d in (upper, work, target):
        d.mkdir()
    mount_overlay(layers, upper, work, target)
    try:
        assert (target / "shadowed").read_text() == "39"
        assert (target / "only-0").read_text() == "0"
        assert (target / "only-39").read_text() == "39"
    finally:
        unmount(target)
    assert not is_mounted(target)


def _mountinfo_line(target: Path) -> str:
    lines = [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines()
             if ln.split()[4] == str(target)]  # fmt: skip
    assert len(lines) == 1, lines
    return lines[0]


def test_overlay_options_name_no_host_path_and_the_cwd_stays(tmp_path: Path) -> None:
    # every line of mountinfo is formatted again on every read (runc reads it four times a
    # start): the options are one-letter names relative to the mount's own link dir
    layers = [_layer(tmp_path / "layers:odd,name", i, "l") for i in range(2)]
    upper, work, target = tmp_path / "upper", tmp_path / "work", tmp_path / "rootfs"
    for d in (upper, work, target):
        d.mkdir()
    cwd = os.getcwd()
    mount_overlay(layers, upper, work, target)
    try:
        options = _mountinfo_line(target).split(" - ", 1)[1].split()[2]
        assert "lowerdir=1:0,upperdir=u,workdir=w" in options, options
        assert os.getcwd() == cwd
        assert (target / "shadowed").read_text() == "1"  # a ':' or ',' in a path is fine
        (target / "new").write_text("w")
        assert (upper / "new").read_text() == "w"
    finally:
        unmount(target)
    assert not is_mounted(target)


def test_unmount_falls_back_to_lazy_when_busy(tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.mkdir()
    mount_tmpfs(target, 1 << 20)
    holder = subprocess.Popen(["sleep", "60"], cwd=target)  # a cwd inside makes it EBUSY
    try:
        unmount(target)
        assert not is_mounted(target)
    finally:
        holder.kill()
        holder.wait()


def test_tmpfs_is_size_limited_with_mode(tmp_path: Path) -> None:
    target = tmp_path / "envd"
    target.mkdir()
    mount_tmpfs(target, 1 << 20, 0o700)
    try:
        mount_tmpfs(target, 1 << 20, 0o700)  # already mounted: no second layer
        assert is_mounted(target)
        assert oct(target.stat().st_mode & 0o777) == oct(0o700)
        st = os.statvfs(target)
        assert st.f_blocks * st.f_frsize == 1 << 20
        with pytest.raises(OSError), open(target / "big", "wb") as f:
            f.write(b"\0" * (2 << 20))
    finally:
        unmount(target)
    assert not is_mounted(target)


def test_remove_cgroup_removes_children_everywhere_and_is_idempotent() -> None:
    parent = f"/rttest{secrets.token_hex(3)}"
    made = []
    for hierarchy in ("memory", "pids", "cpu"):
        base = Path("/sys/fs/cgroup") / hierarchy
        if base.is_dir():
            child = base / parent.strip("/") / "sbx-1" / "inner"
            child.mkdir(parents=True)
            made.append(child)
    assert made, "no v1 hierarchy to test on"
    assert len(cgroup_dirs(parent)) == len(made)
    remove_cgroup(parent)
    assert cgroup_dirs(parent) == []
    remove_cgroup(parent)
