"""Faults: an injected failure at every step of create and kill, a crash mid-create, envd killed.

Each case runs against a server of its own instance (leaks.OwnServer) restarted with
DECLAWD_FAULTS naming one step. After each: no netns, veth, nft chain or set element,
cgroup, mount, container or process is left (leaks.snapshot equals the baseline), and the
store agrees with reality (the failed sandbox is not listed; GET answers 404).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading

import httpx
import pytest
from declaw import Sandbox
from declaw.exceptions import NotFoundError

from tests.e2e.leaks import OwnServer, eventually, wait_settled

pytestmark = pytest.mark.e2e

CREATE_STEPS = [
    "after_record",
    "after_slot",
    "after_network",
    "after_gateway",
    "after_rootfs",
    "after_container",
    "after_envd",
    "after_start",
]
KILL_STEPS = ["before_runtime", "after_runtime", "after_gateway", "after_network"]
RUNSC_CREATE_STEPS = ["after_container", "after_envd"]


@pytest.fixture
def baseline(own: OwnServer) -> dict[str, int]:
    # Every case starts from a server without faults and without sandboxes.
    if own.proc is None or own.proc.poll() is not None:
        own.start()
    assert own.listed_ids() == set()
    return own.baseline()


def _latest_sandbox(own: OwnServer) -> tuple[str, str]:
    sandbox_id, state, _, _ = _latest_row(own)
    return sandbox_id, state


def _latest_row(own: OwnServer) -> tuple[str, str, bool, str | None]:
    """(id, state, released, error) of the newest sandbox record."""
    with contextlib.closing(sqlite3.connect(own.settings.db_path)) as db:
        row = db.execute(
            "SELECT sandbox_id, state, released, error FROM sandboxes"
            " ORDER BY created_at DESC LIMIT 1"
        ).fetchone()
    assert row is not None
    return str(row[0]), str(row[1]), bool(row[2]), row[3]


def _create_body(runtime: str) -> dict[str, object]:
    return {
        "template": "base",
        "timeout": 120,
        "metadata": {"declaw.runtime": runtime},
        "network": {"allow_out": ["api.openai.com"], "deny_out": ["0.0.0.0/0"]},
    }


def _assert_clean(own: OwnServer, baseline: dict[str, int], sandbox_id: str) -> None:
    after = wait_settled(own.settings, baseline, None)
    assert after == baseline
    assert sandbox_id not in own.listed_ids()
    with own.http() as h:
        assert h.get(f"/sandboxes/{sandbox_id}").status_code == 404


@pytest.mark.parametrize(
    ("runtime", "step"),
    [("runc", s) for s in CREATE_STEPS] + [("runsc", s) for s in RUNSC_CREATE_STEPS],
)
def test_failure_at_each_create_step_leaves_nothing(
    own: OwnServer, baseline: dict[str, int], runtime: str, step: str
) -> None:
    own.restart(faults=f"create.{step}")
    try:
        with own.http() as h:
            r = h.post("/sandboxes", json=_create_body(runtime))
        assert r.status_code == 500, r.text
        assert f"injected fault at create.{step}" in r.json()["message"]
        sandbox_id, state, released, error = _latest_row(own)
        # A failed create ends killed with its error, and released once its undo removed all.
        assert (state, released) == ("killed", True)
        assert error is not None and f"injected fault at create.{step}" in error
        _assert_clean(own, baseline, sandbox_id)
    finally:
        own.restart()
    # and a create works again on the same server
    with own.http() as h:
        r = h.post("/sandboxes", json=_create_body(runtime))
        assert r.status_code == 201, r.text
        assert h.delete(f"/sandboxes/{r.json()['sandbox_id']}").status_code == 200
    assert wait_settled(own.settings, baseline, None) == baseline


@pytest.mark.parametrize("step", KILL_STEPS)
def test_failure_at_each_kill_step_is_recorded_and_swept(
    own: OwnServer, baseline: dict[str, int], step: str
) -> None:
    own.restart(faults=f"kill.{step}")
    with own.http() as h:
        r = h.post("/sandboxes", json=_create_body("runc"))
        assert r.status_code == 201, r.text
        sandbox_id = r.json()["sandbox_id"]
        # The kill is accepted whatever its teardown meets: the sandbox is gone for users...
        r = h.delete(f"/sandboxes/{sandbox_id}")
        assert r.status_code == 200 and r.json() == {"killed": True}, r.text
        assert h.get(f"/sandboxes/{sandbox_id}").status_code == 404
    assert sandbox_id not in own.listed_ids()
    # ...and the teardown failure is recorded, not swallowed: left for the sweep.
    sid, state, released, error = _latest_row(own)
    assert (sid, state, released) == (sandbox_id, "killed", False)
    assert error is not None and f"injected fault at kill.{step}" in error
    # The startup sweep (no faults now) finishes the teardown.
    own.restart()
    assert _latest_row(own)[:3] == (sandbox_id, "killed", True)
    _assert_clean(own, baseline, sandbox_id)


@pytest.mark.parametrize("step", ["after_network", "after_container"])
def test_crash_mid_create_is_swept_at_startup(
    own: OwnServer, baseline: dict[str, int], step: str
) -> None:
    own.restart(faults=f"create.{step}:sleep")
    outcome: list[object] = []

    def create() -> None:
        try:
            with own.http(timeout=300) as h:
                outcome.append(h.post("/sandboxes", json=_create_body("runc")).status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    t = threading.Thread(target=create, daemon=True)
    t.start()
    assert own.wait_log(f"declawd fault point create.{step}: sleeping")
    sandbox_id, state = _latest_sandbox(own)
    assert state == "creating"
    assert own.snapshot() != baseline  # the half-made sandbox holds resources now
    own.kill9()
    t.join(60)
    assert outcome and isinstance(outcome[0], httpx.HTTPError)
    own.start()
    _assert_clean(own, baseline, sandbox_id)
    sid, state, released, error = _latest_row(own)
    assert (sid, state, released, error) == (
        sandbox_id,
        "killed",
        True,
        "lost during a server restart",
    )


def _host_kill_envd(own: OwnServer, sandbox_id: str, runtime: str) -> None:
    import subprocess

    root = own.settings.run_dir / runtime
    if runtime == "runc":
        out = subprocess.run(
            ["runc", "--root", str(root), "state", sandbox_id],
            capture_output=True,
            check=True,
            text=True,
        ).stdout
        import os
        import signal

        os.kill(int(json.loads(out)["pid"]), signal.SIGKILL)
    else:
        import asyncio

        from declawd.runtime import OciRuntime

        rt = OciRuntime("runsc", root)
        done = asyncio.run(rt._exec("kill", sandbox_id, "KILL", container_id=sandbox_id))
        assert done.ok, done.stderr


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
def test_envd_killed_sandbox_reports_failure_and_kill_cleans(
    own: OwnServer, baseline: dict[str, int], runtime: str
) -> None:
    opts = own.sdk_opts()
    s = Sandbox.create(template="base", timeout=120, metadata={"declaw.runtime": runtime}, **opts)
    try:
        assert s.commands.run("echo up").stdout == "up\n"
        _host_kill_envd(own, s.sandbox_id, runtime)
        assert eventually(lambda: s.is_running() is False, 60)
        with own.http(timeout=60) as h:
            r = h.post(f"/sandboxes/{s.sandbox_id}/commands", json={"cmd": "echo hi"})
        assert 400 <= r.status_code < 600 and r.status_code != 200, r.text
        print(f"\n[{runtime}] command on a sandbox whose envd died: {r.status_code} {r.text}")
        assert r.json()["message"]
    finally:
        # The node may already have noticed the dead container and removed it (404).
        with contextlib.suppress(NotFoundError):
            s.kill()
    _assert_clean(own, baseline, s.sandbox_id)
