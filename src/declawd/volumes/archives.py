"""Volume archives: tar in (filtered) and tar out, where a tar meets a volume tree.

In: only files and directories are kept; links, devices, fifos, sparse or unknown members and
absolute, `..` or NUL names are dropped, logged and counted, and members are written one by one
into a fresh private directory (never `extractall`), with bytes and member count bounded while
reading, so nothing lands outside it and a gzip bomb stops at the quota. Out: `write_tar`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gzip
import logging
import os
import tarfile
import threading
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from declawd.errors import InvalidInput, TooLarge
from declawd.volumes.paths import MAX_NAME, MAX_PATH
from declawd.volumes.tree import CHUNK, DIR_MODE, VolumeTree

log = logging.getLogger(__name__)

MAX_MEMBERS = 100_000
# Per-entry log lines stop here; the summary line still counts every drop.
LOGGED_DROPS = 50
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)


@dataclass
class ArchiveReport:
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


def member_verdict(member: tarfile.TarInfo) -> tuple[str | None, list[str]]:
    """(reason to drop or None, path components) for one member (pure).

    An empty component list with no reason is the archive's own root (`.`).
    """
    name = member.name
    if "\x00" in name:
        return "invalid name", []
    if name.startswith("/"):
        return "absolute path", []
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        return "parent reference (..)", []
    if len(name.encode()) > MAX_PATH or any(len(p.encode()) > MAX_NAME for p in parts):
        return "name too long", []
    if member.issym():
        return "symlink", parts
    if member.islnk():
        return "hardlink", parts
    if member.ischr() or member.isblk():
        return "device node", parts
    if member.isfifo():
        return "fifo", parts
    if member.isdir():
        return None, parts
    if member.type == tarfile.GNUTYPE_SPARSE or member.issparse():
        return "sparse file", parts
    if member.type in _FILE_TYPES:
        return (None, parts) if parts else ("invalid name", [])
    return "unsupported member type", parts


class _Extraction:
    def __init__(self, target: Path, owner: tuple[int, int] | None, max_bytes: int) -> None:
        self.target = target
        self.owner = owner
        self.max_bytes = max_bytes
        self.report = ArchiveReport()
        self.kinds: dict[str, bool] = {"": True}  # known paths → is_dir

    def drop(self, name: str, reason: str) -> None:
        self.report.dropped[reason] += 1
        if self.report.dropped_total <= LOGGED_DROPS:
            log.info("volume archive: dropped %r (%s)", name, reason)

    def _chown(self, fd_or_path: int | str) -> None:
        if self.owner is None:
            return
        if isinstance(fd_or_path, int):
            os.fchown(fd_or_path, *self.owner)
        else:
            os.chown(fd_or_path, *self.owner, follow_symlinks=False)

    def ensure_dirs(self, parts: list[str]) -> bool:
        """Every directory in `parts` exists; False if a file is in the way."""
        cur = ""
        for p in parts:
            cur = f"{cur}/{p}" if cur else p
            kind = self.kinds.get(cur)
            if kind is False:
                return False
            if kind is None:
                host = self.target / cur
                os.mkdir(host, DIR_MODE)
                self._chown(str(host))
                self.kinds[cur] = True
                self.report.dirs += 1
        return True

    def add_dir(self, member: tarfile.TarInfo, parts: list[str]) -> None:
        if not parts:
            return
        if not self.ensure_dirs(parts):
            self.drop(member.name, "conflicts with a file")
            return
        os.chmod(self.target / "/".join(parts), (member.mode & 0o777) | 0o700)

    def add_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: list[str]) -> None:
        rel = "/".join(parts)
        if not self.ensure_dirs(parts[:-1]) or self.kinds.get(rel) is True:
            self.drop(member.name, "conflicts with a directory or file")
            return
        src = tar.extractfile(member)
        if src is None:
            self.drop(member.name, "unreadable member")
            return
        host = self.target / rel
        # The target tree is private and holds no symlinks; O_NOFOLLOW keeps it that way.
        fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            while chunk := src.read(CHUNK):
                self.report.bytes += len(chunk)
                if self.report.bytes > self.max_bytes:
                    raise TooLarge(
                        f"archive: more than the {self.max_bytes} bytes left in the quota"
                    )
                os.write(fd, chunk)
            os.fchmod(fd, (member.mode & 0o777) | 0o600)
            self._chown(fd)
        finally:
            os.close(fd)
        os.utime(host, (member.mtime, member.mtime), follow_symlinks=False)
        if rel not in self.kinds:
            self.report.files += 1
        self.kinds[rel] = False


def extract(
    source: IO[bytes],
    target: Path,
    *,
    max_bytes: int,
    max_members: int = MAX_MEMBERS,
    owner: tuple[int, int] | None = None,
) -> ArchiveReport:
    """Materialise the tar (gzip, bzip2, xz or plain) read from `source` into `target`, an
    existing empty directory, keeping only files and directories.

    TooLarge beyond `max_bytes` of file data or `max_members` entries; InvalidInput when
    the body is not a tar archive. On error `target` holds a partial tree: the caller
    removes it.
    """
    job = _Extraction(target, owner, max_bytes)
    members = 0
    try:
        with tarfile.open(fileobj=source, mode="r|*") as tar:
            for member in tar:
                members += 1
                if members > max_members:
                    raise TooLarge(f"archive: more than {max_members} entries")
                reason, parts = member_verdict(member)
                if reason is not None:
                    job.drop(member.name, reason)
                elif member.isdir():
                    job.add_dir(member, parts)
                else:
                    job.add_file(tar, member, parts)
    except (tarfile.TarError, EOFError) as exc:
        raise InvalidInput("request body", f"not a readable tar archive ({exc})") from exc
    report = job.report
    if report.dropped:
        log.warning(
            "volume archive: kept %d files and %d directories, dropped %d entries (%s)",
            report.files,
            report.dirs,
            report.dropped_total,
            ", ".join(f"{n} {reason}" for reason, n in sorted(report.dropped.items())),
        )
    return report


class _Exact:
    """Reads exactly `size` bytes of an fd: a file that shrank while packed reads as
    zero-padded, one that grew is cut, so the tar stays well-formed."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.left = size

    def read(self, n: int = -1) -> bytes:
        want = self.left if n < 0 else min(n, self.left)
        parts: list[bytes] = []
        got = 0
        while got < want:
            data = os.read(self.fd, want - got)
            if not data:
                parts.append(b"\x00" * (want - got))
                break
            parts.append(data)
            got += len(data)
        self.left -= want
        return b"".join(parts)


def write_tar(tree: VolumeTree, out: IO[bytes], *, compress: bool, path: str = "/") -> int:
    """Pack the files and directories at or below `path` into `out` (gzip'd with
    `compress`); returns the number of entries."""
    if not compress:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            return _pack(tree, tar, path)
    # Level 1: a download is bound by compression speed far more than by the bytes sent.
    with (
        gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1) as gz,
        tarfile.open(fileobj=cast(IO[bytes], gz), mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        return _pack(tree, tar, path)


def _pack(tree: VolumeTree, tar: tarfile.TarFile, path: str) -> int:
    count = 0
    for rel, st, fd in tree.walk(path):
        info = tarfile.TarInfo(rel)
        info.mode = st.mode
        info.mtime = st.mtime_ns // 1_000_000_000
        count += 1
        if st.is_dir:
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
            continue
        try:
            info.size = st.size
            tar.addfile(info, cast(IO[bytes], _Exact(fd, st.size)))
        finally:
            os.close(fd)
    return count


class _Stopped(Exception):
    """The consumer of `tar_chunks` went away; the producing thread ends quietly."""


class _QueueWriter:
    """File-like sink for tarfile in a worker thread, handing chunks to the event loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any], stop: threading.Event
    ) -> None:
        self.loop, self.queue, self.stop = loop, queue, stop
        self.buf = bytearray()

    def put(self, item: Any) -> None:
        fut = asyncio.run_coroutine_threadsafe(self.queue.put(item), self.loop)
        while True:
            try:
                fut.result(timeout=0.5)
                return
            except concurrent.futures.TimeoutError:
                if self.stop.is_set():
                    fut.cancel()
                    raise _Stopped() from None

    def write(self, data: bytes) -> int:
        if self.stop.is_set():
            raise _Stopped()
        self.buf += data
        if len(self.buf) >= CHUNK:
            self.put(bytes(self.buf))
            self.buf.clear()
        return len(data)

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        if self.buf:
            self.put(bytes(self.buf))
            self.buf.clear()


async def tar_chunks(tree: VolumeTree, *, compress: bool, path: str = "/") -> AsyncIterator[bytes]:
    """`write_tar` as a stream of chunks, packed in a worker thread while they are sent;
    at most a few chunks wait in memory. Stopping early ends the thread."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=4)
    stop = threading.Event()
    sink = _QueueWriter(loop, queue, stop)

    def produce() -> None:
        try:
            write_tar(tree, sink, compress=compress, path=path)  # type: ignore[arg-type]
            sink.finish()
            sink.put(None)
        except _Stopped:
            return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            with contextlib.suppress(_Stopped):
                sink.put(exc)

    # A thread of its own, not the default executor: a long download must not hold one of
    # the few workers every store call of the server waits for.
    threading.Thread(target=produce, name="volume-tar", daemon=True).start()
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
