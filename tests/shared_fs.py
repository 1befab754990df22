"""A shared filesystem for the cluster test's blob store: an NFS export, mounted over FUSE.

A cluster's blob store is a filesystem every host mounts (docs/blobs.md; NFS in production).
This machine's kernel has neither the NFS client nor the NFS server built in and loads no
modules (`/proc/filesystems` lists no `nfs`/`nfsd`; CONFIG_NFS_FS and CONFIG_NFSD are unset),
so neither Debian's `nfs-kernel-server` nor `mount -t nfs` works here. The server is therefore
NFS-Ganesha, the userspace NFS server (Debian's `nfs-ganesha` + `nfs-ganesha-vfs`), exporting
one directory; the client is `declawd-nfsfuse` (native/nfsfuse, built by `make setup`), an
NFSv3 client on libnfs mounted through FUSE, the one filesystem interface the kernel has. Each
node mounts the export from inside its own host netns (the traffic crosses its veth and the
bridge, as to a file server), each at a path of its own, so nothing may assume one path on
every host.

`SharedFs.start()` runs Ganesha (its own config, log, pid file and v4 recovery directory in a
temp dir; NFSv3 and NFSv4 over TCP, FSAL VFS, `No_Root_Squash`, `sys` security) bound to
`listen:port`, its MOUNT service on a port of the kernel's choosing. It exports
`<export>/blobs`, the file server's side, which tests may read directly (writes go through a
mount: Ganesha caches attributes). The client speaks NFSv3, because libnfs's NFSv4 is not
usable (native/nfsfuse/nfsfuse.c says why), and Ganesha serves v3 only once it has registered
with a portmapper: so it gets an `rpcbind` of its own, in a mount namespace with a private
`/run` (its socket is no one else's) and a network namespace of its own (its port 111 answers
nobody). Ganesha joins that mount namespace only; clients are given the MOUNT port, they ask
no portmapper. `mount(at, prefix)` runs the client (through `prefix`, e.g. `nsenter
--net=...`) in the foreground as our child. It caches nothing (attribute, entry and negative
timeouts 0: NFS's `actimeo=0,lookupcache=none`), so what one host wrote is what the next
lookup on another host sees; the kernel checks permissions against fresh attributes
(`default_permissions`), and what a caller creates is given to the caller. `stop()` unmounts every mount (lazily if busy) and ends the clients, Ganesha and
rpcbind; the mounts a killed run left are cleared by `remove_stale()`.

Missing binaries are an error, never a skip: `make setup` installs the packages and builds
the client (with a policy-rc.d, so neither Ganesha nor rpcbind starts as a system service).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

GANESHA = "/usr/bin/ganesha.nfsd"
FSAL_DIR = Path("/usr/lib/x86_64-linux-gnu/ganesha")  # libfsalvfs.so, from nfs-ganesha-vfs
RPCBIND = "/usr/sbin/rpcbind"
RPCINFO = "/usr/sbin/rpcinfo"
CLIENT = Path(sys.executable).parent / "declawd-nfsfuse"
FS_TYPE = "fuse.declawd-nfsfuse"
PSEUDO = "/blobs"  # the export's path for clients (NFSv3 mounts use it too)
MOUNT_PROGRAM, MOUNT_V3 = 100005, 3
MISSING = (
    "NFS-Ganesha, rpcbind or declawd-nfsfuse not found: run `make setup` (it installs "
    "nfs-ganesha, nfs-ganesha-vfs, rpcbind and fuse3, and builds native/nfsfuse)"
)


def _ganesha_config(export: Path, listen: str, port: int, state: Path) -> str:
    return f"""
NFS_CORE_PARAM {{
    Bind_addr = {listen};
    NFS_Port = {port};
    MNT_Port = 0;
    Protocols = 3, 4;
    mount_path_pseudo = true;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
    Plugins_Dir = "{FSAL_DIR}";
}}
NFSv4 {{
    Graceless = true;
    RecoveryBackend = fs;
    RecoveryRoot = "{state / "recovery"}";
}}
EXPORT {{
    Export_Id = 1;
    Path = "{export}";
    Pseudo = "{PSEUDO}";
    Protocols = 3, 4;
    Transports = TCP;
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    FSAL {{ Name = VFS; }}
}}
LOG {{ Default_Log_Level = EVENT; }}
"""


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
    """Unmount every mount of our NFS client at or below `under` (a killed run's)."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split(" ")[4] for line in f if f" - {FS_TYPE} " in line]
    for point in sorted(points, reverse=True):
        if point == str(under) or point.startswith(f"{under}/"):
            unmount(Path(point))


def _stop(proc: subprocess.Popen[bytes], wait_s: float) -> None:
    """SIGTERM, then SIGKILL after `wait_s`; reaps the process."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait_s)
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def _wait(
    cond: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log: Path, s: float
) -> None:
    deadline = time.monotonic() + s
    while not cond():
        if proc.poll() is not None or time.monotonic() > deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"{what} did not start (exit {proc.poll()}): {text[-3000:]}")
        time.sleep(0.05)


def _child(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """A child that dies with us (SIGTERM on our death), its output in `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            ["setpriv", "--pdeathsig", "SIGTERM", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


class SharedFs:
    def __init__(self, export: Path, listen: str, port: int) -> None:
        for tool in (GANESHA, RPCBIND, RPCINFO, str(CLIENT), str(FSAL_DIR / "libfsalvfs.so")):
            if not Path(tool).exists():
                raise RuntimeError(f"{MISSING} ({tool} is missing)")
        for tool in ("fusermount", "setpriv", "unshare", "nsenter"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{MISSING} ({tool} is missing)")
        self.export, self.listen, self.port = export, listen, port
        self.dir: Path | None = None
        self.rpcbind: subprocess.Popen[bytes] | None = None
        self.ganesha: subprocess.Popen[bytes] | None = None
        self.mount_port = 0
        self.mounts: list[tuple[Path, subprocess.Popen[bytes]]] = []

    @property
    def url(self) -> str:
        """What the client mounts: the export over NFSv3, both ports given (no portmapper)."""
        return (
            f"nfs://{self.listen}{PSEUDO}?version=3&nfsport={self.port}&mountport={self.mount_port}"
        )

    def start(self) -> None:
        (self.export / "blobs").mkdir(mode=0o755, parents=True, exist_ok=True)
        self.dir = state = Path(tempfile.mkdtemp(prefix="declawd-sfs-"))
        (state / "recovery").mkdir()
        try:
            self._start_rpcbind(state)
            self._start_ganesha(state)
        except BaseException:
            self.stop()
            raise

    def _start_rpcbind(self, state: Path) -> None:
        self.rpcbind = proc = _child(
            ["unshare", "--mount", "--net", "--propagation", "private", "sh", "-c",
             f"mount -t tmpfs -o mode=0755 declawd-sfs /run && exec {RPCBIND} -f"],
            state / "rpcbind.log",
        )  # fmt: skip
        socket = Path(f"/proc/{proc.pid}/root/run/rpcbind.sock")
        _wait(socket.exists, proc, "rpcbind", state / "rpcbind.log", 15)

    def _start_ganesha(self, state: Path) -> None:
        assert self.rpcbind is not None
        conf = state / "ganesha.conf"
        conf.write_text(_ganesha_config(self.export / "blobs", self.listen, self.port, state))
        log = state / "ganesha.log"
        self.ganesha = _child(
            ["nsenter", f"--mount=/proc/{self.rpcbind.pid}/ns/mnt",
             GANESHA, "-F", "-f", str(conf), "-L", str(log), "-p", str(state / "ganesha.pid")],
            state / "ganesha.out",
        )  # fmt: skip
        _wait(
            lambda: log.exists() and "NFS SERVER INITIALIZED" in log.read_text(errors="replace"),
            self.ganesha, "NFS-Ganesha", log, 60,
        )  # fmt: skip
        self.mount_port = self._registered_port(MOUNT_PROGRAM, MOUNT_V3)

    def _registered_port(self, program: int, version: int) -> int:
        """The TCP port `program`/`version` registered with our rpcbind (rpcinfo over its
        socket; universal addresses end in `.p1.p2`)."""
        assert self.rpcbind is not None
        out = subprocess.run(
            ["nsenter", f"--mount=/proc/{self.rpcbind.pid}/ns/mnt", RPCINFO],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        for line in out.splitlines():
            f = line.split()
            if len(f) >= 4 and f[:3] == [str(program), str(version), "tcp"]:
                hi, lo = f[3].split(".")[-2:]
                return int(hi) * 256 + int(lo)
        raise RuntimeError(f"program {program} v{version} is not registered: {out}")

    def mount(self, at: Path, prefix: list[str] | None = None) -> Path:
        """Mount the export at `at` (made if missing), from the netns `prefix` enters;
        returns `at`."""
        assert self.dir is not None and self.mount_port, "start() first"
        at.mkdir(parents=True, exist_ok=True)
        log = self.dir / f"client-{len(self.mounts)}.log"
        # `-f`: the client stays our child (it dies with us, and stop() knows its pid).
        proc = _child(
            [*(prefix or []), str(CLIENT), self.url, str(at), "-f", "-o", "allow_other"], log
        )
        self.mounts.append((at, proc))
        _wait(lambda: _mounted(at), proc, f"the NFS client at {at}", log, 30)
        return at

    def stop(self) -> None:
        for at, proc in reversed(self.mounts):
            unmount(at)
            # A lazily unmounted (busy) mount keeps its client until the last user lets go:
            # at teardown it is ended, and what still used it gets ENOTCONN.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            _stop(proc, 5)
        self.mounts.clear()
        for server in (self.ganesha, self.rpcbind):
            if server is not None:
                _stop(server, 20)
        self.ganesha = self.rpcbind = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
