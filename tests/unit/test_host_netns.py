"""host.netns without root: paths, listing, and how create/delete read a command's result."""

from __future__ import annotations

from pathlib import Path

import pytest

from declawd.host import CommandFailed, Completed, call_in_netns, link_exists, list_netns
from declawd.host import netns as hn


@pytest.fixture
def netns_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(hn, "NETNS_DIR", tmp_path)
    return tmp_path


def _done(returncode: int, stderr: str = "") -> Completed:
    return Completed(("ip", "netns", "x"), returncode, "", stderr)


def test_netns_path_takes_a_name_or_a_path() -> None:
    assert hn.netns_path("dc-gw") == "/var/run/netns/dc-gw"
    assert hn.netns_path("/proc/1/ns/net") == "/proc/1/ns/net"


def test_list_netns_filters_by_prefix(netns_dir: Path) -> None:
    for name in ("dc-sbx-2", "dc-gw", "dc-sbx-1", "other"):
        (netns_dir / name).touch()
    assert list_netns("dc-sbx-") == ["dc-sbx-1", "dc-sbx-2"]
    assert hn.netns_exists("dc-gw") and not hn.netns_exists("dc-lab")


def test_list_netns_without_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hn, "NETNS_DIR", tmp_path / "missing")
    assert list_netns() == []


def test_add_counts_a_lost_race_as_success_and_anything_else_as_failure(netns_dir: Path) -> None:
    assert hn._added("a", _done(0)) is True
    with pytest.raises(CommandFailed, match="Permission denied"):
        hn._added("a", _done(1, "Permission denied"))
    (netns_dir / "a").touch()  # someone else made it meanwhile
    assert hn._added("a", _done(1, "File exists")) is False


def test_delete_removes_a_stale_file_and_ignores_one_already_gone(netns_dir: Path) -> None:
    stale = netns_dir / "a"
    stale.touch()  # no namespace mounted on it: `ip netns delete` failed, unlink succeeds
    hn._deleted("a", _done(1, "Invalid argument"))
    assert not stale.exists()
    hn._deleted("a", _done(0))


def test_delete_reports_a_namespace_it_could_not_remove(netns_dir: Path) -> None:
    (netns_dir / "busy").mkdir()  # unlink refuses a directory, as it refuses a mounted file
    with pytest.raises(CommandFailed, match="Device or resource busy"):
        hn._deleted("busy", _done(1, "Device or resource busy"))


def test_link_exists_in_the_callers_netns() -> None:
    assert link_exists("lo")
    assert not link_exists("declawd-no-such-if")


def test_link_in_a_missing_netns_does_not_exist(netns_dir: Path) -> None:
    assert not link_exists("lo", "no-such-netns")


def test_calling_into_a_missing_netns_fails_without_moving_the_caller(netns_dir: Path) -> None:
    with pytest.raises(FileNotFoundError):
        call_in_netns("no-such-netns", lambda: None)
    assert link_exists("lo")
