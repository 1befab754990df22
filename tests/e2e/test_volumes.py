"""Volumes through the official SDK: `Volumes`, `VolumeFiles`, `VolumeLocks`, attach at create.

Every volume is file-granular. The sandbox tests run on runc and runsc where the behaviour
depends on the runtime (live mounts); the API-only ones once.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from declaw import (
    ConflictException,
    InvalidArgumentException,
    NotEnoughSpaceException,
    NotFoundException,
    Sandbox,
    VolumeAttachment,
    Volumes,
)

from tests.e2e.conftest import new_team_key
from tests.e2e.leaks import OwnServer

pytestmark = pytest.mark.e2e

BACKEND = "file-granular"


def _name(prefix: str) -> str:
    return f"e2e-{prefix}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def vol(server: dict[str, str]) -> Iterator[str]:
    v = Volumes.create(_name("vol"))
    try:
        yield v.volume_id
    finally:
        with contextlib.suppress(NotFoundException):  # the test deleted it already
            Volumes.delete(v.volume_id)


def _targz(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for info, data in entries:
            if data is None:
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info


def _names_in(targz: bytes) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    with tarfile.open(fileobj=io.BytesIO(targz), mode="r:gz") as t:
        for m in t.getmembers():
            f = t.extractfile(m) if m.isfile() else None
            out[m.name] = f.read() if f is not None else None
    return out


def _sandbox(runtime: str = "runc", **kw: object) -> Sandbox:
    return Sandbox.create(template="base", timeout=180, metadata={"declaw.runtime": runtime}, **kw)  # type: ignore[arg-type]


# API only ----------------------------------------------------------------------------
def test_empty_volume_files_round_trip_with_versions_and_cas(vol: str) -> None:
    v = Volumes.get(vol)
    assert (v.backend, v.size_bytes, v.owner_id != "") == (BACKEND, 0, True)
    assert v.quota_bytes == 10240 << 20
    files = Volumes.files(vol)
    assert files.write("/docs/a.txt", b"hello") == "/docs/a.txt"
    assert files.read("/docs/a.txt") == b"hello"
    info = files.info("/docs/a.txt")
    assert (info.name, info.path, info.is_dir, info.size) == ("a.txt", "/docs/a.txt", False, 5)
    assert info.version and info.mod_time
    files.write("/docs/a.txt", b"hello, again", if_version=info.version)
    newer = files.info("/docs/a.txt")
    assert newer.version != info.version and newer.size == 12
    with pytest.raises(ConflictException):
        files.write("/docs/a.txt", b"stale", if_version=info.version)
    assert files.read("/docs/a.txt") == b"hello, again"
    assert files.mkdir("/docs/sub") == "/docs/sub"
    listed = {e.name: e for e in files.list("/docs")}
    assert set(listed) == {"a.txt", "sub"} and listed["sub"].is_dir
    assert files.exists("/docs/a.txt") and not files.exists("/nope")
    files.rename("/docs/a.txt", "/docs/sub/b.txt")
    assert files.read("/docs/sub/b.txt") == b"hello, again"
    with pytest.raises(NotFoundException):
        files.read("/docs/a.txt")
    with pytest.raises(InvalidArgumentException):
        files.remove("/docs")  # not empty without recursive
    files.remove("/docs", recursive=True)
    assert files.list("/") == []
    assert Volumes.get(vol).size_bytes == 0


def test_create_from_targz_drops_hostile_entries(server: dict[str, str]) -> None:
    data = _targz(
        [
            (_member("./ok.txt"), b"kept"),
            (_member("dir", tarfile.DIRTYPE), None),
            (_member("dir/inner.bin"), b"\x00\x01\x02"),
            (_member("../escape.txt"), b"no"),
            (_member("/etc/declawd-e2e-abs"), b"no"),
            (_member("link", tarfile.SYMTYPE, "/etc/passwd"), None),
            (_member("hard", tarfile.LNKTYPE, "/etc/passwd"), None),
            (_member("dev", tarfile.CHRTYPE), None),
            (_member("fifo", tarfile.FIFOTYPE), None),
        ]
    )
    # The raw answer carries the filter's counts (the SDK's Volume ignores them).
    r = httpx.post(
        f"{server['url']}/volumes",
        params={"name": _name("hostile")},
        content=data,
        headers={"X-API-Key": server["key"], "Content-Type": "application/gzip"},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    try:
        assert body["dropped_entries"] == 6
        assert body["dropped"] == {
            "parent reference (..)": 1,
            "absolute path": 1,
            "symlink": 1,
            "hardlink": 1,
            "device node": 1,
            "fifo": 1,
        }
        assert body["size_bytes"] == 7
        files = Volumes.files(body["volume_id"])
        assert sorted(e.name for e in files.list("/")) == ["dir", "ok.txt"]
        assert files.read("/dir/inner.bin") == b"\x00\x01\x02"
        assert _names_in(Volumes.download(body["volume_id"])) == {
            "dir": None,
            "dir/inner.bin": b"\x00\x01\x02",
            "ok.txt": b"kept",
        }
        assert not Path("/etc/declawd-e2e-abs").exists()
    finally:
        Volumes.delete(body["volume_id"])


def test_create_from_directory_ingest_empty_list_get_delete(
    server: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "src" / "nested").mkdir(parents=True)
    (tmp_path / "src" / "top.txt").write_text("top")
    (tmp_path / "src" / "nested" / "deep.txt").write_text("deep")
    (tmp_path / "src" / "link").symlink_to("/etc/passwd")
    from_dir = Volumes.create(_name("dir"), data=str(tmp_path / "src"))
    ingested = Volumes.ingest(_name("ingest"), data=tmp_path / "src")
    empty = Volumes.empty(_name("empty"))
    made = [from_dir, ingested, empty]
    try:
        for v in (from_dir, ingested):
            assert v.backend == BACKEND and v.size_bytes == 7
            f = Volumes.files(v.volume_id)
            assert f.read("/nested/deep.txt") == b"deep"
            assert sorted(e.name for e in f.list("/")) == ["nested", "top.txt"]
        assert empty.size_bytes == 0 and Volumes.files(empty.volume_id).list() == []
        ids = {m.volume_id for m in made}
        newest_first = [v.volume_id for v in Volumes.list() if v.volume_id in ids]
        assert newest_first == [empty.volume_id, ingested.volume_id, from_dir.volume_id]
        assert Volumes.get(from_dir.volume_id).name == from_dir.name
        r = httpx.post(
            f"{server['url']}/volumes/ingest",
            params={"name": "x"},
            headers={"X-API-Key": server["key"]},
        )
        assert r.status_code == 400 and "archive is required" in r.json()["message"]
    finally:
        for v in made:
            Volumes.delete(v.volume_id)
    with pytest.raises(NotFoundException):
        Volumes.get(from_dir.volume_id)
    with pytest.raises(NotFoundException):
        Volumes.delete(from_dir.volume_id)


def test_bad_archive_is_400(server: dict[str, str]) -> None:
    with pytest.raises(InvalidArgumentException, match="not a readable tar archive"):
        Volumes.create(_name("bad"), data=b"definitely not gzip" * 50)


def test_locks_held_renew_release(vol: str) -> None:
    locks = Volumes.locks(vol)
    got = locks.acquire("/jobs/1", ttl_seconds=30)
    assert got["ttl_seconds"] == 30 and got["token"] and got["expires_at"]
    with pytest.raises(ConflictException):
        locks.acquire("/jobs/1")
    st = locks.status("/jobs/1")
    assert st["held"] is True and 0 < st["expires_in_ms"] <= 30_000
    with pytest.raises(ConflictException):
        locks.renew("/jobs/1", "not-the-token")
    renewed = locks.renew("/jobs/1", got["token"], ttl_seconds=60)
    assert renewed["token"] == got["token"] and renewed["ttl_seconds"] == 60
    with pytest.raises(ConflictException):
        locks.release("/jobs/1", "not-the-token")
    assert locks.release("/jobs/1", got["token"]) is True
    assert locks.status("/jobs/1") == {"held": False, "expires_in_ms": 0}
    short = locks.acquire("/jobs/1", ttl_seconds=1)
    time.sleep(1.2)
    assert locks.status("/jobs/1")["held"] is False
    again = locks.acquire("/jobs/1", ttl_seconds=5)
    assert again["token"] != short["token"]


def test_another_teams_volume_is_404(server: dict[str, str], vol: str) -> None:
    Volumes.files(vol).write("/secret", b"mine")
    other = new_team_key("volumes-b")
    with pytest.raises(NotFoundException):
        Volumes.get(vol, api_key=other)
    with pytest.raises(NotFoundException):
        Volumes.files(vol, api_key=other).read("/secret")
    with pytest.raises(NotFoundException):
        Volumes.files(vol, api_key=other).write("/x", b"theirs")
    with pytest.raises(NotFoundException):
        Volumes.locks(vol, api_key=other).acquire("/secret")
    with pytest.raises(NotFoundException):
        Volumes.download(vol, api_key=other)
    with pytest.raises(NotFoundException):
        Volumes.delete(vol, api_key=other)
    assert vol not in [v.volume_id for v in Volumes.list(api_key=other)]
    with pytest.raises(NotFoundException):
        Sandbox.create(template="base", api_key=other, volumes=[VolumeAttachment(vol, "/data")])
    assert Volumes.files(vol).read("/secret") == b"mine"


# Attached to sandboxes ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("attachment", "field"),
    [
        ({"mount_path": "/proc/v"}, "volumes[0].mount_path"),
        ({"mount_path": "/sys/v"}, "volumes[0].mount_path"),
        ({"mount_path": "/dev/v"}, "volumes[0].mount_path"),
        ({"mount_path": "/"}, "volumes[0].mount_path"),
        ({"mount_path": "relative"}, "volumes[0].mount_path"),
        ({"mount_path": "/data", "subpath": "x"}, "volumes[0].subpath"),
        ({"mount_path": "/data", "mode": "mount", "subpath": "../x"}, "volumes[0].subpath"),
    ],
)
def test_bad_attachments_are_400_naming_the_field(
    vol: str, attachment: dict[str, str], field: str
) -> None:
    with pytest.raises(InvalidArgumentException, match=re.escape(field)):
        Sandbox.create(template="base", volumes=[{"volume_id": vol, **attachment}])  # type: ignore[list-item]


def test_unknown_volume_is_404_naming_it(server: dict[str, str]) -> None:
    with pytest.raises(NotFoundException, match="vol-000000000000"):
        Sandbox.create(template="base", volumes=[VolumeAttachment("vol-000000000000", "/data")])


def test_two_sandboxes_mounting_one_volume_see_each_others_writes(vol: str, runtime: str) -> None:
    Volumes.files(vol).write("/seed.txt", b"from the api")
    a = _sandbox(runtime, volumes=[VolumeAttachment(vol, "/shared", mode="mount")])
    b = _sandbox(runtime, volumes=[VolumeAttachment(vol, "/shared", mode="mount")])
    try:
        assert a.commands.run("cat /shared/seed.txt").stdout == "from the api"
        a.commands.run("echo from-a > /shared/a.txt")
        assert b.commands.run("cat /shared/a.txt").stdout == "from-a\n"
        b.commands.run("mkdir -p /shared/d && echo from-b > /shared/d/b.txt")
        assert a.commands.run("cat /shared/d/b.txt").stdout == "from-b\n"
        assert b.commands.run("stat -c %U /shared/a.txt").stdout == "user\n"
        # the API sees what the sandboxes wrote, with a version
        files = Volumes.files(vol)
        assert files.read("/d/b.txt") == b"from-b\n"
        before = files.info("/a.txt").version
        a.commands.run("echo changed > /shared/a.txt")
        assert files.info("/a.txt").version != before
        assert Volumes.get(vol).size_bytes == len(b"from the api") + 7 + len(b"changed\n")
        # a live-mounted volume cannot be deleted under its sandboxes
        with pytest.raises(ConflictException):
            Volumes.delete(vol)
    finally:
        a.kill(wait=True)
        b.kill(wait=True)


def test_mount_ro_is_read_only_even_for_root(vol: str, runtime: str) -> None:
    Volumes.files(vol).write("/r.txt", b"read me")
    s = _sandbox(runtime, volumes=[VolumeAttachment(vol, "/ro", mode="mount-ro")])
    try:
        assert s.commands.run("cat /ro/r.txt").stdout == "read me"
        for user in ("user", "root"):
            r = s.commands.run("echo x > /ro/w.txt", user=user)
            assert r.exit_code != 0 and "Read-only file system" in r.stderr
            r = s.commands.run("mount -o remount,rw /ro", user=user)
            assert r.exit_code != 0
        assert not Volumes.files(vol).exists("/w.txt")
    finally:
        s.kill(wait=True)


def test_subpath_mounts_only_that_directory(vol: str) -> None:
    files = Volumes.files(vol)
    files.write("/projects/alpha/a.txt", b"alpha")
    files.write("/projects/beta/b.txt", b"beta")
    s = _sandbox(volumes=[VolumeAttachment(vol, "/work", mode="mount", subpath="projects/alpha")])
    try:
        assert s.commands.run("ls /work").stdout.split() == ["a.txt"]
        s.commands.run("echo new > /work/n.txt")
        assert files.read("/projects/alpha/n.txt") == b"new\n"
        assert s.commands.run("ls /work/../projects").exit_code != 0  # nothing above it
    finally:
        s.kill(wait=True)


def test_copy_mode_materialises_files_owned_by_the_user(vol: str) -> None:
    files = Volumes.files(vol)
    files.write("/data.csv", b"a,b\n1,2\n")
    files.write("/nested/deep.txt", b"deep")
    s = _sandbox(volumes=[VolumeAttachment(vol, "/data")])
    try:
        assert s.commands.run("cat /data/data.csv").stdout == "a,b\n1,2\n"
        assert s.commands.run("cat /data/nested/deep.txt").stdout == "deep"
        assert s.commands.run("stat -c %U /data /data/nested/deep.txt").stdout == "user\nuser\n"
        # a private copy: writes stay in the sandbox
        assert s.commands.run("echo mine > /data/data.csv").exit_code == 0
        assert files.read("/data.csv") == b"a,b\n1,2\n"
        # commit captures the copy into a NEW volume; the source is unchanged
        committed = Volumes.commit(s.sandbox_id, vol, name=_name("commit"))
        try:
            assert committed.name.startswith("e2e-commit")
            c = Volumes.files(committed.volume_id)
            assert c.read("/data.csv") == b"mine\n"
            assert c.read("/nested/deep.txt") == b"deep"
            assert files.read("/data.csv") == b"a,b\n1,2\n"
        finally:
            Volumes.delete(committed.volume_id)
        default = Volumes.commit(s.sandbox_id, vol)
        try:
            assert default.name == Volumes.get(vol).name + "-commit"
        finally:
            Volumes.delete(default.volume_id)
    finally:
        s.kill(wait=True)


def test_snapshot_of_a_sandbox_path(server: dict[str, str]) -> None:
    s = _sandbox()
    made: list[str] = []
    try:
        s.commands.run("mkdir -p /home/user/out/sub && echo result > /home/user/out/sub/r.txt")
        s.commands.run("ln -s /etc/shadow /home/user/out/shadow-link; mkfifo /home/user/out/p")
        snap = Volumes.snapshot(s.sandbox_id, "/home/user/out", name=_name("snap"))
        made.append(snap.volume_id)
        files = Volumes.files(snap.volume_id)
        assert files.read("/sub/r.txt") == b"result\n"
        assert sorted(e.name for e in files.list("/")) == ["sub"]  # link and fifo dropped
        single = Volumes.snapshot(s.sandbox_id, "/home/user/out/sub/r.txt")
        made.append(single.volume_id)
        assert single.name == "snapshot"
        assert Volumes.files(single.volume_id).read("/r.txt") == b"result\n"
        with pytest.raises(InvalidArgumentException, match="path"):
            Volumes.snapshot(s.sandbox_id, "/proc/self")
        with pytest.raises(NotFoundException):
            Volumes.snapshot(s.sandbox_id, "/no/such/dir")
        with pytest.raises(NotFoundException):
            Volumes.snapshot("sbx-000000000000", "/tmp")
        with pytest.raises(NotFoundException):
            Volumes.commit(s.sandbox_id, snap.volume_id)  # not attached to it
    finally:
        s.kill(wait=True)
        for vid in made:
            Volumes.delete(vid)


def test_symlinks_planted_through_a_mount_never_reach_the_host(vol: str, runtime: str) -> None:
    s = _sandbox(runtime, volumes=[VolumeAttachment(vol, "/v", mode="mount")])
    try:
        r = s.commands.run(
            "ln -s / /v/hostroot && ln -s /etc/passwd /v/passwd && mkdir /v/real"
            " && echo ok > /v/real/f"
        )
        assert r.exit_code == 0, r.stderr
        files = Volumes.files(vol)
        for path in ("/hostroot/etc/passwd", "/passwd", "/hostroot"):
            with pytest.raises(NotFoundException):
                files.read(path)
            assert not files.exists(path)
        assert sorted(e.name for e in files.list("/")) == ["real"]
        assert set(_names_in(Volumes.download(vol))) == {"real", "real/f"}
        # a subpath through the planted link is no directory of the volume
        with pytest.raises(InvalidArgumentException, match=r"volumes\[0\].subpath"):
            _sandbox(volumes=[VolumeAttachment(vol, "/x", mode="mount", subpath="hostroot/etc")])
        # inside the sandbox the links are ordinary links of its own filesystem
        assert s.commands.run("readlink /v/passwd").stdout == "/etc/passwd\n"
        assert "user:x:1000" in s.commands.run("cat /v/passwd").stdout
    finally:
        s.kill(wait=True)


# Quota (a server of its own, with a 1 MiB quota) --------------------------------------
@pytest.fixture(scope="module")
def small_quota() -> Iterator[OwnServer]:
    srv = OwnServer()
    base_env = srv.env
    srv.env = lambda **extra: base_env(DECLAWD_VOLUME_QUOTA_MB="1", **extra)  # type: ignore[method-assign]
    srv.down()
    srv.start_lab()
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


def test_quota_is_per_team_and_413_beyond(small_quota: OwnServer) -> None:
    mine: dict[str, Any] = small_quota.sdk_opts()
    for left in Volumes.list(**mine):  # its state dir outlives a run
        Volumes.delete(left.volume_id, **mine)
    a = Volumes.create(_name("q"), **mine)
    assert a.quota_bytes == 1 << 20
    files = Volumes.files(a.volume_id, **mine)
    files.write("/a", os.urandom(700_000))
    with pytest.raises(NotEnoughSpaceException):
        files.write("/b", os.urandom(400_000))
    b = Volumes.create(_name("q2"), **mine)
    with pytest.raises(NotEnoughSpaceException):
        Volumes.files(b.volume_id, **mine).write("/c", os.urandom(400_000))
    big = _targz([(_member("big"), os.urandom(500_000))])
    with pytest.raises(NotEnoughSpaceException):
        Volumes.create(_name("q3"), data=big, **mine)
    assert len(Volumes.list(**mine)) == 2  # the refused create left nothing behind
    # another team has a quota of its own
    out = subprocess.run(
        [str(Path(sys.executable).parent / "declawd"), "keys", "create", "--team", "quota-b"],
        env=small_quota.env(),
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = {**mine, "api_key": next(w for w in out.stdout.split() if w.startswith("dcw_"))}
    other = Volumes.create(_name("qb"), data=big, **theirs)
    Volumes.delete(other.volume_id, **theirs)
    # freeing space makes room again
    files.remove("/a")
    Volumes.files(b.volume_id, **mine).write("/c", os.urandom(400_000))
    for v in (a, b):
        Volumes.delete(v.volume_id, **mine)
