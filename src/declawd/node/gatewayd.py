"""The node's handle on the gateway daemon (resolver + L7 proxy) that runs in the gateway netns.

The node owns the daemon's input, `gateway/state.json`, and its lifecycle: it starts the
daemon detached (so it outlives server restarts), restarts it when it dies, and only lets a
sandbox start after the daemon has acknowledged a reload that includes that sandbox.
Invariant: state.json on disk always holds every live sandbox's policy and inspection,
written atomically and readable by root alone (it holds masked env values, never a secret).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from declawd.cluster.auditspool import audit_spool_path
from declawd.cluster.secrets import vault_socket_path
from declawd.config import Settings
from declawd.egress.proxy import PEEK_TIMEOUT_S
from declawd.errors import Unreachable
from declawd.host import in_netns
from declawd.node.parts import GatewayEntry
from declawd.upstream import Upstream
from declawd.vault.crypto import master_key_path

log = logging.getLogger(__name__)

STORE_URL_ENV = "DECLAWD_DATABASE_URL"  # read by `declawd gateway serve --database-url`
STATS_MAX_BYTES = 1 << 20  # the answer is a few hundred bytes; more is not the daemon


class GatewayDaemon:
    """The node's side of `declawd gateway serve`; `upstream` says where DNS goes."""

    def __init__(self, settings: Settings, upstream: Upstream) -> None:
        self.settings = settings
        self.upstream = upstream
        self.dir = settings.gateway_dir
        self.state_path = self.dir / "state.json"
        self.control_path = self.dir / "control.sock"
        self.pid_path = self.dir / "gateway.pid"
        self.log_path = self.dir / "gateway.log"
        self._entries: dict[str, dict[str, Any]] = {}
        # Each entry's JSON as written (sort_keys): state.json is their join, so a create
        # with 500 sandboxes on the node encodes one entry, not all of them.
        self._encoded: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._supervisor: asyncio.Task[None] | None = None
        self.restarts = 0

    # state.json -------------------------------------------------------------------
    def load(self) -> None:
        try:
            data = json.loads(self.state_path.read_text())
            self._entries = dict(data.get("sandboxes", {}))
        except (FileNotFoundError, ValueError):
            self._entries = {}
        self._encoded = {}

    def _set(self, sandbox_id: str, wire: dict[str, Any]) -> str:
        self._entries[sandbox_id] = wire
        encoded = self._encoded[sandbox_id] = json.dumps(wire, sort_keys=True)
        return encoded

    def _drop(self, sandbox_id: str) -> bool:
        self._encoded.pop(sandbox_id, None)
        return self._entries.pop(sandbox_id, None) is not None

    def _document(self) -> bytes:
        """state.json: `{"sandboxes": {id: entry}}`, ids sorted, from the encoded entries."""
        for sid, wire in self._entries.items():
            if sid not in self._encoded:
                self._encoded[sid] = json.dumps(wire, sort_keys=True)
        items = ", ".join(
            f"{json.dumps(sid)}: {self._encoded[sid]}" for sid in sorted(self._entries)
        )
        return ('{"sandboxes": {' + items + "}}").encode()

    def _write(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        data = self._document()
        # Created 0600 (not chmod'ed after): the masked values are never briefly readable.
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, self.state_path)

    def entry(self, sandbox_id: str) -> dict[str, Any] | None:
        item = self._entries.get(sandbox_id)
        return dict(item) if isinstance(item, dict) else None

    async def upsert(self, sandbox_id: str, entry: GatewayEntry) -> None:
        """Write the sandbox's entry into state.json, then have the daemon take that one
        entry (`put`); returns once it acknowledged (the sandbox may start then)."""
        async with self._lock:
            encoded = self._set(sandbox_id, entry.to_wire())
            self._write()
            await self._delta(f"put {sandbox_id} {encoded}")

    async def sync(self, entries: Mapping[str, GatewayEntry]) -> None:
        async with self._lock:
            for sandbox_id, entry in entries.items():
                self._set(sandbox_id, entry.to_wire())
            self._write()
            if self.alive():
                await self._reload()

    async def remove(self, sandbox_id: str) -> None:
        async with self._lock:
            if not self._drop(sandbox_id):
                return
            self._write()
            with contextlib.suppress(OSError, asyncio.TimeoutError, Unreachable):
                await self._delta(f"forget {sandbox_id}")

    async def retain(self, keep: set[str]) -> None:
        async with self._lock:
            for sid in [s for s in self._entries if s not in keep]:
                self._drop(sid)
            self._write()

    # control socket ---------------------------------------------------------------
    async def _command(self, line: str, timeout: float = 5.0) -> str:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(self.control_path)), timeout
        )
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            answer = await asyncio.wait_for(reader.readline(), timeout)
            return answer.decode().strip()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _delta(self, line: str) -> None:
        """One sandbox's change (`put`/`forget`; state.json is already written). A daemon
        that does not know the command (one started by an older declawd: it outlives the
        server), refused it, or did not answer gets a full reload instead."""
        try:
            if await self._command(line) == "ok":
                return
        except (TimeoutError, OSError):
            pass
        await self._reload()

    async def _reload(self) -> None:
        """Make the daemon re-read state.json; start it if it is not running."""
        for attempt in range(3):
            try:
                if await self._command("reload") == "ok":
                    return
            except (TimeoutError, OSError):
                pass
            if not self.alive():
                await self.start()
            elif attempt:
                await asyncio.sleep(0.2)
        raise Unreachable("gateway daemon did not acknowledge the reload")

    async def ping(self) -> bool:
        try:
            return await self._command("ping", timeout=2.0) == "ok"
        except (TimeoutError, OSError):
            return False

    def stats(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """The daemon's counters (its `stats` answer), or None when it does not answer.
        Blocking (a plain socket, so a scrape can read it from a worker thread)."""
        return read_stats(self.control_path, timeout)

    # process ----------------------------------------------------------------------
    def pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if b"gateway" in cmdline and b"serve" in cmdline else None

    def alive(self) -> bool:
        return self.pid() is not None

    def _command_line(self) -> list[str]:
        exe = shutil.which("declawd", path=str(Path(sys.executable).parent)) or ""
        base = [exe] if exe else [sys.executable, "-m", "declawd.cli"]
        upstream = self.settings.upstream_dns or self.upstream.dns_server()
        return in_netns(
            [
                *base,
                "gateway",
                "serve",
                "--state-dir",
                str(self.settings.state_dir),
                "--instance",
                self.settings.instance,
                "--upstream-dns",
                upstream,
                "--peek-timeout",
                str(PEEK_TIMEOUT_S),
                "--handshake-timeout",
                str(self.settings.handshake_timeout),
                "--dns-flood-qps",
                str(self.settings.dns_flood_qps),
                "--dns-flood-window",
                str(self.settings.dns_flood_window_s),
                "--pool",
                self.settings.pool,
                *[arg for r in self.settings.exempt_ranges for arg in ("--exempt", r)],
                *self._inspection_args(),
            ],
            self.settings.gateway_netns,
        )

    def _inspection_args(self) -> list[str]:
        """Where the daemon finds what inspected connections need: the CAs the upstream's
        servers are verified against (none given: the system's store) and the vault key, or
        on a cluster node (which has no key) the agent's vault socket; there its audit goes
        to the agent's spool too (its netns may not reach the store)."""
        if self.settings.node_id:
            args = [
                "--vault-socket",
                str(vault_socket_path(self.settings)),
                "--audit-spool",
                str(audit_spool_path(self.settings)),
            ]
        else:
            args = ["--vault-key", str(master_key_path(self.settings.keys_dir))]
        bundle = self.upstream.ca_bundle()
        if bundle is not None:
            args += ["--upstream-ca", str(bundle)]
        if self.settings.injection_judge_url:
            args += ["--judge-url", self.settings.injection_judge_url]
            args += ["--judge-model", self.settings.injection_judge_model]
        return args

    def _env(self) -> dict[str, str]:
        """The daemon's environment: the store's URL (its audit events go to the store's
        database, docs/store.md) in the environment, not on a command line `ps` shows. A
        cluster node's daemon gets none: its audit goes to the agent's spool."""
        env = {k: v for k, v in os.environ.items() if k != STORE_URL_ENV}
        if self.settings.database_url and not self.settings.node_id:
            env[STORE_URL_ENV] = self.settings.database_url
        return env

    async def start(self) -> None:
        if self.alive():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.control_path.unlink()
        logf = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._command_line(),
                env=self._env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                start_new_session=True,
            )
        finally:
            logf.close()
        self.pid_path.write_text(str(proc.pid))
        # The child is detached in its own session; reap it in the background if it
        # exits while we live, so it never lingers as a zombie.
        asyncio.get_running_loop().create_task(proc.wait())
        for _ in range(100):
            if await self.ping():
                return
            if proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        raise Unreachable(f"gateway daemon failed to start; see {self.log_path}")

    async def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not self.alive():
                break
            await asyncio.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()

    def supervise(self) -> None:
        if self._supervisor is None:
            self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if self.alive() and await self.ping():
                continue
            if self.alive():
                # Running but not answering: give it a moment (it may be starting).
                await asyncio.sleep(1.0)
                if await self.ping():
                    continue
                await self.stop()
            log.warning("gateway daemon is down; restarting it")
            self.restarts += 1
            try:
                async with self._lock:
                    await self.start()
            except Exception:
                log.exception("restarting the gateway daemon")

    async def close(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None


def read_stats(control_path: Path, timeout: float = 2.0) -> dict[str, Any] | None:
    """Ask the daemon at `control_path` for `stats`: its JSON object, or None (no daemon, no
    answer within `timeout`, or an answer that is not one)."""
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(control_path))
            sock.sendall(b"stats\n")
            data = b""
            while not data.endswith(b"\n") and len(data) < STATS_MAX_BYTES:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    try:
        answer = json.loads(data.decode())
    except ValueError:
        log.warning("gateway stats: not a JSON answer: %r", data[:200])
        return None
    return answer if isinstance(answer, dict) else None
