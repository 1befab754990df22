"""One volume's directory tree on the host: the only code that touches it by path.

Invariant: no walk into a tree follows a symlink. The volumes dir is mounted `nosymfollow`
(host.py), so the kernel refuses any symlink on the way down, and the last component is only
ever opened or stat'ed without following (O_NOFOLLOW, lstat). Only regular files and
directories are volume content; anything else is invisible here. Blocking calls throughout.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from declawd.errors import Conflict, InvalidInput, NotFound
from declawd.store.volumes import FileStat
from declawd.volumes.paths import components, parent_of

CHUNK = 1 << 20
FILE_MODE = 0o644
DIR_MODE = 0o755
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class Entry:
    name: str
    path: str  # canonical volume path
    stat: FileStat


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def file_stat(st: os.stat_result) -> FileStat | None:
    """The volume's view of an lstat result: None for anything but a file or directory."""
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return None
    is_dir = stat.S_ISDIR(st.st_mode)
    return FileStat(
        is_dir=is_dir,
        size=0 if is_dir else st.st_size,
        mode=stat.S_IMODE(st.st_mode),
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        ino=st.st_ino,
    )


class VolumeTree:
    """`root` is the tree; `staging` a directory on the same filesystem for atomic writes.

    `owner` (uid, gid) is given to everything the API creates, so the sandbox user of a
    live mount can change it; None leaves ownership alone (tests without root).
    """

    def __init__(self, root: Path, staging: Path, owner: tuple[int, int] | None) -> None:
        self.root = root
        self.staging = staging
        self.owner = owner

    def host(self, path: str) -> str:
        rel = "/".join(components(path))
        return str(self.root / rel) if rel else str(self.root)

    def _chown(self, fd_or_path: int | str) -> None:
        if self.owner is None:
            return
        if isinstance(fd_or_path, int):
            os.fchown(fd_or_path, *self.owner)
        else:
            os.chown(fd_or_path, *self.owner, follow_symlinks=False)

    # Reading ------------------------------------------------------------------------
    def stat(self, path: str) -> FileStat | None:
        """None when nothing (or nothing but a symlink, fifo, device...) is at `path`."""
        try:
            return file_stat(os.lstat(self.host(path)))
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None
            raise

    def list(self, path: str) -> list[Entry]:
        st = self.stat(path)
        if st is None:
            raise NotFound(f"path: not found: {path}")
        if not st.is_dir:
            raise InvalidInput("path", f"not a directory: {path}")
        out: list[Entry] = []
        prefix = path.rstrip("/")
        try:
            fd = os.open(self.host(path), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            raise NotFound(f"path: not found: {path}") from exc
        try:
            with os.scandir(fd) as it:
                for de in it:
                    try:
                        fs = file_stat(de.stat(follow_symlinks=False))
                    except OSError:
                        continue  # gone since the listing was read
                    if fs is not None:
                        out.append(Entry(de.name, f"{prefix}/{de.name}", fs))
        finally:
            os.close(fd)
        return sorted(out, key=lambda e: e.name)

    def open_file(self, path: str) -> tuple[int, FileStat]:
        """An fd of the regular file at `path` and its stat (taken on the fd)."""
        try:
            fd = os.open(self.host(path), _READ_FLAGS)
        except OSError as exc:
            if exc.errno == errno.EISDIR:
                raise InvalidInput("path", f"is a directory: {path}") from exc
            raise NotFound(f"path: not found: {path}") from exc
        fs = file_stat(os.fstat(fd))
        if fs is None or fs.is_dir:
            os.close(fd)
            if fs is not None:
                raise InvalidInput("path", f"is a directory: {path}")
            raise NotFound(f"path: not found: {path}")
        os.set_blocking(fd, True)
        return fd, fs

    def measure(self, path: str = "/") -> int:
        """Bytes of the regular files at or below `path` (0 when nothing is there)."""
        st = self.stat(path)
        if st is None or not st.is_dir:
            return st.size if st is not None else 0
        total = 0
        for _rel, st, _fd in self.walk(path, open_files=False):
            if not st.is_dir:
                total += st.size
        return total

    def walk(
        self, path: str = "/", *, open_files: bool = True
    ) -> Iterator[tuple[str, FileStat, int]]:
        """(relative name, stat, fd or -1) for every file and directory below `path`, parents
        first. With `open_files` each file comes opened (the caller closes it), its stat
        taken on that fd, so what is read is what was described."""
        top = self.host(path)
        stack = [""]
        while stack:
            rel = stack.pop()
            here = os.path.join(top, rel) if rel else top
            try:
                dfd = os.open(here, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError:
                continue  # replaced or removed under a live mount since it was listed
            try:
                with os.scandir(dfd) as it:
                    entries = sorted(it, key=lambda de: de.name)
                subdirs = []
                for de in entries:
                    name = f"{rel}/{de.name}" if rel else de.name
                    try:
                        st = de.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    fs = file_stat(st)
                    if fs is None:
                        continue
                    if fs.is_dir:
                        yield name, fs, -1
                        subdirs.append(name)
                    elif not open_files:
                        yield name, fs, -1
                    else:
                        opened = self._open_at(dfd, de.name)
                        if opened is not None:
                            yield name, opened[1], opened[0]
                stack.extend(reversed(subdirs))
            finally:
                os.close(dfd)

    @staticmethod
    def _open_at(dfd: int, name: str) -> tuple[int, FileStat] | None:
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dfd)
        except OSError:
            return None
        fs = file_stat(os.fstat(fd))
        if fs is None or fs.is_dir:
            os.close(fd)
            return None
        os.set_blocking(fd, True)
        return fd, fs

    # Writing ------------------------------------------------------------------------
    def temp_file(self) -> tuple[int, str]:
        """A new empty file in staging (fd, host path), to fill and then `place`."""
        self.staging.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.staging, prefix="w-")
        os.fchmod(fd, FILE_MODE)
        self._chown(fd)
        return fd, name

    def place(self, temp: str, path: str) -> FileStat:
        """Move a filled temp file to `path` in one rename (readers see old or new, never
        half), creating missing parent directories."""
        if path == "/":
            raise InvalidInput("path", "is the volume root")
        self.mkdirs(parent_of(path))
        target = self.host(path)
        try:
            os.rename(temp, target)
        except IsADirectoryError as exc:
            raise InvalidInput("path", f"is a directory: {path}") from exc
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                raise Conflict(f"path: a parent of {path} is not a directory") from exc
            raise
        st = self.stat(path)
        if st is None:
            raise Conflict(f"path: {path} changed while it was written")
        return st

    def discard(self, temp: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)

    def mkdirs(self, path: str) -> bool:
        """mkdir -p; True if `path` was created. A file in the way → Conflict."""
        created = False
        cur = ""
        for part in components(path):
            cur = f"{cur}/{part}"
            host = self.host(cur)
            try:
                os.mkdir(host, DIR_MODE)
                self._chown(host)
                created = True
            except FileExistsError:
                st = self.stat(cur)
                if st is None or not st.is_dir:
                    raise Conflict(f"path: {cur} exists and is not a directory") from None
        return created

    def remove(self, path: str, *, recursive: bool) -> None:
        if path == "/":
            raise InvalidInput("path", "cannot remove the volume root")
        st = self.stat(path)
        if st is None:
            raise NotFound(f"path: not found: {path}")
        host = self.host(path)
        if not st.is_dir:
            os.unlink(host)
            return
        if not recursive:
            try:
                os.rmdir(host)
            except OSError as exc:
                if exc.errno == errno.ENOTEMPTY:
                    raise InvalidInput(
                        "path", f"directory not empty: {path} (pass recursive=true)"
                    ) from exc
                raise
            return
        parent_fd = os.open(
            self.host(parent_of(path)), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
        )
        try:
            # With dir_fd rmtree walks by descriptors and never follows a link.
            shutil.rmtree(path.rsplit("/", 1)[-1], dir_fd=parent_fd)
        finally:
            os.close(parent_fd)

    def rename(self, old: str, new: str) -> None:
        if "/" in (old, new):
            raise InvalidInput("path", "cannot rename the volume root")
        if new == old or new.startswith(old + "/"):
            raise InvalidInput("new_path", f"is {old} or inside it")
        src = self.stat(old)
        if src is None:
            raise NotFound(f"old_path: not found: {old}")
        dst = self.stat(new)
        if dst is not None and (dst.is_dir or src.is_dir):
            raise Conflict(f"new_path: already exists: {new}")
        self.mkdirs(parent_of(new))
        os.rename(self.host(old), self.host(new))
