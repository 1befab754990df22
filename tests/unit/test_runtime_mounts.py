"""runtime mount lookups at density: cgroup hierarchies read once, mountinfo parsed fast."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from declawd.runtime import cgroups
from declawd.runtime import overlay as ovl

MOUNTINFO = (
    "25 1 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n"
    "26 1 0:24 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n"
    "27 1 0:25 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct,clone_children\n"
    "90 1 7:3 / /var/lib/x/sandboxes/sbx-1/disk rw - ext4 /dev/loop3 rw\n"
    "91 1 0:90 / /var/lib/x/a\\040dir rw - tmpfs tmpfs rw,size=1024k\n"
)


def test_read_hierarchies_maps_each_controller_to_its_mount(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert cgroups._read_hierarchies(str(info)) == {
        "": Path("/sys/fs/cgroup/unified"),
        "memory": Path("/sys/fs/cgroup/memory"),
        "cpu": Path("/sys/fs/cgroup/cpu,cpuacct"),
        "cpuacct": Path("/sys/fs/cgroup/cpu,cpuacct"),
    }


def test_hierarchies_are_read_once_and_an_empty_answer_is_not_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[str] = []
    answer: dict[str, Path] = {}

    def read(mountinfo: str) -> dict[str, Path]:
        reads.append(mountinfo)
        return dict(answer)

    monkeypatch.setattr(cgroups, "_found", None)
    monkeypatch.setattr(cgroups, "_read_hierarchies", read)
    assert cgroups._hierarchies() == {} and cgroups._hierarchies() == {}
    assert len(reads) == 2  # nothing mounted yet: asked again next time
    answer["memory"] = Path("/sys/fs/cgroup/memory")
    for _ in range(3):
        assert cgroups._hierarchies() == {"memory": Path("/sys/fs/cgroup/memory")}
    assert len(reads) == 3


def test_mount_points_unescapes_only_what_is_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ovl, "open", lambda *_a, **_k: io.StringIO(MOUNTINFO), raising=False)
    points = ovl.mount_points()
    assert "/var/lib/x/a dir" in points
    assert "/var/lib/x/sandboxes/sbx-1/disk" in points
    assert "/var/lib/x/a\\040dir" not in points
