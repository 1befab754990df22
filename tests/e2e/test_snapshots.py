"""Snapshots through the official SDK: `snapshot`, `create_snapshot`, `list_snapshots`,
`delete_snapshot` and the `SnapshotPaginator`, on runc and runsc.

A snapshot holds the sandbox's writable layer as it was when it was taken (checked here by
extracting the blob the server wrote), outlives the sandbox, and is its team's alone.
"""

from __future__ import annotations

import hashlib
import subprocess
import tarfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from declaw import (
    ConflictException,
    ConnectionConfig,
    NotFoundException,
    Sandbox,
    Snapshot,
    SnapshotInfo,
    SnapshotPaginator,
)
from declaw.api.client import get_shared_client

from tests.e2e.conftest import STATE_DIR, new_team_key

pytestmark = pytest.mark.e2e


def _blob(snapshot_id: str) -> Path:
    return STATE_DIR / "snapshots" / snapshot_id / "fs.tar"


def _extract(snapshot_id: str, into: Path) -> Path:
    into.mkdir()
    subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "-xpf", str(_blob(snapshot_id)), "-C", str(into)],
        check=True,
    )
    return into


def test_snapshots_hold_the_files_as_they_were_and_outlive_the_sandbox(
    server: dict[str, str], runtime: str, tmp_path: Path
) -> None:
    sbx = Sandbox.create(template="base", timeout=300, metadata={"declaw.runtime": runtime})
    try:
        sbx.files.write("/home/user/notes.txt", "before the snapshot")
        made = sbx.commands.run(
            "mkdir -p /home/user/data && head -c 200000 /dev/urandom > /home/user/data/blob"
            " && sha256sum /home/user/data/blob && rm /etc/issue.net",
            user="root",
        )
        assert made.exit_code == 0, made.stderr
        digest = made.stdout.split()[0]

        snap = sbx.snapshot()
        assert isinstance(snap, Snapshot)
        assert (snap.sandbox_id, snap.source) == (sbx.sandbox_id, "manual")
        assert snap.snapshot_id.startswith("snap-") and len(snap.snapshot_id) == 17
        assert (snap.mem_blob_key, snap.vmstate_blob_key, snap.mem_size_bytes) == ("", "", None)
        assert isinstance(snap.pause_duration_ms, int) and 0 <= snap.pause_duration_ms < 30_000
        taken_at = datetime.fromisoformat(snap.created_at)
        assert taken_at.utcoffset() is not None

        sbx.files.write("/home/user/notes.txt", "after the snapshot")
        info = sbx.create_snapshot()
        assert isinstance(info, SnapshotInfo) and info.sandbox_id == sbx.sandbox_id
        assert info.created_at is not None and info.created_at >= taken_at

        # The sandbox was only frozen for the copy: it runs on, with its later write.
        assert sbx.commands.run("cat /home/user/notes.txt").stdout == "after the snapshot"
        listed = sbx.list_snapshots()
        assert [s.snapshot_id for s in listed] == [info.snapshot_id, snap.snapshot_id]
        assert all(s.source == "manual" for s in listed)
    finally:
        sbx.kill(wait=True)

    first = _extract(snap.snapshot_id, tmp_path / "first")
    assert (first / "home/user/notes.txt").read_text() == "before the snapshot"
    data = (first / "home/user/data/blob").read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest
    with tarfile.open(_blob(snap.snapshot_id)) as tar:
        whiteout = tar.getmember("./etc/issue.net")  # the deleted template file
        assert whiteout.ischr() and (whiteout.devmajor, whiteout.devminor) == (0, 0)
    second = _extract(info.snapshot_id, tmp_path / "second")
    assert (second / "home/user/notes.txt").read_text() == "after the snapshot"

    # Killed, the sandbox is gone but its snapshots are not.
    with pytest.raises(NotFoundException):
        Sandbox.connect(sbx.sandbox_id)
    assert [s.snapshot_id for s in sbx.list_snapshots()] == [info.snapshot_id, snap.snapshot_id]
    assert sbx.delete_snapshot(info.snapshot_id) is True
    assert sbx.delete_snapshot(info.snapshot_id) is True  # idempotent
    assert not _blob(info.snapshot_id).parent.exists()
    assert [s.snapshot_id for s in sbx.list_snapshots()] == [snap.snapshot_id]
    assert sbx.delete_snapshot(snap.snapshot_id) is True
    assert sbx.list_snapshots() == []


def test_the_paginator_walks_a_sandboxs_snapshots_newest_first(server: dict[str, str]) -> None:
    sbx = Sandbox.create(template="base", timeout=120)
    try:
        taken = [sbx.snapshot().snapshot_id for _ in range(3)]
    finally:
        sbx.kill(wait=True)
    client = get_shared_client(ConnectionConfig())
    pages = SnapshotPaginator(client, sandbox_id=sbx.sandbox_id, limit=2)
    seen: list[list[str]] = []
    while pages.has_next:
        seen.append([s.snapshot_id for s in pages.next_items()])
    assert seen == [taken[::-1][:2], taken[::-1][2:]]
    everyone = httpx.get(
        f"{server['url']}/snapshots", headers={"X-API-Key": server["key"]}, params={"limit": 1000}
    ).json()
    assert set(taken) <= {s["snapshot_id"] for s in everyone["snapshots"]}
    for sid in taken:
        sbx.delete_snapshot(sid)


def test_a_paused_sandbox_is_snapshotted_without_another_freeze(
    api: httpx.Client, runtime: str
) -> None:
    sbx = Sandbox.create(template="base", timeout=120, metadata={"declaw.runtime": runtime})
    try:
        sbx.files.write("/home/user/state", "paused with this")
        sbx.pause()
        snap = sbx.snapshot()
        assert snap.pause_duration_ms == 0
        assert api.get(f"/sandboxes/{sbx.sandbox_id}").json()["state"] == "paused"
        sbx.resume()
        assert sbx.commands.run("cat /home/user/state").stdout == "paused with this"
    finally:
        sbx.kill(wait=True)
    with tarfile.open(_blob(snap.snapshot_id)) as tar:
        member = tar.extractfile("./home/user/state")
        assert member is not None and member.read() == b"paused with this"
    sbx.delete_snapshot(snap.snapshot_id)


def test_snapshots_are_the_teams_own_and_need_a_live_sandbox(
    server: dict[str, str], api: httpx.Client
) -> None:
    sbx = Sandbox.create(template="base", timeout=120)
    sid = sbx.sandbox_id
    snap = sbx.snapshot()
    other = {"X-API-Key": new_team_key("snapshots-b")}
    url = server["url"]
    try:
        assert httpx.post(f"{url}/sandboxes/{sid}/snapshot", headers=other).status_code == 404
        assert httpx.get(f"{url}/sandboxes/{sid}/snapshots", headers=other).status_code == 404
        r = httpx.delete(f"{url}/sandboxes/{sid}/snapshots/{snap.snapshot_id}", headers=other)
        assert r.status_code == 404
        theirs = httpx.get(f"{url}/snapshots", headers=other, params={"sandbox_id": sid}).json()
        assert theirs == {"snapshots": [], "next_token": None}
        # A body that is not a JSON object is refused; an empty one is not.
        r = api.post(f"/sandboxes/{sid}/snapshot", content=b"[1]")
        assert (r.status_code, r.json()) == (
            400,
            {"message": "request body: must be a JSON object"},
        )
        r = api.get("/snapshots", params={"limit": 0})
        assert (r.status_code, r.json()) == (400, {"message": "limit: must be at least 1"})
        r = api.get("/snapshots", params={"next_token": "garbage"})
        assert r.status_code == 400 and "next_token" in r.json()["message"]
    finally:
        sbx.kill(wait=True)
    # The snapshot survived the other team's attempts; a killed sandbox takes no new ones.
    assert [s.snapshot_id for s in sbx.list_snapshots()] == [snap.snapshot_id]
    r = api.post(f"/sandboxes/{sid}/snapshot", json={})
    assert r.status_code == 404, r.text
    with pytest.raises(NotFoundException):
        Sandbox.connect(sid)
    sbx.delete_snapshot(snap.snapshot_id)


def _eventually(cond, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return False


def test_the_pause_snapshot_of_a_paused_sandbox_cannot_be_deleted(server: dict[str, str]) -> None:
    sbx = Sandbox.create(template="base", timeout=120)
    try:
        sbx.pause()
        assert _eventually(lambda: [s.source for s in sbx.list_snapshots()] == ["pause"], 60)
        (pause_snap,) = sbx.list_snapshots()
        assert pause_snap.pause_duration_ms == 0  # the pause froze it, not the snapshot
        with pytest.raises(ConflictException, match="pause snapshot of paused sandbox"):
            sbx.delete_snapshot(pause_snap.snapshot_id)
        sbx.resume()
        assert sbx.delete_snapshot(pause_snap.snapshot_id) is True
        assert sbx.list_snapshots() == []
    finally:
        sbx.kill(wait=True)
