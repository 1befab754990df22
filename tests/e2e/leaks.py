"""Leak accounting and a restartable server for the fault, restart and load suites.

`snapshot(settings, server_pid)` counts every host resource a sandbox can own (netns, gateway
veths, nft chains/sets/elements, cgroups, mounts under the state dir, runc/runsc containers,
sandbox and runtime processes, the server's open fds); a test compares a snapshot taken before
with one taken after everything it created is gone. `OwnServer` is a lab + server on an
instance of its own (`<test instance>x`) that a test may kill -9 and restart, so the session
server of conftest.py is never disturbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from declawd.config import Settings
from declawd.egress.network import count_resources
from tests.e2e import conftest as c

RUN_RUNTIMES = ("runc", "runsc")


def settings_for(instance: str, state_dir: Path, pool: str) -> Settings:
    return Settings.from_env(instance=instance, state_dir=state_dir, pool=pool, lab=True)


def _cgroups(instance: str) -> int:
    n = 0
    for ctl in Path("/sys/fs/cgroup").glob(f"*/{instance}"):
        if ctl.is_dir():
            n += sum(1 for p in ctl.iterdir() if p.is_dir())
    return n


def mount_points_anywhere(under: Path) -> set[tuple[str, str]]:
    """(mount namespace, mount point) of every mount below `under`, in every mount namespace
    (a sandbox's rootfs is attached in its runtime's own namespace, not the host's)."""
    prefix = str(under).rstrip("/") + "/"
    found: set[tuple[str, str]] = set()
    for pid in Path("/proc").glob("[0-9]*"):
        try:
            ns = os.readlink(pid / "ns" / "mnt")
            lines = (pid / "mountinfo").read_text().splitlines()
        except OSError:
            continue  # the process went
        for line in lines:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                found.add((ns, point))
    return found


def _mounts(state_dir: Path) -> int:
    """Per-sandbox mounts, in every mount namespace. The shared template layers live
    elsewhere; only mounts below the sandboxes' dirs are counted."""
    return len(mount_points_anywhere(state_dir / "sandboxes"))


def _containers(settings: Settings) -> int:
    n = 0
    runc_root = settings.run_dir / "runc"
    if runc_root.is_dir():
        n += sum(1 for p in runc_root.iterdir() if p.is_dir())
    runsc_root = settings.run_dir / "runsc"
    if runsc_root.is_dir():
        n += sum(1 for _ in runsc_root.glob("*_sandbox:*.state"))
    return n


def _processes(settings: Settings) -> int:
    """Processes in this instance's sandbox cgroups, or runsc processes under its run dir."""
    marker_cg = f"/{settings.instance}/"
    marker_run = str(settings.run_dir).encode()
    n = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cgroup = (d / "cgroup").read_text()
            cmdline = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if marker_cg in cgroup or marker_run in cmdline:
            n += 1
    return n


def snapshot(settings: Settings, server_pid: int | None = None) -> dict[str, int]:
    counts = dict(asyncio.run(count_resources(settings)))
    counts["cgroups"] = _cgroups(settings.instance)
    counts["mounts"] = _mounts(settings.state_dir)
    counts["containers"] = _containers(settings)
    counts["processes"] = _processes(settings)
    sdir = settings.sandboxes_dir
    # dot names are the node's own (its disks made ahead), never a sandbox's
    dirs = [p for p in sdir.iterdir() if not p.name.startswith(".")] if sdir.is_dir() else []
    counts["sandbox_dirs"] = len(dirs)
    if server_pid is not None:
        counts["server_fds"] = len(os.listdir(f"/proc/{server_pid}/fd"))
    return counts


def _live_in_store(settings: Settings) -> int:
    import sqlite3

    if not settings.db_path.exists():
        return 0
    con = sqlite3.connect(settings.db_path, timeout=10)
    try:
        row = con.execute(
            # Sandboxes that may still hold host resources (a killed one until its teardown ends).
            "SELECT count(*) FROM sandboxes WHERE released = 0"
        ).fetchone()
        return int(row[0])
    finally:
        con.close()


def quiet_snapshot(
    settings: Settings, server_pid: int | None = None, timeout: float = 90
) -> dict[str, int]:
    """A baseline taken when nothing is in flight: no live sandbox in the store (an earlier
    test's `kill()` without wait may still be tearing down) and two snapshots a second apart
    agree. A baseline taken mid-teardown would make a later comparison fail or hide a leak."""
    deadline = time.monotonic() + timeout
    prev = snapshot(settings, server_pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = snapshot(settings, server_pid)
        if now == prev and _live_in_store(settings) == 0:
            return now
        prev = now
    return prev


def wait_settled(
    settings: Settings, expected: dict[str, int], server_pid: int | None, timeout: float = 30
) -> dict[str, int]:
    """Snapshot until it equals `expected` (teardown of a runsc sandbox ends asynchronously)."""
    deadline = time.monotonic() + timeout
    now = snapshot(settings, server_pid)
    while not no_leak(expected, now) and time.monotonic() < deadline:
        time.sleep(0.5)
        now = snapshot(settings, server_pid)
    return now


def no_leak(before: dict[str, int], after: dict[str, int]) -> bool:
    """Equal counts; the server's fds may only shrink (client sockets it had not closed yet
    when `before` was taken go away), a leak makes them grow."""
    fds = "server_fds"
    same = {k: v for k, v in before.items() if k != fds} == {
        k: v for k, v in after.items() if k != fds
    }
    return same and after.get(fds, 0) <= before.get(fds, 0)


def server_pid_on(port: int) -> int | None:
    """Pid of the `declawd server ... --port <port>` process (the session server has no handle)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            args = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = b"server" in args and b"--port" in args and str(port).encode() in args
        if ours and any(a.endswith(b"declawd") for a in args[:2]):
            return int(d.name)
    return None


class OwnServer:
    """A lab + server of its own instance that tests may kill -9 and restart."""

    def __init__(self) -> None:
        self.instance = (c.INSTANCE + "x")[:12]
        self.port = c.PORT + 1
        self.state_dir = Path(str(c.STATE_DIR) + "-x")
        self.pool = os.environ.get("DECLAWD_TEST_POOL", "10.78.0.0/16")
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = settings_for(self.instance, self.state_dir, self.pool)
        self.lab: subprocess.Popen[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.key = ""

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("DECLAWD_FAULTS", None)
        env.update(
            DECLAWD_INSTANCE=self.instance,
            DECLAWD_STATE_DIR=str(self.state_dir),
            DECLAWD_TEMPLATES_DIR=str(c.TEMPLATES_DIR),
            DECLAWD_POOL=self.pool,
            DECLAWD_WARM_POOL="off",
        )
        env.update(extra)
        return env

    def down(self) -> None:
        subprocess.run(
            [str(c.BIN / "declawd"), "down"], env=self.env(), capture_output=True, timeout=180
        )

    def start_lab(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / "lab" / "ready").unlink()
        with open(self.state_dir / "lab.log", "ab") as log:
            self.lab = subprocess.Popen(
                [str(c.BIN / "declawd"), "lab", "serve"],
                env=self.env(),
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        lab = self.lab
        c._wait_for(
            lambda: (self.state_dir / "lab" / "ready").exists() or lab.poll() is not None, 60
        )
        if lab.poll() is not None:
            raise RuntimeError((self.state_dir / "lab.log").read_text()[-2000:])

    def start(self, faults: str = "", *, warm_pool: str = "off") -> None:
        assert self.proc is None or self.proc.poll() is not None
        extra = {"DECLAWD_FAULTS": faults} if faults else {}
        extra["DECLAWD_WARM_POOL"] = warm_pool
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(c.BIN / "declawd"), "server", "--lab", "--port", str(self.port)],
                env=self.env(**extra),
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        proc = self.proc
        c._wait_for(lambda: c._healthy(self.url) or proc.poll() is not None, 180)
        if proc.poll() is not None:
            raise RuntimeError(self.log_tail())
        self.key = (self.state_dir / "keys" / "dev-api-key").read_text().strip()

    @property
    def log_path(self) -> Path:
        return self.state_dir / "server.log"

    def log_tail(self, n: int = 3000) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(self.log_offset)
            return f.read().decode(errors="replace")[-n:]

    def wait_log(self, needle: str, timeout: float = 120) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log_tail(10**7):
                return True
            time.sleep(0.1)
        return False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> None:
        """SIGKILL the server (only it: sandboxes and the gateway daemon live on)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def restart(self, faults: str = "") -> None:
        self.stop()
        self.start(faults)

    def close(self) -> None:
        self.stop()
        if self.lab is not None:
            self.lab.send_signal(signal.SIGTERM)
            try:
                self.lab.wait(15)
            except subprocess.TimeoutExpired:
                self.lab.kill()
        self.down()

    # HTTP -----------------------------------------------------------------------
    def http(self, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": self.key}, timeout=timeout)

    def sdk_opts(self) -> dict[str, Any]:
        """Keyword arguments that point the official SDK at this server."""
        return {"api_key": self.key, "domain": f"localhost:{self.port}"}

    def snapshot(self) -> dict[str, int]:
        return snapshot(self.settings)

    def baseline(self) -> dict[str, int]:
        """Counts when nothing is in flight (see quiet_snapshot)."""
        return quiet_snapshot(self.settings)

    def listed_ids(self) -> set[str]:
        with self.http() as h:
            r = h.get("/sandboxes")
            r.raise_for_status()
            body = r.json()
            items = body.get("sandboxes", body) if isinstance(body, dict) else body
            return {s["sandbox_id"] for s in items}


def eventually(cond: Callable[[], bool], timeout: float = 30, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()
