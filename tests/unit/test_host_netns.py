"""host.netns without root: paths, listing, idempotent create/delete, sysctl files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from declawd.host import NetnsError, call_in_netns, link_exists, list_netns, write_sysctls
from declawd.host import netns as hn


@pytest.fixture
def netns_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(hn, "NETNS_DIR", tmp_path)
    return tmp_path


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


def test_add_of_an_existing_netns_is_a_no_op(netns_dir: Path) -> None:
    (netns_dir / "a").touch()
    assert hn.add_netns_sync("a") is False
    assert asyncio.run(hn.add_netns("a")) is False


def test_delete_removes_a_stale_file_and_ignores_one_already_gone(netns_dir: Path) -> None:
    stale = netns_dir / "a"
    stale.touch()  # no namespace mounted on it (a crash between create and mount)
    hn.delete_netns_sync("a")
    assert not stale.exists()
    hn.delete_netns_sync("a")
    asyncio.run(hn.delete_netns("a"))


def test_delete_reports_a_namespace_it_could_not_remove(netns_dir: Path) -> None:
    (netns_dir / "busy").mkdir()  # unlink refuses a directory, as it refuses a mounted file
    with pytest.raises(NetnsError, match="netns busy: unlink"):
        hn.delete_netns_sync("busy")


def test_sysctls_are_written_as_proc_sys_files(tmp_path: Path) -> None:
    conf = tmp_path / "net" / "ipv6" / "conf" / "all"
    conf.mkdir(parents=True)
    (conf / "disable_ipv6").write_text("0\n")
    write_sysctls({"net.ipv6.conf.all.disable_ipv6": "1"}, root=tmp_path)
    assert (conf / "disable_ipv6").read_text() == "1\n"
    with pytest.raises(FileNotFoundError):
        write_sysctls({"net.no.such.key": "1"}, root=tmp_path)


def test_link_exists_in_the_callers_netns() -> None:
    assert link_exists("lo")
    assert not link_exists("declawd-no-such-if")


def test_link_in_a_missing_netns_does_not_exist(netns_dir: Path) -> None:
    assert not link_exists("lo", "no-such-netns")


def test_calling_into_a_missing_netns_fails_without_moving_the_caller(netns_dir: Path) -> None:
    with pytest.raises(FileNotFoundError):
        call_in_netns("no-such-netns", lambda: None)
    assert link_exists("lo")
