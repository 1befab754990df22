"""One sandbox's host-side resources, created in order and torn down in reverse.

`SandboxResources` knows every path and name that a sandbox owns on this machine (its
directory, overlay mount, envd socket tmpfs, OCI container, commands' cgroup, network).
`teardown()` removes
all of them and is idempotent: it runs after a failed create, on kill, and from the startup
sweep with nothing but the sandbox id, slot and runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from declawd.config import Settings
from declawd.runtime import Mount, OciRuntime, quota
from declawd.runtime import cgroups as cg
from declawd.runtime import overlay as ovl

log = logging.getLogger(__name__)

ENVD_MOUNT_DIR = "/run/declawd"
ENVD_SOCKET_NAME = "envd.sock"
ENVD_BIN_IN_SANDBOX = "/opt/declawd/envd"
ENVD_TMPFS_BYTES = 1 << 20
# envd finds the commands' cgroup `tasks` files here (next to its socket; see PROTOCOL.md)
ENVD_CGROUP_DIR = f"{ENVD_MOUNT_DIR}/cgroup"


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
        return self.disk / "upper"

    @property
    def work(self) -> Path:
        return self.disk / "work"

    @property
    def rootfs(self) -> Path:
        return self.dir / "rootfs"

    @property
    def envd_dir(self) -> Path:
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

    def prepare_dirs(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        if self.settings.disk_quota_mb > 0:
            quota.create_disk(self.disk_image, self.disk, self.settings.disk_quota_mb)
        for d in (self.upper, self.work, self.rootfs, self.envd_dir):
            d.mkdir(parents=True, exist_ok=True)
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
        ovl.mount_tmpfs(self.envd_dir, ENVD_TMPFS_BYTES, 0o700)

    async def teardown(self, runtime: OciRuntime | None) -> None:
        """Remove everything host-side except the network (owned by SandboxNetwork)."""
        if runtime is not None:
            try:
                await runtime.kill(self.sandbox_id)
            except Exception:
                log.exception("kill %s", self.sandbox_id)
            try:
                # the commands' child cgroups (and anything the runtime left behind)
                await asyncio.to_thread(cg.remove_cgroup, self.cgroups_path)
            except Exception:
                log.exception("remove cgroup %s", self.cgroups_path)
        for target in (self.envd_dir, self.rootfs):
            try:
                ovl.unmount(target)
            except Exception:
                log.exception("unmount %s", target)
        try:
            quota.destroy_disk(self.disk_image, self.disk)
        except Exception:
            log.exception("destroy disk %s", self.disk_image)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.dir)
