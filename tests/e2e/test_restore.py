"""Restore through the official SDK: a killed sandbox comes back under its own id.

`Sandbox.restore(id, snapshot_id=None)` posts `/sandboxes/{id}/restore` and then connects to
the same id. The restored sandbox has the snapshot's template, policy, envs and metadata and
its files exactly as captured (checked by hash); a running sandbox cannot be restored.
"""

from __future__ import annotations

import json

import httpx
import pytest
from declaw import (
    ALL_TRAFFIC,
    ConflictException,
    NetworkPolicy,
    NotFoundException,
    Sandbox,
    SandboxState,
    SecurityPolicy,
)

from tests.e2e.conftest import new_team_key
from tests.e2e.leaks import eventually
from tests.e2e.probes import EGRESS_PROBE

pytestmark = pytest.mark.e2e

MAKE_FILES = (
    "mkdir -p /home/user/work/sub && cd /home/user/work"
    " && head -c 3000000 /dev/urandom > blob.bin && echo hello > sub/a.txt"
    " && ln -s sub/a.txt link && chmod 640 sub/a.txt && truncate -s 50M sparse.img"
    " && rm -f /etc/motd"  # a deletion of a template file is captured too (a whiteout)
    " && echo in-tmp > /tmp/t"
)
HASHES = (
    "cd /home/user/work && sha256sum blob.bin sub/a.txt sparse.img && stat -c '%a %U %N' sub/a.txt link"
    " && (test -e /etc/motd && echo motd-present || echo motd-gone)"
    " && sha256sum /tmp/t && stat -c '%a' /tmp"
)


def test_restore_brings_a_killed_sandbox_back_under_its_id(api: httpx.Client, runtime: str) -> None:
    policy = SecurityPolicy(
        network=NetworkPolicy(allow_out=["api.openai.com"], deny_out=[ALL_TRAFFIC])
    )
    sbx = Sandbox.create(
        template="python",
        timeout=120,
        metadata={"declaw.runtime": runtime, "suite": "restore"},
        envs={"MY_VAR": "kept"},
        security=policy,
    )
    sandbox_id = sbx.sandbox_id
    try:
        sbx.commands.run(MAKE_FILES, user="root")
        before = sbx.commands.run(HASHES, user="root").stdout
        assert "motd-gone" in before
        snap = sbx.snapshot()
        assert snap.sandbox_id == sandbox_id and snap.source == "manual"
        # A running sandbox cannot be restored over.
        with pytest.raises(ConflictException):
            Sandbox.restore(sandbox_id)
        sbx.commands.run("echo changed-after-snapshot > /home/user/work/sub/a.txt")
    finally:
        sbx.kill(wait=True)
    with pytest.raises(NotFoundException):
        Sandbox.connect(sandbox_id)

    back = Sandbox.restore(sandbox_id)
    try:
        assert back.sandbox_id == sandbox_id
        info = back.get_info()
        assert info.state == SandboxState.RUNNING and info.metadata["suite"] == "restore"
        assert back.commands.run(HASHES, user="root").stdout == before
        assert back.commands.run("echo $MY_VAR $DECLAW_SANDBOX_ID").stdout.split() == [
            "kept",
            sandbox_id,
        ]
        rec = api.get(f"/sandboxes/{sandbox_id}").json()
        assert rec["network"] == {"allow_out": ["api.openai.com"], "deny_out": ["0.0.0.0/0"]}
        assert rec["security"] == json.loads(json.dumps(policy.to_dict()))
        assert rec["runtime"] == runtime
        # The policy is enforced again, not only recorded.
        back.files.write("/tmp/probe.py", EGRESS_PROBE)
        got = back.commands.run("python3 /tmp/probe.py").stdout.split("\n")
        assert got[:2] == ["api.openai.com REACH", "evil.com ConnectionRefusedError"]
    finally:
        back.kill(wait=True)


def test_restore_picks_the_given_or_the_latest_snapshot(api: httpx.Client) -> None:
    sbx = Sandbox.create(template="base", timeout=120)
    sandbox_id = sbx.sandbox_id
    try:
        sbx.commands.run("echo one > /tmp/v")
        first = sbx.snapshot()
        sbx.commands.run("echo two > /tmp/v")
        sbx.snapshot()
        sbx.pause()  # a pause snapshot is preferred over manual ones
        assert eventually(lambda: any(s.source == "pause" for s in sbx.list_snapshots()), 60), (
            sbx.list_snapshots()
        )
    finally:
        sbx.kill(wait=True)
    back = Sandbox.restore(sandbox_id)
    try:
        assert back.files.read("/tmp/v") == "two\n"
    finally:
        back.kill(wait=True)
    back = Sandbox.restore(sandbox_id, snapshot_id=first.snapshot_id)
    try:
        assert back.files.read("/tmp/v") == "one\n"
    finally:
        back.kill(wait=True)


def test_restore_refuses_what_it_cannot_do(api: httpx.Client) -> None:
    sbx = Sandbox.create(template="base", timeout=60)
    sandbox_id = sbx.sandbox_id
    sbx.kill(wait=True)
    # No snapshot: 404 naming the sandbox; an unknown snapshot id: 404 naming it.
    r = api.post(f"/sandboxes/{sandbox_id}/restore")
    assert r.status_code == 404
    assert r.json()["message"] == f"sandbox '{sandbox_id}' has no snapshot to restore"
    r = api.post(f"/sandboxes/{sandbox_id}/restore", params={"snapshot_id": "snap-000000000000"})
    assert r.status_code == 404 and "snap-000000000000" in r.json()["message"]
    assert api.post("/sandboxes/sbx-000000000000/restore").status_code == 404


def test_another_teams_snapshot_cannot_be_restored(
    api: httpx.Client, server: dict[str, str]
) -> None:
    sbx = Sandbox.create(template="base", timeout=60)
    sandbox_id = sbx.sandbox_id
    snap = sbx.snapshot()
    sbx.kill(wait=True)
    other = {"X-API-Key": new_team_key("restore-b")}
    with httpx.Client(base_url=server["url"], headers=other, timeout=60) as h:
        # Neither the sandbox nor its snapshot exists for another team.
        r = h.post(f"/sandboxes/{sandbox_id}/restore", params={"snapshot_id": snap.snapshot_id})
        assert r.status_code == 404, r.text
        assert h.post(f"/sandboxes/{sandbox_id}/restore").status_code == 404
    # A snapshot of another sandbox (even the team's own) does not restore this one.
    mine = Sandbox.create(template="base", timeout=60)
    try:
        mine.kill(wait=True)
        r = api.post(
            f"/sandboxes/{mine.sandbox_id}/restore", params={"snapshot_id": snap.snapshot_id}
        )
        assert r.status_code == 404
    finally:
        api.delete(f"/sandboxes/{mine.sandbox_id}")
