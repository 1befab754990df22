"""Crashes during pause, resume, snapshot and restore: after a restart the store agrees with
the host and nothing is half-made.

Each case restarts a server of its own (leaks.OwnServer) with one `name:sleep` fault point,
which blocks the server's event loop at that step; the test then kill -9s it, starts it
clean, and checks the sandbox's record against its container, the snapshot records against
their blobs, and the host's resources against the baseline once everything is killed.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import threading
from typing import Any

import httpx
import pytest

from tests.e2e.leaks import OwnServer, wait_settled

pytestmark = pytest.mark.e2e


@pytest.fixture
def baseline(own: OwnServer) -> dict[str, int]:
    if own.proc is None or own.proc.poll() is not None:
        own.start()
    assert own.listed_ids() == set()
    return own.baseline()


def _create(own: OwnServer) -> str:
    with own.http() as h:
        r = h.post("/sandboxes", json={"template": "base", "timeout": 300})
        assert r.status_code == 201, r.text
        sandbox_id = str(r.json()["sandbox_id"])
        r = h.post(f"/sandboxes/{sandbox_id}/commands", json={"cmd": "echo data > /home/user/f"})
        assert r.status_code == 200, r.text
    return sandbox_id


def _crash_during(own: OwnServer, fault: str, method: str, path: str, **kw: Any) -> None:
    """Restart with `fault:sleep`, make the call, kill -9 the server inside it, start clean."""
    own.restart(faults=f"{fault}:sleep")
    outcome: list[object] = []

    def call() -> None:
        try:
            with own.http(timeout=300) as h:
                outcome.append(h.request(method, path, **kw).status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    assert own.wait_log(f"declawd fault point {fault}: sleeping"), own.log_tail()
    own.kill9()
    t.join(60)
    assert outcome and isinstance(outcome[0], httpx.HTTPError), outcome
    own.start()


def _container_state(own: OwnServer, sandbox_id: str) -> str | None:
    out = subprocess.run(
        ["runc", "--root", str(own.settings.run_dir / "runc"), "state", sandbox_id],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return None
    import json

    return str(json.loads(out.stdout)["status"])


def _db(own: OwnServer, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(own.settings.db_path)) as db:
        return list(db.execute(sql, args).fetchall())


def _assert_agrees_and_usable(own: OwnServer, sandbox_id: str) -> None:
    """The record and the container agree, the sandbox works, and a kill cleans it up."""
    with own.http() as h:
        state = h.get(f"/sandboxes/{sandbox_id}/status").json()["state"]
        assert state in ("running", "paused")
        assert _container_state(own, sandbox_id) == state
        if state == "paused":
            assert h.post(f"/sandboxes/{sandbox_id}/resume").status_code == 200
        r = h.post(f"/sandboxes/{sandbox_id}/commands", json={"cmd": "cat /home/user/f"})
        assert r.status_code == 200 and r.json()["stdout"] == "data\n", r.text
        assert h.delete(f"/sandboxes/{sandbox_id}").status_code == 200


@pytest.mark.parametrize(
    "fault",
    ["pause.before_freeze", "pause.after_freeze", "resume.before_thaw", "resume.after_thaw"],
)
def test_crash_during_pause_or_resume(own: OwnServer, baseline: dict[str, int], fault: str) -> None:
    sandbox_id = _create(own)
    if fault.startswith("resume."):
        with own.http() as h:
            assert h.post(f"/sandboxes/{sandbox_id}/pause").status_code == 200
    verb = fault.split(".")[0]
    _crash_during(own, fault, "POST", f"/sandboxes/{sandbox_id}/{verb}")
    _assert_agrees_and_usable(own, sandbox_id)
    assert wait_settled(own.settings, baseline, None) == baseline


@pytest.mark.parametrize(
    "fault", ["snapshot.before_archive", "snapshot.before_publish", "snapshot.before_ready"]
)
def test_crash_during_a_snapshot(own: OwnServer, baseline: dict[str, int], fault: str) -> None:
    sandbox_id = _create(own)
    _crash_during(own, fault, "POST", f"/sandboxes/{sandbox_id}/snapshot", json={})
    # The sandbox was frozen for the copy: it is running (thawed) again, and usable.
    with own.http() as h:
        snaps = h.get(f"/sandboxes/{sandbox_id}/snapshots").json()["snapshots"]
    # No half-made snapshot is listed, and no snapshot record is left `writing`.
    assert _db(own, "SELECT count(*) FROM snapshots WHERE state = 'writing'") == [(0,)]
    ready = {s for (s,) in _db(own, "SELECT snapshot_id FROM snapshots WHERE state = 'ready'")}
    assert {s["snapshot_id"] for s in snaps} <= ready
    blobs = own.settings.snapshots_dir
    on_disk = {p.name for p in blobs.iterdir()} if blobs.exists() else set()
    assert on_disk <= ready, on_disk - ready
    _assert_agrees_and_usable(own, sandbox_id)
    assert wait_settled(own.settings, baseline, None) == baseline


@pytest.mark.parametrize(
    "fault", ["restore.before_create", "create.after_network", "create.after_container"]
)
def test_crash_during_a_restore(own: OwnServer, baseline: dict[str, int], fault: str) -> None:
    sandbox_id = _create(own)
    with own.http() as h:
        assert h.post(f"/sandboxes/{sandbox_id}/snapshot", json={}).status_code == 201
        assert h.delete(f"/sandboxes/{sandbox_id}").status_code == 200
    assert wait_settled(own.settings, baseline, None) == baseline
    _crash_during(own, fault, "POST", f"/sandboxes/{sandbox_id}/restore")
    # The half-made restore was swept: killed, released, not listed, nothing held.
    assert sandbox_id not in own.listed_ids()
    assert _db(own, "SELECT state, released FROM sandboxes WHERE sandbox_id = ?", sandbox_id) == [
        ("killed", 1)
    ]
    assert wait_settled(own.settings, baseline, None) == baseline
    # ... and the same restore works now.
    with own.http() as h:
        assert h.post(f"/sandboxes/{sandbox_id}/restore").status_code == 200
    _assert_agrees_and_usable(own, sandbox_id)
    assert wait_settled(own.settings, baseline, None) == baseline


def test_a_paused_sandbox_survives_a_server_restart(
    own: OwnServer, baseline: dict[str, int]
) -> None:
    sandbox_id = _create(own)
    with own.http() as h:
        r = h.post(
            f"/sandboxes/{sandbox_id}/commands",
            json={"cmd": "sleep 3600", "background": True},
        )
        pid = r.json()["pid"]
        assert h.post(f"/sandboxes/{sandbox_id}/pause").status_code == 200
    own.kill9()
    own.start()
    with own.http() as h:
        assert h.get(f"/sandboxes/{sandbox_id}/status").json()["state"] == "paused"
        assert _container_state(own, sandbox_id) == "paused"
        assert h.post(f"/sandboxes/{sandbox_id}/resume").status_code == 200
        listed = h.get(f"/sandboxes/{sandbox_id}/commands").json()
        assert pid in [p["pid"] for p in listed]  # the same process, thawed
    _assert_agrees_and_usable(own, sandbox_id)
    assert wait_settled(own.settings, baseline, None) == baseline
