"""One sandbox's host-side resources, created in order and torn down in reverse.

`SandboxResources` knows every path and name that a sandbox owns on this machine (its
directory, quota disk, overlay mount, envd socket dir, OCI container, commands' cgroup); `SandboxHost`
is the node's handle on all of them, by sandbox id. `release()` removes them, is idempotent
(it runs after a failed create, on kill, and from the reconcile sweep with nothing but the
id and runtime), and returns what it could not remove instead of swallowing it.

The rootfs overlay is made detached (an fd, no line in the host's mount table) and attached
only in the runtime's own mount namespace, by `declawd-launchns` (runtime/launchns.c), so
the container holds the one copy that lives: every runc start reads the host's table, and
with 500 sandboxes alive each line cost every create. The node reads the merged view during
a create through the fd (`rootfs_view`). A marker file in the sandbox's dir says its rootfs
lives in its container; without the helper (no compiler) or the mount API the overlay is
mounted on the host as before.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from declawd.config import Settings
from declawd.host.netns import NETNS_DIR
from declawd.host.unixsock import accepts
from declawd.node.spec import ENVD_MOUNT_DIR, ENVD_SOCKET_NAME
from declawd.runtime import Mount, Prune, RootfsMount, quota
from declawd.runtime import cgroups as cg
from declawd.runtime import overlay as ovl
from declawd.runtime.compat import ensure_launchns, ensure_statx_shim, preload_file

log = logging.getLogger(__name__)

# envd finds the commands' cgroup `tasks` files here (next to its socket; see PROTOCOL.md)
ENVD_CGROUP_DIR = f"{ENVD_MOUNT_DIR}/cgroup"
# On the quota disk: the overlay's upper and work dirs and envd's socket dir (made ahead in
# the node's ready disks).
UPPER_DIR = "upper"
WORK_DIR = "work"
ENVD_DIR = "envd"
# In a sandbox's dir: its rootfs was attached in its runtime's namespace, not on the host.
ROOTFS_IN_CONTAINER = "rootfs-in-container"
# In the node's run dir: the id of its bind of the sandboxes' dir onto itself (the mount the
# runtime's namespace prunes: every quota disk is mounted below it).
SANDBOXES_PIN = "sandboxes-pin"
# In the sandboxes' dir: the quota disks made ahead (quota.ReadyDisks).
READY_DISKS_DIR = ".ready-disks"
# Errors of the mount API that mean "not here": mount the overlay on the host instead.
_NO_DETACHED = (errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.EOPNOTSUPP)


@dataclass
class SandboxResources:
    settings: Settings
    sandbox_id: str

    @property
    def dir(self) -> Path:
        return self.settings.sandbox_dir(self.sandbox_id)

    @property
    def disk(self) -> Path:
        """Mount point of the quota filesystem that holds upper and work (same fs: overlay)."""
        return self.dir / "disk"

    @property
    def disk_image(self) -> Path:
        return self.dir / "disk.img"

    @property
    def upper(self) -> Path:
        return self.disk / UPPER_DIR

    @property
    def work(self) -> Path:
        return self.disk / WORK_DIR

    @property
    def rootfs(self) -> Path:
        return self.dir / "rootfs"

    @property
    def rootfs_marker(self) -> Path:
        return self.dir / ROOTFS_IN_CONTAINER

    @property
    def envd_dir(self) -> Path:
        """envd's socket dir, bind-mounted into the sandbox: on the quota disk (so what the
        sandbox writes there counts against its quota), beside upper and work, which the
        sandbox never sees. Not a mount of its own: every host mount is a line that each
        runc start reads (see `overlay.mount_overlay`). A sandbox that an older declawd
        made keeps its socket where it was (`legacy_envd_dir`) for as long as it lives."""
        if (self.legacy_envd_dir / ENVD_SOCKET_NAME).exists():
            return self.legacy_envd_dir
        return self.disk / ENVD_DIR

    @property
    def legacy_envd_dir(self) -> Path:
        """Where an older declawd mounted a 1 MiB tmpfs for the socket (unmounted on release)."""
        return self.dir / "envd"

    @property
    def envd_socket(self) -> Path:
        return self.envd_dir / ENVD_SOCKET_NAME

    @property
    def log_path(self) -> Path:
        return self.dir / "envd.log"

    @property
    def cgroups_path(self) -> str:
        return f"/{self.settings.instance}/{self.sandbox_id}"

    def create_command_cgroups(self, memory_bytes: int, pids: int) -> list[Mount]:
        """Create the commands' child cgroups (runc only) and the mounts that hand their
        `tasks` files to envd; removed by `teardown` with the sandbox's cgroup."""
        mounts = []
        opts = ["bind", "rw", "nosuid", "nodev", "noexec"]
        for c in cg.create_command_cgroups(self.cgroups_path, memory_bytes, pids):
            dest = f"{ENVD_CGROUP_DIR}/{c.controller}"
            mounts.append(Mount(f"{dest}.tasks", str(c.parent_tasks), "bind", opts))
            mounts.append(Mount(f"{dest}.cmds.tasks", str(c.child_tasks), "bind", opts))
        return mounts

    def prepare_dirs(self, ready: quota.ReadyDisks | None = None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        if self.settings.disk_quota_mb > 0:
            quota.create_disk(
                self.disk_image,
                self.disk,
                self.settings.disk_quota_mb,
                cache_dir=self.settings.run_dir / quota.CACHE_SUBDIR,
                ready=ready,
            )
        for d in (self.upper, self.work, self.rootfs, self.envd_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.envd_dir.chmod(0o700)
        self.dir.chmod(0o700)

    def write_network_files(
        self, hostname: str, address: str | None, nameserver: str | None
    ) -> None:
        """Per-sandbox /etc files, written into the upper dir before the overlay is mounted.

        Writing into the fresh upper dir (never through the merged view) means a template
        that ships /etc/resolv.conf as a symlink cannot redirect the write to a host path.
        """
        etc = self.upper / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        resolv = f"nameserver {nameserver}\noptions edns0\n" if nameserver else ""
        hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        if address:
            hosts += f"{address}\t{hostname}\n"
        else:
            hosts += f"127.0.1.1\t{hostname}\n"
        for name, content in (
            ("resolv.conf", resolv),
            ("hosts", hosts),
            ("hostname", hostname + "\n"),
        ):
            (etc / name).write_text(content)
            (etc / name).chmod(0o644)

    def mount(self, layers: list[Path]) -> None:
        ovl.mount_overlay(layers, self.upper, self.work, self.rootfs)

    async def release(self, runtime: ContainerRuntime | None) -> list[str]:
        """Remove everything host-side except the network (owned by the node's network);
        returns a line per resource that could not be removed (empty: all gone)."""
        failed: list[str] = []
        if runtime is not None:
            try:
                await runtime.kill(self.sandbox_id)
            except Exception as exc:
                failed.append(f"container: {exc}")
        try:
            # the commands' child cgroups (and anything the runtime left behind); its path
            # follows from the id alone, so the sweep removes a stray one too
            await asyncio.to_thread(cg.remove_cgroup, self.cgroups_path)
        except OSError as exc:
            failed.append(f"cgroup {self.cgroups_path}: {exc}")
        for target in (self.legacy_envd_dir, self.rootfs):
            try:
                ovl.unmount(target)
            except OSError as exc:
                failed.append(f"unmount {target}: {exc}")
        try:
            quota.destroy_disk(self.disk_image, self.disk)
        except OSError as exc:
            failed.append(f"disk {self.disk_image}: {exc}")
        if not failed:
            try:
                shutil.rmtree(self.dir)
            except FileNotFoundError:
                pass
            except OSError as exc:
                failed.append(f"directory {self.dir}: {exc}")
        return failed


class ContainerRuntime(Protocol):
    """What the node needs of an OCI runtime (runtime/oci.py's `OciRuntime`)."""

    @property
    def name(self) -> str: ...

    async def run_detached(
        self,
        bundle: Path,
        container_id: str,
        netns_path: str | None,
        *,
        log_path: Path,
        rootfs: RootfsMount | None = None,
    ) -> None: ...

    async def kill(self, container_id: str) -> None: ...

    async def pause(self, container_id: str) -> None: ...

    async def resume(self, container_id: str) -> None: ...

    async def state(self, container_id: str) -> str | None: ...

    async def list(self) -> list[str]: ...


def _recorded_id(record: Path) -> int | None:
    """The mount id in a pin's record file, or None (no file, or not a number)."""
    try:
        return int(record.read_text().strip())
    except (OSError, ValueError):
        return None


class SandboxHost:
    """The node's handle on every sandbox's host resources, by id (faked in unit tests)."""

    def __init__(self, settings: Settings, envd_binary: Path | None = None) -> None:
        self.settings = settings
        self._envd_binary = envd_binary
        self._compat: tuple[Path, Path] | None = None
        self._ready_disks: quota.ReadyDisks | None = None
        self._launcher: Path | None = None
        # The sandboxes' dir is a bind of itself that the runtime's namespace prunes.
        self._pinned = False
        # Detached rootfs overlays made by `prepare`, until the runtime started (by id).
        self._rootfs_fds: dict[str, int] = {}

    def prepare_node(self) -> None:
        """Directories, the envd binary and the formatted quota image (so the first create
        copies it instead of running mkfs); blocking, once at start."""
        from declawd.envd import ensure_envd

        for d in (self.settings.sandboxes_dir, self.settings.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._envd_binary = ensure_envd(self.settings.envd_path)
        try:
            self._launcher = ensure_launchns(self.settings.state_dir / "bin" / "declawd-launchns")
        except Exception as exc:  # no compiler: rootfs mounts stay on the host
            log.warning("no declawd-launchns (%s): rootfs overlays are mounted on the host", exc)
            self._launcher = None
        if self._launcher is not None:
            self._pinned = self._pin_sandboxes_dir()
        if self.settings.disk_quota_mb > 0:
            cache = self.settings.run_dir / quota.CACHE_SUBDIR
            quota.formatted(cache, self.settings.disk_quota_mb)
            for old in (cache / quota.READY_SUBDIR).glob("*.img"):  # where an older one kept them
                old.unlink(missing_ok=True)
            self._ready_disks = quota.ReadyDisks(
                cache,
                self.settings.disk_quota_mb,
                dirs=(UPPER_DIR, WORK_DIR, ENVD_DIR),
                # beside the sandboxes' dirs, on the pin's mount: a take is a rename
                ready_dir=self.ready_disks_dir,
            )
            self._ready_disks.start()

    def _pin_sandboxes_dir(self) -> bool:
        """Make the sandboxes' dir a bind mount of itself (once; it outlives a restart), so
        the quota disks are mounted below one mount point that a runtime's launch namespace
        detaches in one call, keeping only its own disk (`rootfs_mount`). Each mount line
        costs every runc start: 500 sandboxes alive made ~1000 of them. False (no prune)
        when sandboxes of an earlier declawd have disks mounted there without it."""
        d = self.settings.sandboxes_dir
        record = self.settings.run_dir / SANDBOXES_PIN
        top = ovl.top_mount_id(d)
        if top is not None and top == _recorded_id(record):
            return True
        if ovl.mounted_below(d):
            log.info("sandboxes' dir not pinned: disks of earlier sandboxes are mounted in it")
            return False
        try:
            mount_id = ovl.bind_onto_itself(d)
        except OSError as exc:
            log.warning(
                "sandboxes' dir not pinned (%s): each runtime reads every disk's mount", exc
            )
            return False
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(f"{mount_id}\n")
        except BaseException:
            ovl.unmount_if_idle(d)  # unrecorded, it would never be removed
            raise
        return True

    def unpin(self) -> None:
        """Remove the sandboxes' dir's bind of itself, only it and only when no disk is
        mounted below it (`declawd down`, or a stop with no sandbox left). Idempotent."""
        d = self.settings.sandboxes_dir
        record = self.settings.run_dir / SANDBOXES_PIN
        if not record.exists():
            return
        ours = ovl.top_mount_id(d) == _recorded_id(record)
        if ours and not ovl.unmount_if_idle(d):
            return
        record.unlink(missing_ok=True)
        self._pinned = False

    def close(self) -> None:
        """Detach and delete the disks made ahead (blocking; idempotent). The sandboxes
        keep theirs; with none left, the sandboxes' dir's pin goes too."""
        if self._ready_disks is not None:
            self._ready_disks.close()
        if not self.present():
            self.unpin()

    @property
    def ready_disks_dir(self) -> Path:
        """The disks made ahead, in the sandboxes' dir (a rename across mounts is EXDEV,
        and that dir is a mount of its own once pinned); a dot name, never a sandbox id."""
        return self.settings.sandboxes_dir / READY_DISKS_DIR

    def resources(self, sandbox_id: str) -> SandboxResources:
        return SandboxResources(self.settings, sandbox_id)

    @property
    def envd_binary(self) -> Path:
        if self._envd_binary is None:
            raise RuntimeError("SandboxHost.prepare_node() was not called")
        return self._envd_binary

    def runsc_compat(self) -> tuple[Path, Path]:
        # Built or checked once per process (hashing the source and comparing stamps on
        # every create was pure overhead); concurrent first builds are safe (atomic replace).
        if self._compat is None:
            from declawd.node.spec import STATX_SHIM_IN_SANDBOX

            bindir = self.settings.state_dir / "bin"
            shim = ensure_statx_shim(bindir / "statx-shim.so")
            self._compat = shim, preload_file(STATX_SHIM_IN_SANDBOX, bindir / "ld.so.preload")
        return self._compat

    def prepare(
        self,
        sandbox_id: str,
        layers: Sequence[Path],
        address: str,
        nameserver: str,
        prefill: Callable[[Path], None] | None = None,
    ) -> None:
        """Quota disk, the upper dir (filled by `prefill` on a restore), /etc network files
        in it, overlay + envd tmpfs (blocking)."""
        res = self.resources(sandbox_id)
        res.prepare_dirs(self._ready_disks)
        if prefill is not None:
            prefill(res.upper)
        res.write_network_files(sandbox_id, address, nameserver)
        self.rootfs_started(sandbox_id)  # a retried prepare: the earlier overlay goes
        if self._launcher is not None:
            try:
                fd = ovl.overlay_detached(list(layers), res.upper, res.work)
            except ovl.MountError as exc:
                if exc.errno not in _NO_DETACHED:
                    raise
                log.warning("no detached overlay (%s): mounting on the host", exc)
                self._launcher = None
            else:
                self._rootfs_fds[sandbox_id] = fd
                res.rootfs_marker.touch()
                return
        res.mount(list(layers))

    def command_cgroup_mounts(self, sandbox_id: str, memory_bytes: int, pids: int) -> list[Mount]:
        return self.resources(sandbox_id).create_command_cgroups(memory_bytes, pids)

    def write_spec(self, sandbox_id: str, spec: dict[str, Any]) -> None:
        # Compact: json's C encoder takes no indent (indented, the ~18 KB spec cost 0.8 ms of
        # a create in the pure-Python encoder; compact, 0.15 ms).
        (self.resources(sandbox_id).dir / "config.json").write_text(json.dumps(spec))

    def is_ready(self, sandbox_id: str) -> bool:
        """Its rootfs is mounted (on the host, or in its container: the caller checked that
        the container is there) and envd's socket exists (what a live sandbox has)."""
        res = self.resources(sandbox_id)
        rootfs = res.rootfs_marker.exists() or ovl.is_mounted(res.rootfs)
        return rootfs and res.envd_socket.exists()

    def rootfs_view(self, sandbox_id: str) -> Path:
        """Where this process reads the sandbox's merged rootfs during its create: its
        detached overlay's fd, or the mount point."""
        fd = self._rootfs_fds.get(sandbox_id)
        return Path(f"/proc/self/fd/{fd}") if fd is not None else self.resources(sandbox_id).rootfs

    def rootfs_mount(self, sandbox_id: str, netns: str | None = None) -> RootfsMount | None:
        """What the runtime's start attaches at the rootfs (None: it is mounted already),
        and the host's per-sandbox subtrees its namespace drops: the other sandboxes' quota
        disks and netns files (`netns`: this sandbox's, kept)."""
        fd = self._rootfs_fds.get(sandbox_id)
        if fd is None or self._launcher is None:
            return None
        res = self.resources(sandbox_id)
        prune: list[Prune] = []
        if self._pinned:
            keep = (res.disk,) if ovl.is_mounted(res.disk) else ()
            prune.append(Prune(self.settings.sandboxes_dir, keep))
        if netns is not None and Path(netns).parent == NETNS_DIR:
            prune.append(Prune(NETNS_DIR, (Path(netns),)))
        return RootfsMount(self._launcher, fd, res.rootfs, tuple(prune))

    def rootfs_started(self, sandbox_id: str) -> None:
        """The runtime's start is over (either way): the container, or nobody, holds the
        rootfs now; this process lets go of its fd."""
        fd = self._rootfs_fds.pop(sandbox_id, None)
        if fd is not None:
            os.close(fd)

    def envd_listening(self, sandbox_id: str) -> bool:
        """envd listens on its socket: a connect is accepted, or queued (EAGAIN: backlog
        full). envd opens the socket last in its start-up, so this means it is up."""
        return accepts(self.resources(sandbox_id).envd_socket)

    def log_tail(self, sandbox_id: str, size: int = 500) -> str:
        try:
            return self.resources(sandbox_id).log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def present(self) -> list[str]:
        """Ids of the sandbox directories on disk."""
        d = self.settings.sandboxes_dir
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if not p.name.startswith("."))

    async def release(self, sandbox_id: str, runtime: ContainerRuntime | None) -> list[str]:
        self.rootfs_started(sandbox_id)  # a create that failed before the runtime's start
        return await self.resources(sandbox_id).release(runtime)
