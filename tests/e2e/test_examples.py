"""The cookbook examples, run as a user would (a subprocess with DECLAW_DOMAIN/DECLAW_API_KEY)
against the test server: each must exit 0 and print its computed `VERDICT  : PASS`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.e2e.conftest import REPO

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    "example",
    ["network-l4-enforcement", "network-domain-allowlist", "network-metadata-blocking"],
)
def test_example_prints_pass(server: dict[str, str], example: str) -> None:
    env = dict(os.environ, DECLAW_DOMAIN=server["domain"], DECLAW_API_KEY=server["key"])
    r = subprocess.run(
        [sys.executable, str(REPO / "examples" / example / "main.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().splitlines()[-1] == "VERDICT  : PASS", r.stdout
    assert "BLOCKED" in r.stdout and "REACH" in r.stdout  # both sides were probed


@pytest.mark.parametrize("example", ["mcp-server-in-sandbox", "web-app-in-sandbox"])
def test_ports_example_prints_pass(server: dict[str, str], example: str) -> None:
    """The ports cookbook: a server in the sandbox, reached from the host (docs/ports.md)."""
    env = dict(os.environ, DECLAW_DOMAIN=server["domain"], DECLAW_API_KEY=server["key"])
    r = subprocess.run(
        [sys.executable, str(REPO / "examples" / example / "main.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().splitlines()[-1] == "VERDICT  : PASS", r.stdout
