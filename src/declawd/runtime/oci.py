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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from declawd.errors import Internal
from declawd.host import Completed, in_netns, run, stream

RuntimeName = Literal["runc", "runsc"]

_STOP_POLL_S = 0.01
_STOP_WAIT_S = 10.0
_TAIL_BYTES = 4000

# runsc (Debian's 2022 build) refuses its own netstack on this kernel ("cannot run with
# network enabled in root network namespace"), so it runs with the host netstack inside
# the sandbox's netns (entered with nsenter by the caller of the runsc process).
# --host-uds=create lets a socket bound inside the sandbox in a bind-mounted dir appear as
# a real host socket (the node reaches envd through it).
# --overlay2=none keeps the sandbox's writes in our overlay upper dir instead of gVisor's
# in-memory overlay (so they persist and count towards dir_size, not the memory limit).
RUNSC_FLAGS: tuple[str, ...] = ("--network=host", "--host-uds=create", "--overlay2=none")


class RuntimeStartError(Internal):
    """The runtime failed to start a container; `stderr_tail` holds its last words."""

    def __init__(self, container_id: str, returncode: int, stderr_tail: str) -> None:
        super().__init__(
            f"container {container_id}: runtime exited with {returncode}: {stderr_tail.strip()}"
        )
        self.container_id = container_id
        self.returncode = returncode
        self.stderr_tail = stderr_tail


@dataclass(frozen=True)
class Prune:
    """A host mount point (`dir`) whose subtree the runtime's namespace goes without, but
    for the mounts below it in `keep` (this sandbox's own)."""

    dir: Path
    keep: tuple[Path, ...] = ()


@dataclass(frozen=True)
class RootfsMount:
    """A detached mount (`fd`, from `overlay.overlay_detached`) that `launcher`
    (declawd-launchns) attaches at `target` in a mount namespace of the runtime's own before
    it execs the runtime: the rootfs is then in the runtime's and the container's mount
    tables, never in the host's. `prune`: the subtrees of the host's table that namespace
    drops first (the other sandboxes' netns files and disks). The caller keeps and closes
    `fd`."""

    launcher: Path
    fd: int
    target: Path
    prune: tuple[Prune, ...] = ()

    def wrap(self, cmd: list[str]) -> list[str]:
        opts: list[str] = []
        for p in self.prune:
            opts += ["--prune", str(p.dir)]
            for k in p.keep:
                opts += ["--keep", str(k)]
        return [str(self.launcher), *opts, str(self.fd), str(self.target), *cmd]


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
            cmd = in_netns(cmd, netns_path)
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

    async def _exec(
        self, *args: str, container_id: str | None = None, check: bool = False
    ) -> Completed:
        netns = None
        if self.name == "runsc" and container_id is not None:
            netns = self._netns_of(container_id)
        return await run(*self._base(), *args, netns=netns, check=check)

    # Lifecycle ----------------------------------------------------------------------
    async def run_detached(
        self,
        bundle_dir: Path,
        container_id: str,
        netns_path: str | None,
        *,
        log_path: Path,
        rootfs: RootfsMount | None = None,
    ) -> None:
        """Create and start the container in the background; its stdio goes to log_path.
        With `rootfs`, the runtime starts in its own mount namespace with that mount
        attached first (the bundle's rootfs is then not mounted on the host)."""
        self.root_dir.mkdir(parents=True, exist_ok=True)
        if self._has_state(container_id):
            # Never clean up after a failed start of a container that was already there.
            raise RuntimeStartError(container_id, -1, "a container with this id already exists")
        with open(log_path, "ab") as log:
            start = log.tell()
            cmd = self._run_cmd(bundle_dir, container_id, netns_path, detach=True)
            proc = await asyncio.create_subprocess_exec(
                *(rootfs.wrap(cmd) if rootfs is not None else cmd),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(rootfs.fd,) if rootfs is not None else (),
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
        # The container goes first, however the run ends; then the runtime exits by itself.
        return await stream(
            *self._run_cmd(bundle_dir, container_id, netns_path, detach=False),
            on_line=log,
            stop=lambda: self.kill(container_id),
        )

    async def pause(self, container_id: str) -> None:
        """Freeze every process of the container (cgroup freezer; gVisor stops its tasks)."""
        await self._exec("pause", container_id, container_id=container_id, check=True)

    async def resume(self, container_id: str) -> None:
        """Thaw a paused container; its processes continue where they stopped."""
        await self._exec("resume", container_id, container_id=container_id, check=True)

    async def kill(self, container_id: str) -> None:
        """SIGKILL the container, wait until it has stopped, then delete it (idempotent)."""
        state = await self.state(container_id)
        if state is None:
            return
        if state == "paused":
            # A frozen task cannot act on SIGKILL until it is thawed.
            await self._exec("resume", container_id, container_id=container_id)
        await self._exec("kill", container_id, "KILL", container_id=container_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _STOP_WAIT_S
        while await self.state(container_id) == "running" and loop.time() < deadline:
            await asyncio.sleep(_STOP_POLL_S)
        deleted = await self._exec("delete", "--force", container_id, container_id=container_id)
        if not deleted.ok and await self.state(container_id) is not None:
            deleted.check()

    async def state(self, container_id: str) -> str | None:
        """ "running", "stopped", "created", ... or None when the runtime does not know the id."""
        shown = await self._exec("state", container_id, container_id=container_id)
        if not shown.ok:
            return None
        try:
            status = json.loads(shown.stdout).get("status")
        except (json.JSONDecodeError, AttributeError):
            return None
        return str(status) if status else None

    async def list(self) -> list[str]:
        """Ids of every container under this runtime root."""
        if not self.root_dir.exists():
            return []
        listed = await self._exec("list", "--quiet", check=True)
        return [line.strip() for line in listed.stdout.splitlines() if line.strip()]


def _read_tail(path: Path, start: int) -> str:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        f.seek(0, 2)
        end = f.tell()
        f.seek(max(start, end - _TAIL_BYTES))
        return f.read().decode(errors="replace")
    return ""
