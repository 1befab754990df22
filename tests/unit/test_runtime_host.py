"""Runtime pieces testable without root: command lines, mount data, disk usage, paths."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from declawd.errors import Internal
from declawd.runtime import OciRuntime, RuntimeStartError, dir_size
from declawd.runtime.cgroups import _rel
from declawd.runtime.overlay import _overlay_data, _unescape


def test_runc_run_command_line() -> None:
    rt = OciRuntime("runc", Path("/state/run/runc"))
    cmd = rt._run_cmd(Path("/b"), "sbx-1", "/var/run/netns/x", detach=True)
    assert cmd == [
        "runc",
        "--root",
        "/state/run/runc",
        "run",
        "--detach",
        "--bundle",
        "/b",
        "sbx-1",
    ]
    assert "--detach" not in rt._run_cmd(Path("/b"), "sbx-1", None, detach=False)


def test_runsc_runs_inside_the_netns_with_host_netstack_and_host_uds() -> None:
    rt = OciRuntime("runsc", Path("/r"))
    cmd = rt._run_cmd(Path("/b"), "sbx-1", "/var/run/netns/x", detach=True)
    assert cmd[:2] == ["nsenter", "--net=/var/run/netns/x"]
    assert cmd[2:5] == ["runsc", "--root", "/r"]
    assert "--network=host" in cmd
    assert "--host-uds=create" in cmd
    assert cmd[-4:] == ["--detach", "--bundle", "/b", "sbx-1"]
    # host network (template builds): no nsenter
    assert rt._run_cmd(Path("/b"), "sbx-1", None, detach=True)[0] == "runsc"


def test_runsc_finds_the_netns_of_a_container_from_its_state(tmp_path: Path) -> None:
    netns = tmp_path / "netns-file"
    netns.touch()
    state = {
        "id": "sbx-1",
        "spec": {
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": str(netns)}]}
        },
        "sandbox": {"pid": 0},
    }
    (tmp_path / "sbx-1_sandbox:sbx-1.state").write_text(json.dumps(state))
    rt = OciRuntime("runsc", tmp_path)
    assert rt._netns_of("sbx-1") == str(netns)
    assert rt._netns_of("sbx-2") is None
    netns.unlink()
    # named netns gone: fall back to the sandbox process's namespace
    state["sandbox"] = {"pid": os.getpid()}
    (tmp_path / "sbx-1_sandbox:sbx-1.state").write_text(json.dumps(state))
    assert rt._netns_of("sbx-1") == f"/proc/{os.getpid()}/ns/net"


def test_unknown_runtime_is_rejected() -> None:
    with pytest.raises(ValueError):
        OciRuntime("crun", Path("/r"))  # type: ignore[arg-type]


def test_start_error_carries_the_stderr_tail() -> None:
    err = RuntimeStartError("sbx-1", 1, "exec: no such file\n")
    assert isinstance(err, Internal)
    assert err.stderr_tail == "exec: no such file\n"
    assert "sbx-1" in str(err)
    assert "no such file" in str(err)


def test_overlay_data_puts_the_topmost_layer_first() -> None:
    data = _overlay_data(["/l/base", "/l/mid", "/l/top"], Path("/u"), Path("/w"))
    assert data == "lowerdir=/l/top:/l/mid:/l/base,upperdir=/u,workdir=/w"


def test_mountinfo_unescape() -> None:
    assert _unescape(r"/a\040b\134c") == "/a b\\c"
    assert _unescape("/plain") == "/plain"
    assert _unescape("/x\\04") == "/x\\04"


@pytest.mark.parametrize("bad", ["", "/", "/a/../b", ".."])
def test_cgroup_paths_must_stay_below_the_root(bad: str) -> None:
    with pytest.raises(ValueError):
        _rel(bad)


def test_cgroup_path_is_relative() -> None:
    assert _rel("/declawd/sbx-1") == "declawd/sbx-1"


def test_dir_size_counts_blocks_without_following_symlinks(tmp_path: Path) -> None:
    assert dir_size(tmp_path / "missing") == 0
    empty = dir_size(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "big").write_bytes(os.urandom(256 * 1024))
    (tmp_path / "link-to-root").symlink_to("/")
    (tmp_path / "d" / "loop").symlink_to(tmp_path)
    size = dir_size(tmp_path)
    assert 256 * 1024 <= size - empty < 1024 * 1024


def test_dir_size_counts_hard_links_once(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(os.urandom(128 * 1024))
    one = dir_size(tmp_path)
    os.link(tmp_path / "a", tmp_path / "b")
    assert dir_size(tmp_path) == one
