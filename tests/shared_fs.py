"""A shared filesystem for the cluster test's blob store: an SFTP export, mounted with sshfs.

A cluster's blob store is a filesystem every host mounts (docs/blobs.md; NFS in production).
This machine's kernel has neither the NFS client nor the NFS server built in and loads no
modules (`/proc/filesystems` lists no `nfs`/`nfsd`; CONFIG_NFS_FS and CONFIG_NFSD are unset),
so Debian's `nfs-kernel-server` cannot export anything here. What the kernel has is FUSE, so
the test's shared filesystem is the nearest real network filesystem on it: OpenSSH's sftp
server exporting one directory, mounted by every "host" with sshfs over TCP. Each node mounts
it from inside its own host netns (the traffic crosses its veth and the bridge, as to a file
server), each at a path of its own, so nothing may assume one path on every host.

`SharedFs.start()` runs `sshd` (its own config, host key and client key in a temp dir; key
auth only; every session forced into `internal-sftp` chrooted to the export, so a client
sees the export as `/`) on `listen:port`. `mount(at, prefix)` runs `sshfs` (through `prefix`,
e.g. `nsenter --net=...`) with the kernel's attribute, entry and negative caches and sshfs's
directory cache off: what one host wrote is what the next lookup on another host sees (NFS
gives the same with `actimeo=0,lookupcache=none`; its default is close-to-open). `stop()`
unmounts every mount (lazily if busy) and stops sshd; what a killed run left is cleared by
`remove_stale()`.

Missing binaries are an error, never a skip: `make system` installs `sshfs` and
`openssh-server` (with /etc/ssh/sshd_not_to_be_run, so the system's own sshd never starts).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"
MISSING = "sshfs or sshd not found: run `make system` (it installs sshfs and openssh-server)"
MOUNT_OPTIONS = (
    "allow_other",
    "reconnect",
    "ServerAliveInterval=2",
    "ServerAliveCountMax=3",
    "dir_cache=no",
    "attr_timeout=0",
    "entry_timeout=0",
    "negative_timeout=0",
    "max_conns=4",
    "BatchMode=yes",
)


def _run(argv: list[str], timeout: float = 30) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {(out.stderr or out.stdout).strip()}")
    return out.stdout


def _mounted(at: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == str(at) for line in f)


def unmount(at: Path) -> None:
    """Unmount the FUSE mount at `at` (lazily if it is busy); idempotent."""
    if not _mounted(at):
        return
    if subprocess.run(["fusermount", "-u", str(at)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(at)], capture_output=True)


def remove_stale(under: Path) -> None:
    """Unmount every FUSE mount at or below `under` (a killed run's)."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split(" ")[4] for line in f if " - fuse.sshfs " in line]
    for point in sorted(points, reverse=True):
        if point == str(under) or point.startswith(f"{under}/"):
            unmount(Path(point))


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(int(d.name))
    return out


def _descendants(pid: int) -> list[int]:
    children, out, todo = _children(), [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _stop_all(pids: list[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.05)


class SharedFs:
    def __init__(self, export: Path, listen: str, port: int) -> None:
        for tool in (SSHD, "sshfs", "fusermount"):
            if shutil.which(tool) is None:
                raise RuntimeError(MISSING)
        self.export, self.listen, self.port = export, listen, port
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.mounts: list[Path] = []

    def start(self) -> None:
        # sshd's chroot: the export and every directory above it root-owned, not writable
        # by group or others; the data goes in one level down.
        self.export.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.export.chmod(0o755)
        (self.export / "blobs").mkdir(mode=0o755, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="declawd-sfs-"))
        keys = self.dir
        for name in ("host", "client"):
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)])
        (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
        host_key = (keys / "host.pub").read_text().split()
        (keys / "known_hosts").write_text(
            f"[{self.listen}]:{self.port} {host_key[0]} {host_key[1]}\n"
        )
        (keys / "sshd_config").write_text(
            "\n".join(
                [
                    f"ListenAddress {self.listen}:{self.port}",
                    f"HostKey {keys / 'host'}",
                    f"PidFile {keys / 'sshd.pid'}",
                    f"AuthorizedKeysFile {keys / 'authorized_keys'}",
                    "AuthenticationMethods publickey",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    "StrictModes no",
                    "Subsystem sftp internal-sftp",
                    f"ChrootDirectory {self.export}",
                    "ForceCommand internal-sftp",
                    "AllowTcpForwarding no",
                    "AllowAgentForwarding no",
                    "X11Forwarding no",
                    "PermitTTY no",
                    "",
                ]
            )
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        self.proc = subprocess.Popen(
            [
                "setpriv",
                "--pdeathsig",
                "SIGTERM",
                SSHD,
                "-D",
                "-e",
                "-f",
                str(keys / "sshd_config"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(keys / "sshd.log", "wb"),  # noqa: SIM115 - owned by the process
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while "Server listening" not in (keys / "sshd.log").read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start: {(keys / 'sshd.log').read_text()}")
            time.sleep(0.05)

    def mount(self, at: Path, prefix: list[str] | None = None) -> Path:
        """Mount the export's `blobs/` at `at` (made if missing), from the netns `prefix`
        enters; returns `at`."""
        assert self.dir is not None, "start() first"
        at.mkdir(parents=True, exist_ok=True)
        options = [
            *MOUNT_OPTIONS,
            f"port={self.port}",
            f"IdentityFile={self.dir / 'client'}",
            f"UserKnownHostsFile={self.dir / 'known_hosts'}",
            "StrictHostKeyChecking=yes",
        ]
        _run(
            [
                *(prefix or []),
                "sshfs",
                "-o",
                ",".join(options),
                f"root@{self.listen}:/blobs",
                str(at),
            ]
        )
        self.mounts.append(at)
        return at

    def stop(self) -> None:
        for at in reversed(self.mounts):
            unmount(at)
        self.mounts.clear()
        if self.proc is not None and self.proc.poll() is None:
            # sshd serves each connection from a process of its own session (setsid): it
            # outlives the listener, so it is found and stopped here too.
            sessions = _descendants(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            _stop_all(sessions)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
