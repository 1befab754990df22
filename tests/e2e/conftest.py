"""End-to-end harness: a real lab, a real server (lab mode) and the official Declaw SDK.

One lab and one server per test session, on their own instance name, port and state
directory, sharing the template layers that `make templates` built. Teardown stops both and
runs `declawd down`, so no namespace, nft table, mount, cgroup or process is left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
INSTANCE = os.environ.get("DECLAWD_TEST_INSTANCE", "dcwtest")
PORT = int(os.environ.get("DECLAWD_TEST_PORT", "18080"))
STATE_DIR = Path(os.environ.get("DECLAWD_TEST_STATE_DIR", "/var/lib/declawd-test"))
TEMPLATES_DIR = Path(os.environ.get("DECLAWD_STATE_DIR", "/var/lib/declawd")) / "templates"
RUNTIMES = ["runc", "runsc"]
LAB_JUDGE_URL = "http://203.0.113.90/v1/chat/completions"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DECLAWD_INSTANCE=INSTANCE,
        DECLAWD_STATE_DIR=str(STATE_DIR),
        DECLAWD_TEMPLATES_DIR=str(TEMPLATES_DIR),
        DECLAWD_POOL=os.environ.get("DECLAWD_TEST_POOL", "10.78.0.0/16"),
        # The lab's injection judge (judge.lab), by address: the gateway resolves no names.
        DECLAWD_INJECTION_JUDGE_URL=LAB_JUDGE_URL,
        # Test servers run without warm pools unless a test is about them (test_pools.py).
        DECLAWD_WARM_POOL=os.environ.get("DECLAWD_TEST_WARM_POOL", "off"),
    )
    return env


def new_team_key(team: str) -> str:
    """An API key of another team (created with `declawd keys create`), for tenancy tests."""
    out = subprocess.run(
        [str(BIN / "declawd"), "keys", "create", "--team", team],
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return next(w for w in out.stdout.split() if w.startswith("dcw_"))


def _down() -> None:
    subprocess.run([str(BIN / "declawd"), "down"], env=_env(), capture_output=True, timeout=120)


def _stop_stale(pattern: str) -> None:
    if subprocess.run(["pkill", "-f", pattern], capture_output=True).returncode == 0:
        _wait_for(
            lambda: subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode,
            30,
        )


@pytest.fixture(scope="session")
def lab() -> Iterator[Path]:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    # A server or lab of an earlier run killed without its fixtures' cleanup would answer in
    # place of ours, with older code: stop them first (this instance's only).
    _stop_stale(f"declawd server --lab --port {PORT}$")
    subprocess.run([str(BIN / "declawd"), "lab", "down"], env=_env(), capture_output=True)
    log = open(STATE_DIR / "lab.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(BIN / "declawd"), "lab", "serve"],
        env=_env(),
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        _wait_for(lambda: (STATE_DIR / "lab" / "ready").exists() or proc.poll() is not None, 60)
        if proc.poll() is not None:
            pytest.fail(f"lab exited: {(STATE_DIR / 'lab.log').read_text()[-2000:]}")
        yield STATE_DIR
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def server(lab: Path) -> Iterator[dict[str, str]]:
    _down()
    shutil.rmtree(STATE_DIR / "sandboxes", ignore_errors=True)
    log = open(STATE_DIR / "server.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(BIN / "declawd"), "server", "--lab", "--port", str(PORT)],
        env=_env(),
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{PORT}"
    try:
        _wait_for(lambda: _healthy(url) or proc.poll() is not None, 180)
        if proc.poll() is not None:
            pytest.fail(f"server exited: {(STATE_DIR / 'server.log').read_text()[-3000:]}")
        key = (STATE_DIR / "keys" / "dev-api-key").read_text().strip()
        os.environ["DECLAW_DOMAIN"] = f"localhost:{PORT}"
        os.environ["DECLAW_API_KEY"] = key
        yield {"url": url, "key": key, "domain": f"localhost:{PORT}"}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        _down()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_for(cond, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)


@pytest.fixture(scope="module")
def api(server: dict[str, str]) -> Iterator[httpx.Client]:
    """Raw HTTP to the session server with the dev key (for what the SDK does not expose)."""
    with httpx.Client(
        base_url=server["url"], headers={"X-API-Key": server["key"]}, timeout=120
    ) as c:
        yield c


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def own() -> Iterator[object]:
    """A lab + server of a module's own (tests may kill -9 and restart it); see leaks.OwnServer."""
    from tests.e2e.leaks import OwnServer  # leaks imports this module

    srv = OwnServer()
    srv.down()
    srv.start_lab()
    try:
        srv.start()
        yield srv
    finally:
        srv.close()
