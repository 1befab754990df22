"""The async SDK (`AsyncSandbox`) and team isolation between API keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from declaw import AsyncSandbox, NotFoundException, Sandbox

from tests.e2e.conftest import new_team_key

pytestmark = pytest.mark.e2e


async def test_async_sandbox_roundtrip(server: dict[str, str], runtime: str) -> None:
    s = await AsyncSandbox.create(template="base", metadata={"declaw.runtime": runtime})
    try:
        r = await s.run_command("echo async; exit 2")
        assert (r.stdout, r.exit_code) == ("async\n", 2)
        await s.write_file("/tmp/a.txt", "data")
        assert await s.read_file("/tmp/a.txt") == "data"
        names = [e.name for e in await s.list_files("/tmp")]
        assert "a.txt" in names
        h = await s.run_command("sleep 0.2; echo bg", background=True)
        assert (await h.wait()).stdout == "bg\n"
        info = await s.get_info()
        assert info.sandbox_id == s.sandbox_id
        assert await s.is_running()
    finally:
        assert await s.kill(wait=True)


def test_other_team_cannot_see_or_touch(server: dict[str, str]) -> None:
    mine = Sandbox.create(template="base")
    other_key = new_team_key("tenancy-b")
    try:
        url = server["url"]
        oh = {"X-API-Key": other_key}
        sid = mine.sandbox_id
        assert httpx.get(f"{url}/sandboxes/{sid}", headers=oh).status_code == 404
        assert (
            httpx.post(
                f"{url}/sandboxes/{sid}/commands", headers=oh, json={"cmd": "id"}
            ).status_code
            == 404
        )
        assert (
            httpx.get(
                f"{url}/sandboxes/{sid}/files", headers=oh, params={"path": "/etc/hostname"}
            ).status_code
            == 404
        )
        assert httpx.put(f"{url}/sandboxes/{sid}/network", headers=oh, json={}).status_code == 404
        assert httpx.get(f"{url}/sandboxes/{sid}/audit", headers=oh).status_code == 404
        assert httpx.delete(f"{url}/sandboxes/{sid}", headers=oh).status_code == 404
        listed = httpx.get(f"{url}/sandboxes", headers=oh).json()["sandboxes"]
        assert sid not in [s["sandbox_id"] for s in listed]
        with pytest.raises(NotFoundException):
            Sandbox.connect(sid, api_key=other_key)
        assert mine.is_running()
        # revocation takes effect at once
        from tests.e2e.conftest import _env

        subprocess.run(
            [str(Path(sys.executable).parent / "declawd"), "keys", "revoke", other_key[:12]],
            env=_env(),
            check=True,
            capture_output=True,
        )
        assert httpx.get(f"{url}/sandboxes", headers=oh).status_code == 401
    finally:
        mine.kill(wait=True)
