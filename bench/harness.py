"""One lab and one lab-mode server for the benchmarks (modelled on tests/e2e/conftest.py).

`running()` starts `declawd lab serve` and `declawd server --lab` on the benchmark instance
(own instance name, port, state dir and address pool; template layers shared read-only),
points the official SDK at it through DECLAW_DOMAIN / DECLAW_API_KEY, and on exit stops both
and runs `declawd down`, so no namespace, nft table, mount, cgroup or process is left.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
INSTANCE = os.environ.get("DECLAWD_BENCH_INSTANCE", "dcwbench")
PORT = int(os.environ.get("DECLAWD_BENCH_PORT", "18180"))
STATE_DIR = Path(os.environ.get("DECLAWD_BENCH_STATE_DIR", "/var/lib/declawd-bench"))
POOL = os.environ.get("DECLAWD_BENCH_POOL", "10.81.0.0/16")
WARM_POOL = os.environ.get("DECLAWD_BENCH_WARM_POOL", "python=3")
TEMPLATES_DIR = Path(
    os.environ.get("DECLAWD_TEMPLATES_DIR", "/var/lib/declawd/templates")
)  # built by `make templates`; only read here
_CREATED = re.compile(r"created (sbx-[0-9a-f]+) in (\d+) ms(?: \((warm|cold))?")


@dataclass(frozen=True)
class Server:
    url: str
    key: str
    domain: str
    state_dir: Path
    instance: str

    @property
    def log_path(self) -> Path:
        return self.state_dir / "server.log"

    @property
    def gateway_netns(self) -> str:
        return f"{self.instance}-gw"

    def envd_socket(self, sandbox_id: str) -> Path:
        return self.state_dir / "sandboxes" / sandbox_id / "disk" / "envd" / "envd.sock"

    def cgroup(self, sandbox_id: str) -> str:
        return f"/{self.instance}/{sandbox_id}"

    def server_create_ms(self) -> dict[str, float]:
        """The server's own 'created <id> in N ms' figures, by sandbox id."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return {}
        return {m.group(1): float(m.group(2)) for m in _CREATED.finditer(text)}

    def server_starts(self) -> dict[str, str]:
        """Whether each create was warm (a warm pool's sandbox) or cold, by sandbox id."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return {}
        return {m.group(1): m.group(3) or "cold" for m in _CREATED.finditer(text)}


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.update(
        DECLAWD_INSTANCE=INSTANCE,
        DECLAWD_STATE_DIR=str(STATE_DIR),
        DECLAWD_TEMPLATES_DIR=str(TEMPLATES_DIR),
        DECLAWD_POOL=POOL,
        # A warm pool of python sandboxes (bench_create's warm rows); the cold rows use base.
        DECLAWD_WARM_POOL=WARM_POOL,
    )
    return out


def down() -> None:
    subprocess.run([str(BIN / "declawd"), "down"], env=env(), capture_output=True, timeout=180)
    # `declawd down` leaves the instance's empty parent cgroup (/<instance>) behind.
    from declawd.runtime.cgroups import cgroup_dirs

    for directory in cgroup_dirs(f"/{INSTANCE}"):
        for child in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if child.is_dir():
                with contextlib.suppress(OSError):
                    child.rmdir()
        with contextlib.suppress(OSError):
            directory.rmdir()  # fails (and is left alone) if anything still runs in it


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _wait_for(cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not cond():
        time.sleep(0.1)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def _process(args: list[str], log_name: str) -> Iterator[subprocess.Popen[bytes]]:
    with open(STATE_DIR / log_name, "wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "declawd"), *args],
            env=env(),
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            _stop(proc, 20)


def _fail(proc: subprocess.Popen[bytes], what: str, log_name: str) -> None:
    tail = (STATE_DIR / log_name).read_text(errors="replace")[-3000:]
    raise RuntimeError(f"{what} did not start (exit {proc.poll()}):\n{tail}")


@contextlib.contextmanager
def running() -> Iterator[Server]:
    """Lab + server for the benchmark instance; everything is gone again on exit."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    down()  # leftovers of an interrupted earlier run
    shutil.rmtree(STATE_DIR / "sandboxes", ignore_errors=True)
    try:
        with _process(["lab", "serve"], "lab.log") as lab:
            ready = STATE_DIR / "lab" / "ready"
            _wait_for(lambda: ready.exists() or lab.poll() is not None, 60)
            if lab.poll() is not None or not ready.exists():
                _fail(lab, "lab", "lab.log")
            args = ["server", "--lab", "--port", str(PORT)]
            with _process(args, "server.log") as server:
                url = f"http://127.0.0.1:{PORT}"
                _wait_for(lambda: _healthy(url) or server.poll() is not None, 180)
                if not _healthy(url):
                    _fail(server, "server", "server.log")
                key = (STATE_DIR / "keys" / "dev-api-key").read_text().strip()
                os.environ["DECLAW_DOMAIN"] = f"localhost:{PORT}"
                os.environ["DECLAW_API_KEY"] = key
                yield Server(url, key, f"localhost:{PORT}", STATE_DIR, INSTANCE)
    finally:
        down()


def run_standalone(main: Callable[[Server, bool], object], argv: list[str] | None = None) -> None:
    """`python bench/bench_x.py [--quick]`: one benchmark against its own lab + server."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sample sizes")
    args = parser.parse_args(argv)
    with running() as server:
        main(server, args.quick)
