"""The seed scenario, exactly as `make demo` runs it, and its printed verdict."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "network-l4-enforcement" / "main.py"


def test_seed_scenario_prints_pass(server: dict[str, str]) -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DECLAW_DOMAIN": server["domain"], "DECLAW_API_KEY": server["key"]},
    )
    lines = out.stdout.splitlines()
    assert re.match(r"^l4_evil_com:       BLOCKED: ConnectionRefusedError: ", lines[0]), out.stdout
    assert re.match(r"^l4_cloudflare_dns: BLOCKED: ConnectionRefusedError: ", lines[1]), out.stdout
    assert re.match(r"^l7_evil_com:       BLOCKED: URLError: ", lines[2]), out.stdout
    assert lines[3] == "l4_allowed_openai: REACH", out.stdout
    assert lines[4:] == ["", "VERDICT  : PASS"], out.stdout
    assert out.returncode == 0
