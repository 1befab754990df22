"""Driver for the OCI runtime binaries (runc, runsc) that run each sandbox's container.

Invariant: a container either starts or leaves nothing behind (no runtime state, no
cgroup): a failed start is deleted before `RuntimeStartError` is raised, and `kill` is
idempotent and works for ids the runtime has never heard of.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

RuntimeName = Literal["runc", "runsc"]

_STOP_POLL_S = 0.01
_STOP_WAIT_S = 10.0
_TAIL_BYTES = 4000
_CHUNK_BYTES = 64 * 1024

# runsc (Debian's 2022 build) refuses its own netstack on this kernel ("cannot run with
# network enabled in root network namespace"), so it runs with the host netstack inside
# the sandbox's netns (entered with nsenter by the caller of the runsc process).
# --host-uds=create lets a socket bound inside the sandbox in a bind-mounted dir appear as
# a real host socket (the node reaches envd through it).
# --overlay2=none keeps the sandbox's writes in our overlay upper dir instead of gVisor's
# in-memory overlay (so they persist and count towards dir_size, not the memory limit).
RUNSC_FLAGS: tuple[str, ...] = ("--network=host", "--host-uds=create", "--overlay2=none")


class RuntimeStartError(RuntimeError):
    """The runtime failed to start a container; `stderr_tail` holds its last words."""

    def __init__(self, container_id: str, returncode: int, stderr_tail: str) -> None:
        super().__init__(
            f"container {container_id}: runtime exited with {returncode}: {stderr_tail.strip()}"
        )
        self.container_id = container_id
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class RuntimeCommandError(RuntimeError):
    """A runtime housekeeping command (kill, delete, list) failed unexpectedly."""


class OciRuntime:
    def __init__(self, name: RuntimeName, root_dir: Path) -> None:
        if name not in ("runc", "runsc"):
            raise ValueError(f"runtime: must be runc or runsc, not {name!r}")
        self.name: RuntimeName = name
        self.root_dir = root_dir

    # Command lines ------------------------------------------------------------------
    def _base(self) -> list[str]:
        cmd = [self.name, "--root", str(self.root_dir)]
        if self.name == "runsc":
            cmd += RUNSC_FLAGS
        return cmd

    def _run_cmd(
        self, bundle_dir: Path, container_id: str, netns_path: str | None, *, detach: bool
    ) -> list[str]:
        cmd = [*self._base(), "run"]
        if detach:
            cmd.append("--detach")
        cmd += ["--bundle", str(bundle_dir), container_id]
        if self.name == "runsc" and netns_path is not None:
            # Not `ip netns exec`: it remounts /sys, which hides the host's cgroup tree.
            cmd = ["nsenter", f"--net={netns_path}", *cmd]
        return cmd

    def _netns_of(self, container_id: str) -> str | None:
        """The network namespace a runsc container's sandbox lives in, from runsc's state.

        runsc (this 2022 build) serves its control socket on an *abstract* unix address,
        which is scoped to a network namespace: every later command must run there too,
        or runsc reports a running container as "stopped" and cannot signal it.
        """
        for state_file in self.root_dir.glob(f"*_sandbox:{container_id}.state"):
            try:
                state = json.loads(state_file.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            namespaces = state.get("spec", {}).get("linux", {}).get("namespaces", [])
            for ns in namespaces:
                if ns.get("type") == "network" and ns.get("path") and os.path.exists(ns["path"]):
                    return str(ns["path"])
            # The named netns may be gone while the sandbox still holds the namespace.
            pid = state.get("sandbox", {}).get("pid")
            if isinstance(pid, int) and pid > 0 and os.path.exists(f"/proc/{pid}/ns/net"):
                return f"/proc/{pid}/ns/net"
        return None

    async def _exec(self, *args: str, container_id: str | None = None) -> tuple[int, str, str]:
        prefix: list[str] = []
        if self.name == "runsc" and container_id is not None:
            netns = self._netns_of(container_id)
            if netns is not None:
                prefix = ["nsenter", f"--net={netns}"]
        proc = await asyncio.create_subprocess_exec(
            *prefix,
            *self._base(),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    # Lifecycle ----------------------------------------------------------------------
    async def run_detached(
        self, bundle_dir: Path, container_id: str, netns_path: str | None, *, log_path: Path
    ) -> None:
        """Create and start the container in the background; its stdio goes to log_path."""
        self.root_dir.mkdir(parents=True, exist_ok=True)
        if self._has_state(container_id):
            # Never clean up after a failed start of a container that was already there.
            raise RuntimeStartError(container_id, -1, "a container with this id already exists")
        with open(log_path, "ab") as log:
            start = log.tell()
            proc = await asyncio.create_subprocess_exec(
                *self._run_cmd(bundle_dir, container_id, netns_path, detach=True),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
            try:
                returncode = await proc.wait()
            except BaseException:
                await asyncio.shield(self._reap_and_kill(proc, container_id))
                raise
        if returncode != 0:
            tail = _read_tail(log_path, start)
            await self.kill(container_id)
            raise RuntimeStartError(container_id, returncode, tail)

    def _has_state(self, container_id: str) -> bool:
        if self.name == "runc":
            return (self.root_dir / container_id).exists()
        return any(self.root_dir.glob(f"*_sandbox:{container_id}.state"))

    async def _reap_and_kill(self, proc: asyncio.subprocess.Process, container_id: str) -> None:
        # Let the runtime finish creating before deleting, or the delete races the create.
        await proc.wait()
        await self.kill(container_id)

    async def run_foreground(
        self,
        bundle_dir: Path,
        container_id: str,
        netns_path: str | None,
        *,
        log: Callable[[str], None],
    ) -> int:
        """Run the container to completion, streaming its output lines; returns its exit code."""
        self.root_dir.mkdir(parents=True, exist_ok=True)
        if self._has_state(container_id):
            raise RuntimeStartError(container_id, -1, "a container with this id already exists")
        proc = await asyncio.create_subprocess_exec(
            *self._run_cmd(bundle_dir, container_id, netns_path, detach=False),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            assert proc.stdout is not None
            await _stream_lines(proc.stdout, log)
            return await proc.wait()
        finally:
            await asyncio.shield(self._kill_then_reap(proc, container_id))

    async def _kill_then_reap(self, proc: asyncio.subprocess.Process, container_id: str) -> None:
        await self.kill(container_id)
        if proc.returncode is None:
            await proc.wait()

    async def kill(self, container_id: str) -> None:
        """SIGKILL the container, wait until it has stopped, then delete it (idempotent)."""
        if await self.state(container_id) is None:
            return
        await self._exec("kill", container_id, "KILL", container_id=container_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _STOP_WAIT_S
        while await self.state(container_id) == "running" and loop.time() < deadline:
            await asyncio.sleep(_STOP_POLL_S)
        rc, _, err = await self._exec("delete", "--force", container_id, container_id=container_id)
        if rc != 0 and await self.state(container_id) is not None:
            raise RuntimeCommandError(f"{self.name} delete {container_id}: {err.strip()}")

    async def state(self, container_id: str) -> str | None:
        """ "running", "stopped", "created", ... or None when the runtime does not know the id."""
        rc, out, _ = await self._exec("state", container_id, container_id=container_id)
        if rc != 0:
            return None
        try:
            status = json.loads(out).get("status")
        except (json.JSONDecodeError, AttributeError):
            return None
        return str(status) if status else None

    async def list(self) -> list[str]:
        """Ids of every container under this runtime root."""
        if not self.root_dir.exists():
            return []
        rc, out, err = await self._exec("list", "--quiet")
        if rc != 0:
            raise RuntimeCommandError(f"{self.name} list: {err.strip()}")
        return [line.strip() for line in out.splitlines() if line.strip()]


async def _stream_lines(stream: asyncio.StreamReader, log: Callable[[str], None]) -> None:
    """Feed output to `log` line by line; overlong lines (progress bars) come in pieces."""
    pending = b""
    while chunk := await stream.read(_CHUNK_BYTES):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if len(pending) > _CHUNK_BYTES:
            lines.append(pending)
            pending = b""
        for line in lines:
            log(line.decode(errors="replace").rstrip("\r"))
    if pending:
        log(pending.decode(errors="replace").rstrip("\r"))


def _read_tail(path: Path, start: int) -> str:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        f.seek(0, 2)
        end = f.tell()
        f.seek(max(start, end - _TAIL_BYTES))
        return f.read().decode(errors="replace")
    return ""
