"""The lab's process lifecycle: `serve()` (body of `declawd lab serve`) and `LabProcess`.

`serve` owns the lab netns for its lifetime: it converges the netns, links it to the
gateway when that exists (`declawd.lab.upstream`), moves into it, runs every listener until
SIGTERM/SIGINT and, unless told to keep it, deletes the netns on the way out (also after a
failed start). One lab per instance, enforced by a lock file. `LabProcess` runs `serve` as
a child for tests, benchmarks and the demo, and is ready only once the lab DNS answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from dnslib import DNSError, DNSRecord

from declawd.addresses import DNS_PORT, LAB_DNS_ADDRESS, LAB_LINK_PEER_IF
from declawd.config import Settings
from declawd.host import CommandFailed, enter_netns, netns_exists, socket_in_netns
from declawd.lab.config import LabConfig
from declawd.lab.servers import LabServer
from declawd.lab.topology import ensure_lab_netns, ensure_lab_route, remove_lab_netns
from declawd.lab.upstream import ensure_lab_link

log = logging.getLogger("declawd.lab")
READY_NAME = "_ready.lab"  # readiness probe; NXDOMAIN is an answer too
INSTANCE_LOCK_DIR = Path("/run/lock")


class LabError(RuntimeError):
    pass


def pid_path(settings: Settings) -> Path:
    return settings.lab_dir / "lab.pid"


def log_path(settings: Settings) -> Path:
    return settings.lab_dir / "lab.log"


def ready_path(settings: Settings) -> Path:
    """Exists (holding the pid) while every listener is up; scripts may wait for it."""
    return settings.lab_dir / "ready"


class _Stop(BaseException):
    """Raised by the early signal handler so `finally` blocks still tear down."""


def serve(settings: Settings, config: LabConfig, *, keep: bool = False) -> None:
    """Run the lab in the foreground until SIGTERM/SIGINT (blocking)."""
    settings.lab_dir.mkdir(parents=True, exist_ok=True)

    def early_stop(signum: int, _frame: object) -> None:
        raise _Stop(signum)

    signal.signal(signal.SIGTERM, early_stop)
    signal.signal(signal.SIGINT, early_stop)
    # One lab per state dir (pid file, query log) and per instance (the netns name).
    locks = [
        settings.lab_dir / "lab.lock",
        INSTANCE_LOCK_DIR / f"declawd-{settings.lab_netns}.lock",
    ]
    held: list[tuple[Path, int]] = []
    try:
        for lock in locks:
            held.append((lock, _lock(lock, settings)))
        pid_path(settings).write_text(f"{os.getpid()}\n")
        ready_path(settings).unlink(missing_ok=True)  # stale from a killed run
        try:
            ensure_lab_netns(settings, config)
            _link_to_gateway(settings, config)
            enter_netns(settings.lab_netns)
            asyncio.run(_run(settings, config))
        except _Stop:
            pass
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second TERM must not cut teardown
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            if not keep:
                remove_lab_netns(settings)
            ready_path(settings).unlink(missing_ok=True)
            pid_path(settings).unlink(missing_ok=True)
    finally:
        for lock, fd in reversed(held):
            lock.unlink(missing_ok=True)  # while still held: see _lock
            os.close(fd)


def _lock(path: Path, settings: Settings) -> int:
    """Exclusive non-blocking flock on `path`; the file is unlinked by its holder on exit,
    so the lock only counts if `path` still names the inode we locked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LabError(
                f"a lab is already running for instance {settings.instance} or state dir "
                f"{settings.state_dir} (lock {path})"
            ) from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the previous holder unlinked it between our open and flock: retry


def _link_to_gateway(settings: Settings, config: LabConfig) -> None:
    """Make the lab link when the gateway netns exists (a node started before the lab)."""
    if not netns_exists(settings.gateway_netns):
        return
    try:
        asyncio.run(ensure_lab_link(settings))
    except (CommandFailed, OSError) as exc:  # the lab is still useful standalone
        log.warning("lab not linked to the gateway: %s", exc)
        return
    ensure_lab_netns(settings, config)


async def _run(settings: Settings, config: LabConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = LabServer(settings, config)
    try:
        await server.start()
        watcher = asyncio.create_task(_watch_uplink(settings))
        ready_path(settings).write_text(f"{os.getpid()}\n")
        print(f"lab ready: netns {settings.lab_netns}, dns {LAB_DNS_ADDRESS}", flush=True)
        await stop.wait()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    finally:
        await server.stop()


async def _watch_uplink(settings: Settings) -> None:
    """Add the default route whenever the gateway (re)creates `up0` after we started."""
    seen = 0
    while True:
        try:
            index = socket.if_nametoindex(LAB_LINK_PEER_IF)  # this thread is in the lab netns
        except OSError:
            index = 0
        if index and index != seen:
            try:
                if await asyncio.to_thread(ensure_lab_route, settings):
                    seen = index
            except (CommandFailed, ValueError) as exc:  # up0 going away under us: retry
                log.warning("lab default route via the gateway not set: %s", exc)
        await asyncio.sleep(2)


def lab_down(settings: Settings, timeout: float = 10.0) -> None:
    """Stop a running `lab serve` of this instance (if any) and delete the lab netns."""
    try:
        pid = int(pid_path(settings).read_text().strip())
    except (FileNotFoundError, ValueError):
        pid = 0
    if pid and _is_lab_process(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _is_lab_process(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _is_lab_process(pid):
            os.kill(pid, signal.SIGKILL)
    remove_lab_netns(settings)


def _is_lab_process(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and b"lab" in cmdline and b"serve" in cmdline


def dns_ready(settings: Settings, timeout: float = 0.3) -> bool:
    """True when the lab DNS answers a query sent from inside the lab netns."""
    if not netns_exists(settings.lab_netns):
        return False
    query = DNSRecord.question(READY_NAME)
    try:
        sock = socket_in_netns(settings.lab_netns, socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return False
    with sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(query.pack(), (LAB_DNS_ADDRESS, DNS_PORT))
            data = sock.recv(4096)
        except OSError:
            return False
    try:
        return bool(DNSRecord.parse(data).header.id == query.header.id)
    except DNSError:  # not a DNS answer: whatever answers there is not our lab
        return False


class LabProcess:
    """`declawd lab serve` as a child process; a sync and async context manager."""

    def __init__(
        self,
        settings: Settings,
        config_path: str | Path | None = None,
        *,
        keep: bool = False,
        ready_timeout: float = 30.0,
    ) -> None:
        self.settings = settings
        self.config_path = config_path if config_path is not None else settings.lab_config
        self.keep = keep
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._owned = False  # our child held the lab lock, so the netns is ours to remove

    @property
    def netns(self) -> str:
        return self.settings.lab_netns

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "declawd.cli", "lab", "serve"]
        cmd += ["--instance", self.settings.instance, "--state-dir", str(self.settings.state_dir)]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        if self.keep:
            cmd.append("--keep")
        return cmd

    def start(self) -> None:
        if self.proc is not None:
            return
        self.settings.lab_dir.mkdir(parents=True, exist_ok=True)
        self._log = log_path(self.settings).open("ab")
        self.proc = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LabError(f"lab exited with {self.proc.returncode}: {self.log_tail()}")
            # Ready only when *our* child holds the lab (pid file) and its DNS answers: an
            # older lab answering in the same netns must not count.
            if self._owns_lab() and dns_ready(self.settings):
                return
            time.sleep(0.05)
        raise LabError(f"lab DNS not answering after {self.ready_timeout}s: {self.log_tail()}")

    def _owns_lab(self) -> bool:
        try:
            owns = (
                self.proc is not None and int(pid_path(self.settings).read_text()) == self.proc.pid
            )
        except (OSError, ValueError):
            return False
        self._owned = self._owned or owns
        return owns

    def log_tail(self, n: int = 2000) -> str:
        try:
            return log_path(self.settings).read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Idempotent: SIGTERM, SIGKILL after 10 s, then make sure the netns is gone."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._owned and not self.keep:
            remove_lab_netns(self.settings)  # normally done by the child; this covers SIGKILL
        self._owned = False
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LabProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> LabProcess:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)
