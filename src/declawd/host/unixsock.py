"""Connecting to a unix socket in a directory the sandbox can write: never through a link.

envd's socket lives in a dir that is bind-mounted into the sandbox (`/run/declawd`), so
root in the sandbox can unlink it and put a symlink there. connect(2) on a unix socket
path follows symlinks, and the node connects as root on the host: a planted
`envd.sock -> /some/host/daemon.sock` would have the node send envd requests (with bodies
the sandbox's own API user chose) to a host daemon. So the node opens the path with
`O_PATH | O_NOFOLLOW`, checks that what it got is a socket, and connects through the fd's
magic link (`/proc/self/fd/N`), which names that inode and nothing else. The dir's other
entries can only be inodes of the sandbox's own quota disk (a hard link cannot cross file
systems), so the socket found is one that a process of the sandbox bound.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpcore


class NotASocket(OSError):
    """The path names something other than a socket (a symlink, a dir, a file)."""


@contextlib.contextmanager
def pinned(path: str | Path) -> Iterator[str]:
    """A path to pass to connect(2) that reaches the socket at `path` without following
    a symlink there; valid inside the `with` only. Raises OSError (FileNotFoundError when
    nothing is there, `NotASocket` when something else is)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise type(exc)(exc.errno, f"{path}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISSOCK(mode):
            kind = "symlink" if stat.S_ISLNK(mode) else "dir" if stat.S_ISDIR(mode) else "file"
            raise NotASocket(errno.ENOTSOCK, f"{path}: a {kind}, not a socket")
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def accepts(path: str | Path) -> bool:
    """Does a socket at `path` (never through a symlink) accept connections? A connect that
    is accepted or queued (EAGAIN: backlog full, alive but busy) says yes; nothing there,
    something else there, or a socket bound but not listening says no. No data is sent."""
    kind = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    with socket.socket(socket.AF_UNIX, kind) as probe:
        try:
            with pinned(path) as via:
                probe.connect(via)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
    return True


class NoFollowUnixBackend(httpcore.AsyncNetworkBackend):
    """httpcore's backend for an `uds=` pool, connecting through `pinned`."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("envd is reached over its unix socket only")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with pinned(path) as via:
                return await self._inner.connect_unix_socket(via, timeout, socket_options)
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
