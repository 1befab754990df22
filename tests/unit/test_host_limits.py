"""host.limits: sysctl floors from the pool, raise-only writes, and the open-files soft limit."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from declawd.host import limits


def _sysctl(root: Path, name: str, value: str) -> Path:
    path = root / name.replace(".", "/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value)
    return path


def test_floors_give_every_slot_of_the_pool_its_two_neighbour_entries() -> None:
    floors = limits.sysctl_floors("10.81.0.0/16")  # 16384 /30 slots
    assert floors["net.ipv4.neigh.default.gc_thresh3"] == 2 * 16384 + limits.NEIGH_HOST_ROOM
    assert (
        floors["net.ipv4.neigh.default.gc_thresh2"]
        == floors["net.ipv4.neigh.default.gc_thresh3"] // 2
    )
    small = limits.sysctl_floors("10.81.0.0/24")
    assert small["net.ipv4.neigh.default.gc_thresh3"] == 2 * 64 + limits.NEIGH_HOST_ROOM
    # the kernel's defaults (128/512/1024) are below the floors of a /16 pool
    assert floors["net.ipv4.neigh.default.gc_thresh3"] > 1024
    assert floors["fs.inotify.max_user_instances"] > 128
    assert floors["kernel.pid_max"] > 32768


def test_raise_sysctls_raises_what_is_below_and_never_lowers(tmp_path: Path) -> None:
    low = _sysctl(tmp_path, "fs.inotify.max_user_instances", "128\n")
    high = _sysctl(tmp_path, "kernel.pid_max", "4194304\n")
    raised = limits.raise_sysctls(
        {"fs.inotify.max_user_instances": 8192, "kernel.pid_max": 65536}, tmp_path
    )
    assert raised == [limits.Raised("fs.inotify.max_user_instances", 128, 8192)]
    assert low.read_text() == "8192\n"
    assert high.read_text() == "4194304\n"


def test_raise_sysctls_skips_what_it_cannot_read_or_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    readonly = _sysctl(tmp_path, "net.ipv4.neigh.default.gc_thresh3", "1024\n")
    garbage = _sysctl(tmp_path, "kernel.pid_max", "many\n")
    writable = _sysctl(tmp_path, "fs.inotify.max_user_instances", "128\n")
    write_text = Path.write_text

    def refuse(self: Path, data: str) -> int:  # a container's read-only /proc/sys
        if self == readonly:
            raise PermissionError(13, "Read-only file system")
        return write_text(self, data)

    monkeypatch.setattr(Path, "write_text", refuse)
    floors = {
        "fs.inotify.max_user_watches": 524288,  # missing (an older kernel)
        "net.ipv4.neigh.default.gc_thresh3": 4096,
        "kernel.pid_max": 65536,
        "fs.inotify.max_user_instances": 8192,
    }
    raised = limits.raise_sysctls(floors, tmp_path)
    assert raised == [limits.Raised("fs.inotify.max_user_instances", 128, 8192)]
    assert (readonly.read_text(), garbage.read_text(), writable.read_text()) == (
        "1024\n",
        "many\n",
        "8192\n",
    )
    for name in (
        "fs.inotify.max_user_watches",
        "net.ipv4.neigh.default.gc_thresh3",
        "kernel.pid_max",
    ):
        assert f"could not raise {name}" in caplog.text


def test_raise_nofile_lifts_the_soft_limit_to_the_hard_one() -> None:
    """In a child whose soft limit is 1024, as under systemd; the hard limit is untouched."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.fail(f"needs a hard RLIMIT_NOFILE above 1024, have {hard}")
    code = (
        "import resource\n"
        "from declawd.host import limits\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))\n"
        "r = limits.raise_nofile()\n"
        "again = limits.raise_nofile()\n"
        "print(r.before, r.after, again, *resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after, again, soft_now, hard_now = out.stdout.split()
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    assert (int(before), int(after), again) == (1024, want, "None")
    assert (int(soft_now), int(hard_now)) == (want, hard)
