"""Named network namespaces: create, delete, enter, and interfaces inside them.

Namespaces live as bind-mounted files in /var/run/netns (iproute2's convention), so they
outlive our process. A thread enters one with `setns` (`enter_netns`); what it then opens
(a socket, a libnftables context) stays in that namespace for life, which is why
`NetnsThread` keeps one thread there for state that must be used where it was made.
Invariants: create and delete are idempotent, and a delete that fails says so.
"""

from __future__ import annotations

import ctypes
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from declawd.host import commands

NETNS_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


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


async def add_netns(name: str) -> bool:
    """Create netns `name` unless it exists; True if this call created it."""
    if netns_exists(name):
        return False
    return _added(name, await commands.run("ip", "netns", "add", name, check=False))


def add_netns_sync(name: str) -> bool:
    """The blocking twin of `add_netns`."""
    if netns_exists(name):
        return False
    return _added(name, commands.run_sync("ip", "netns", "add", name, check=False))


def _added(name: str, done: commands.Completed) -> bool:
    if done.ok:
        return True
    if netns_exists(name):  # another process created it first: it exists, as asked
        return False
    raise commands.CommandFailed(done.argv, done.returncode, done.stderr)


async def delete_netns(name: str) -> None:
    """Idempotent. Deleting a netns destroys every interface still inside it."""
    if netns_exists(name):
        _deleted(name, await commands.run("ip", "netns", "delete", name, check=False))


def delete_netns_sync(name: str) -> None:
    """The blocking twin of `delete_netns`."""
    if netns_exists(name):
        _deleted(name, commands.run_sync("ip", "netns", "delete", name, check=False))


def _deleted(name: str, done: commands.Completed) -> None:
    if not netns_exists(name):
        return
    # A stale file without a live namespace behind it (a crash between mount and use)
    # unlinks; a namespace that is still mounted refuses, and that is a real failure.
    try:
        os.unlink(netns_path(name))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise commands.CommandFailed(done.argv, done.returncode, done.stderr or str(exc)) from exc


async def sysctls(netns: str, values: dict[str, str]) -> None:
    """Write net.* sysctls as seen from inside `netns` (they are per namespace), one process."""
    script = "; ".join(
        f"echo {value} > /proc/sys/{key.replace('.', '/')}" for key, value in values.items()
    )
    await commands.run("sh", "-ec", script, netns=netns)


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


async def delete_link(name: str, netns: str | None = None) -> bool:
    """Delete interface `name` (a veth takes its peer along); False if it was already gone."""
    if not link_exists(name, netns):  # no process for the common "nothing to delete"
        return False
    argv = ("ip", *(("-n", netns) if netns else ()), "link", "del", name)
    return _link_deleted(name, netns, await commands.run(*argv, check=False))


def delete_link_sync(name: str, netns: str | None = None) -> bool:
    """The blocking twin of `delete_link`."""
    if not link_exists(name, netns):
        return False
    argv = ("ip", *(("-n", netns) if netns else ()), "link", "del", name)
    return _link_deleted(name, netns, commands.run_sync(*argv, check=False))


def _link_deleted(name: str, netns: str | None, done: commands.Completed) -> bool:
    if done.ok:
        return True
    if not link_exists(name, netns):
        return False
    raise commands.CommandFailed(done.argv, done.returncode, done.stderr)


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

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.inode = os.stat(netns_path(netns)).st_ino
        # One worker at most, so every call lands on the thread that entered the netns.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"netns-{Path(netns).name}")
        try:
            self._pool.submit(enter_netns, netns).result()
        except BaseException:
            self._pool.shutdown(wait=False)
            raise

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` on the thread in the netns and wait for its result."""
        return self._pool.submit(fn, *args).result()

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
