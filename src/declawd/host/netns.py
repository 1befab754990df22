"""Named network namespaces: create, delete, enter, and interfaces inside them.

Namespaces live as bind-mounted files in /var/run/netns (iproute2's convention), so they
outlive our process. A thread enters one with `setns` (`enter_netns`); what it then opens
(a socket, a libnftables context) stays in that namespace for life, which is why
`NetnsThread` keeps one thread there for state that must be used where it was made.
Everything here is syscalls (unshare, mount, setns, rtnetlink, /proc/sys), no process.
Invariants: create and delete are idempotent, and a delete that fails says so.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from declawd.errors import Internal

NETNS_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 0x2
PROC_SYS = Path("/proc/sys")
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]  # fmt: skip
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_dir_ready = threading.Lock()
_dir_shared: set[str] = set()
T = TypeVar("T")


class NetnsError(Internal):
    """A namespace could not be created, deleted or configured; names it and says why."""

    def __init__(self, netns: str, what: str, code: int) -> None:
        super().__init__(f"netns {netns}: {what}: {os.strerror(code)}")
        self.netns = netns
        self.errno = code


def netns_path(netns: str) -> str:
    """The nsfs file of `netns`: a name in NETNS_DIR, or already a path (/proc/PID/ns/net)."""
    return netns if netns.startswith("/") else str(NETNS_DIR / netns)


def netns_exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def list_netns(prefix: str = "") -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


# create / delete -------------------------------------------------------------------


def _share_netns_dir() -> None:
    """Make NETNS_DIR a shared mount point once (what `ip netns add` does), so a namespace
    bound there shows in every mount namespace, also those made after it."""
    with _dir_ready:
        key = str(NETNS_DIR)
        if key in _dir_shared:
            return
        NETNS_DIR.mkdir(parents=True, exist_ok=True)
        path = key.encode()
        if _libc.mount(b"none", path, None, MS_SHARED | MS_REC, None) != 0:
            if _libc.mount(path, path, b"none", MS_BIND | MS_REC, None) != 0:
                raise NetnsError(key, "bind the netns directory", ctypes.get_errno())
            if _libc.mount(b"none", path, None, MS_SHARED | MS_REC, None) != 0:
                raise NetnsError(key, "share the netns directory", ctypes.get_errno())
        _dir_shared.add(key)


def _create_here(name: str) -> bool:
    """Create netns `name` and move the calling thread into it; True if this call made it.

    Only for a throw-away (or dedicated) thread: `unshare` moves the thread itself. When
    the namespace exists already, the thread enters it instead.
    """
    _share_netns_dir()
    path = netns_path(name)
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
    except FileExistsError:  # made meanwhile by another process: it exists, as asked
        enter_netns(name)
        return False
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            raise NetnsError(name, "unshare", ctypes.get_errno())
        if _libc.mount(b"/proc/thread-self/ns/net", path.encode(), b"none", MS_BIND, None) != 0:
            raise NetnsError(name, "bind mount", ctypes.get_errno())
    except BaseException:
        os.unlink(path)
        raise
    return True


def add_netns_sync(name: str) -> bool:
    """Create netns `name` unless it exists; True if this call created it."""
    if netns_exists(name):
        return False
    worker = ThreadPoolExecutor(1, thread_name_prefix=f"netns-add-{name}")
    try:
        return worker.submit(_create_here, name).result()
    finally:
        worker.shutdown(wait=False)  # the thread is in the new netns: let it end


async def add_netns(name: str) -> bool:
    """The async twin of `add_netns_sync`."""
    if netns_exists(name):
        return False
    return await asyncio.to_thread(add_netns_sync, name)


def delete_netns_sync(name: str) -> None:
    """Idempotent. Deleting a netns destroys every interface still inside it (once no
    process or socket holds it any more)."""
    path = netns_path(name)
    if not os.path.exists(path):
        return
    # EINVAL: not a mount point (a stale file from a crash between create and mount).
    if _libc.umount2(path.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise NetnsError(name, "unmount", err)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise NetnsError(name, "unlink", exc.errno or errno.EIO) from exc


async def delete_netns(name: str) -> None:
    """The async twin of `delete_netns_sync`."""
    if netns_exists(name):
        await asyncio.to_thread(delete_netns_sync, name)


def write_sysctls(values: dict[str, str], root: Path = PROC_SYS) -> None:
    """Write sysctls as the calling thread sees them: net.* ones are its netns's own."""
    for key, value in values.items():
        (root / key.replace(".", "/")).write_text(f"{value}\n")


async def sysctls(netns: str, values: dict[str, str]) -> None:
    """Write net.* sysctls as seen from inside `netns` (they are per namespace)."""
    await asyncio.to_thread(call_in_netns, netns, lambda: write_sysctls(values))


# interfaces ------------------------------------------------------------------------


def link_exists(name: str, netns: str | None = None) -> bool:
    """Whether interface `name` exists in `netns` (None: the calling thread's netns)."""

    def lookup() -> bool:
        try:
            socket.if_nametoindex(name)
        except OSError:
            return False
        return True

    if netns is None:
        return lookup()
    return netns_exists(netns) and call_in_netns(netns, lookup)


def delete_link_sync(name: str, netns: str | None = None) -> bool:
    """Delete interface `name` (a veth takes its peer along); False if it was already gone."""
    from declawd.host.rtnl import Rtnl

    def drop() -> bool:
        with Rtnl() as rtnl:
            return rtnl.delete(name)

    if netns is None:
        return drop()
    return netns_exists(netns) and call_in_netns(netns, drop)


async def delete_link(name: str, netns: str | None = None) -> bool:
    """The async twin of `delete_link_sync`."""
    if not link_exists(name, netns):  # no socket for the common "nothing to delete"
        return False
    return await asyncio.to_thread(delete_link_sync, name, netns)


# entering --------------------------------------------------------------------------


def enter_netns(netns: str) -> None:
    """Move the calling thread into `netns`; threads and processes it starts later follow."""
    fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns}): {os.strerror(err)}")
    finally:
        os.close(fd)


class NetnsThread:
    """One worker thread that entered `netns` and runs every call given to it, in order.

    For state bound to the namespace of the thread that made it (a C library's netlink
    socket), which must then be used on that same thread. `inode` identifies the namespace,
    so a holder can tell that a namespace of the same name was deleted and made again.
    """

    def __init__(self, netns: str, *, create: bool = False) -> None:
        """`create`: make the netns (on the worker itself) when it does not exist yet;
        `created` then says whether this call made it."""
        self.netns = netns
        # One worker at most, so every call lands on the thread that entered the netns.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"netns-{Path(netns).name}")
        try:
            if create:
                self.created = self._pool.submit(_create_here, netns).result()
            else:
                self._pool.submit(enter_netns, netns).result()
                self.created = False
            self.inode = os.stat(netns_path(netns)).st_ino
        except BaseException:
            self._pool.shutdown(wait=False)
            raise

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` on the thread in the netns and wait for its result."""
        return self._pool.submit(fn, *args).result()

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """`call` for a coroutine: awaits `fn(*args)` on the thread in the netns."""
        return await asyncio.wrap_future(self._pool.submit(fn, *args))

    def close(self) -> None:
        """Idempotent; calls already submitted still run."""
        self._pool.shutdown(wait=False)


def call_in_netns(netns: str, fn: Callable[[], T]) -> T:
    """`fn()` on a throw-away thread inside `netns`; the calling thread stays where it is."""
    worker = NetnsThread(netns)
    try:
        return worker.call(fn)
    finally:
        worker.close()


def socket_in_netns(netns: str, family: int, kind: int) -> socket.socket:
    """A socket created in `netns`; a socket keeps the netns it was made in for life."""
    return call_in_netns(netns, lambda: socket.socket(family, kind))
