"""The sandbox lifecycle as a user sees it: a kill is final at once, the record is complete,
and code inside knows it runs in a sandbox.

Each of these failed before the lifecycle model (issue 8): after `kill()` returned, `GET`
answered 200 `running` for about a second; sandboxes had no `DECLAW_*` variables; the record
had no `timeout`, `envs` or security policy.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest
from declaw import (
    ALL_TRAFFIC,
    NetworkPolicy,
    NotFoundException,
    Sandbox,
    SandboxQuery,
    SandboxState,
    SecurityPolicy,
)
from declaw.security.env import EnvSecurityConfig

from tests.e2e.conftest import STATE_DIR

pytestmark = pytest.mark.e2e


def _listed(sandbox_id: str) -> bool:
    page = Sandbox.list(query=SandboxQuery(state=[SandboxState.RUNNING, SandboxState.PAUSED]))
    return sandbox_id in {s["sandbox_id"] for s in page["sandboxes"]}


@pytest.mark.parametrize("wait", [False, True], ids=["kill-async", "kill-wait"])
def test_killed_sandbox_is_gone_the_moment_kill_returns(
    api: httpx.Client, runtime: str, wait: bool
) -> None:
    sbx = Sandbox.create(template="base", timeout=120, metadata={"declaw.runtime": runtime})
    assert _listed(sbx.sandbox_id)
    assert sbx.kill(wait=wait) is True
    # No sleep: every view agrees immediately, also while teardown runs in the background.
    r = api.get(f"/sandboxes/{sbx.sandbox_id}")
    assert r.status_code == 404, r.text
    assert r.json() == {"message": f"sandbox '{sbx.sandbox_id}' not found"}
    with pytest.raises(NotFoundException):
        Sandbox.connect(sbx.sandbox_id)
    status = api.get(f"/sandboxes/{sbx.sandbox_id}/status").json()
    assert status == {"is_running": False, "state": "killed"}
    assert not _listed(sbx.sandbox_id)
    r = api.post(f"/sandboxes/{sbx.sandbox_id}/commands", json={"cmd": "true"})
    assert r.status_code == 404
    # A second kill finds nothing to kill.
    assert api.delete(f"/sandboxes/{sbx.sandbox_id}").status_code == 404


def test_code_inside_knows_it_runs_in_a_sandbox(runtime: str) -> None:
    sbx = Sandbox.create(
        template="python",
        timeout=120,
        metadata={"declaw.runtime": runtime},
        # The platform's own variables cannot be overridden by a request.
        envs={"DECLAW_SANDBOX": "false", "DECLAW_SANDBOX_ID": "spoofed", "MINE": "1"},
    )
    try:
        info = sbx.get_info()
        out = sbx.commands.run(
            "echo $DECLAW_SANDBOX $DECLAW_SANDBOX_ID $DECLAW_TEMPLATE_ID $MINE"
        ).stdout.split()
        assert out == ["true", sbx.sandbox_id, info.template_id, "1"]
        # ...in every process, not only in commands: background, PTY-less scripts too.
        py = sbx.commands.run(
            "python3 -c 'import os; print(os.environ[\"DECLAW_SANDBOX_ID\"])'"
        ).stdout.strip()
        assert py == sbx.sandbox_id
        # envd's own runtime setting (one Go P) stays envd's: commands get a fresh env.
        if runtime == "runc":  # envd is the container's init, seen from the host
            envd_pid = _runc_init_pid(sbx.sandbox_id)
            assert b"GOMAXPROCS=1" in Path(f"/proc/{envd_pid}/environ").read_bytes().split(b"\0")
        assert "GOMAXPROCS" not in sbx.commands.run("env").stdout
    finally:
        sbx.kill(wait=True)


def _runc_init_pid(sandbox_id: str) -> int:
    root = str(STATE_DIR / "run" / "runc")
    state = subprocess.run(
        ["runc", "--root", root, "state", sandbox_id], capture_output=True, check=True, timeout=30
    )
    return int(json.loads(state.stdout)["pid"])


def test_record_carries_timeout_masked_envs_and_security(api: httpx.Client) -> None:
    policy = SecurityPolicy(
        network=NetworkPolicy(allow_out=["api.openai.com"], deny_out=[ALL_TRAFFIC]),
    )
    sbx = Sandbox.create(
        template="base",
        timeout=97,
        envs={"OPENAI_API_KEY": "sk-live-123", "DB_PASSWORD": "hunter2", "REGION": "eu"},
        security=policy,
    )
    try:
        for rec in (api.get(f"/sandboxes/{sbx.sandbox_id}").json(), _listed_record(api, sbx)):
            assert rec["timeout"] == 97
            # The SDK's default mask patterns (*_KEY, *_PASSWORD, ...) apply.
            assert rec["envs"] == {"OPENAI_API_KEY": "***", "DB_PASSWORD": "***", "REGION": "eu"}
            assert rec["security"] == json.loads(json.dumps(policy.to_dict()))
            assert rec["network"] == {"allow_out": ["api.openai.com"], "deny_out": ["0.0.0.0/0"]}
            assert rec["state"] == "running"
        # The values themselves are in the sandbox, unmasked.
        assert sbx.commands.run("echo $OPENAI_API_KEY").stdout == "sk-live-123\n"
    finally:
        sbx.kill(wait=True)


def test_record_masks_with_the_sandboxes_own_patterns(api: httpx.Client) -> None:
    policy = SecurityPolicy(env_security=EnvSecurityConfig(mask_patterns=["REGION*"]))
    sbx = Sandbox.create(
        template="base", timeout=60, envs={"REGION_NAME": "eu", "OPENAI_API_KEY": "k"},
        security=policy,
    )  # fmt: skip
    try:
        rec = api.get(f"/sandboxes/{sbx.sandbox_id}").json()
        assert rec["envs"] == {"REGION_NAME": "***", "OPENAI_API_KEY": "k"}
    finally:
        sbx.kill(wait=True)


def _listed_record(api: httpx.Client, sbx: Sandbox) -> dict[str, object]:
    for rec in api.get("/sandboxes").json()["sandboxes"]:
        if rec["sandbox_id"] == sbx.sandbox_id:
            return dict(rec)
    raise AssertionError(f"{sbx.sandbox_id} not listed")
