"""`BlobStore`, and its filesystem backend `FsBlobStore` (a local or shared directory)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from declawd.errors import Busy, NotSupported

if TYPE_CHECKING:
    from declawd.config import Settings

log = logging.getLogger(__name__)

PARTIAL = ".partial"
LOCKS = "locks"


class BlobLockTimeout(Busy):
    """A blob lock stayed held by another holder past the wait."""


def check_key(key: str) -> str:
    """`key` if it is a relative path of plain names; ValueError naming it otherwise."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") or "\x00" in p for p in parts):
        raise ValueError(f"blob key: {key!r} is not a relative path of plain names")
    if parts[-1].endswith(PARTIAL):
        raise ValueError(f"blob key: {key!r} ends in {PARTIAL}, the suffix of unfinished blobs")
    return key


class BlobStore(Protocol):
    """What the platform asks of blob storage (keys: see the package's docstring)."""

    kind: str

    def writing(self, key: str) -> contextlib.AbstractContextManager[Path]:
        """A local path to write the blob to; it becomes `key` (replacing any older one)
        when the block exits cleanly, and is discarded when it raises."""
        ...

    def put(self, key: str, src: Path) -> int:
        """Copy the local file `src` in as `key`; returns its size."""
        ...

    def reading(self, key: str) -> contextlib.AbstractContextManager[Path]:
        """A local path holding the blob for the block's duration (FileNotFoundError if
        there is none)."""
        ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int | None: ...

    def delete(self, key: str) -> None:
        """Remove the blob or the tree under `key`; idempotent."""
        ...

    def list(self, prefix: str) -> list[str]:
        """The names directly under `prefix` (unfinished blobs excluded), sorted."""
        ...

    def tree(self, key: str) -> Path:
        """A live directory every host sees the same (volumes' live mounts); only a
        filesystem backend has one (NotSupported otherwise)."""
        ...

    def lock(
        self, name: str, *, wait_s: float, stale_s: float
    ) -> contextlib.AbstractContextManager[None]:
        """Exclusive across every host of the store: held by one holder at a time; a holder
        that stops renewing it for `stale_s` (it crashed) loses it."""
        ...


class FsBlobStore:
    """Blobs as files under `root`: a local directory, or a shared filesystem (NFS) mounted at
    the same or another path on every host. Needs of the filesystem: atomic rename within a
    directory, O_EXCL create, fsync (NFSv3+ has all three)."""

    kind = "fs"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    # Writing ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self, key: str) -> Iterator[Path]:
        dest = self.path(key)
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = dest.with_name(f"{dest.name}.{secrets.token_hex(4)}{PARTIAL}")
        try:
            yield partial
            _publish(partial, dest)
        finally:
            partial.unlink(missing_ok=True)

    def put(self, key: str, src: Path) -> int:
        with self.writing(key) as partial:
            shutil.copyfile(src, partial)
        return self.path(key).stat().st_size

    # Reading ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def reading(self, key: str) -> Iterator[Path]:
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(f"blob {key} not found")
        yield path

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def size(self, key: str) -> int | None:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> list[str]:
        directory = self.path(prefix)
        try:
            names = os.listdir(directory)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(n for n in names if not n.endswith(PARTIAL))

    def delete(self, key: str) -> None:
        path = self.path(key)
        try:
            if path.is_dir() and not path.is_symlink():
                # Renamed aside first: a half-deleted tree never shows under its key.
                doomed = path.with_name(f".{path.name}.{secrets.token_hex(4)}{PARTIAL}")
                path.rename(doomed)
                shutil.rmtree(doomed)
            else:
                path.unlink()
        except FileNotFoundError:
            return

    def tree(self, key: str) -> Path:
        path = self.path(key)
        if path.is_symlink():
            raise NotSupported(f"blob tree {key} is a symlink")
        return path

    # Locks ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, name: str, *, wait_s: float, stale_s: float) -> Iterator[None]:
        """A lock file made with O_EXCL; the holder touches it every `stale_s / 4` from a
        thread, and one untouched for `stale_s` is broken by the next waiter."""
        path = self.path(f"{LOCKS}/{check_key(name).replace('/', '_')}")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        deadline = time.monotonic() + wait_s
        holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        while not _try_create(path, holder):
            _break_if_stale(path, stale_s)
            if time.monotonic() >= deadline:
                raise BlobLockTimeout(f"blob lock {name} is held by {_holder(path)}")
            time.sleep(0.2)
        stop = threading.Event()
        keeper = threading.Thread(
            target=_keep, args=(path, stale_s / 4, stop), name=f"blob-lock-{name}", daemon=True
        )
        keeper.start()
        try:
            yield
        finally:
            stop.set()
            keeper.join()
            if _holder(path) == holder:
                path.unlink(missing_ok=True)


def _publish(partial: Path, dest: Path) -> None:
    """fsync the file, rename it into place, fsync the directory."""
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    partial.rename(dest)
    fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError:  # some network filesystems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def _try_create(path: Path, holder: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False
    except PermissionError:
        # Some network filesystems (sshfs: SFTP's generic failure) answer a lost O_EXCL
        # race (the file appeared on the server after this host's lookup) with EPERM.
        if path.exists():
            return False
        raise
    with os.fdopen(fd, "w") as f:
        json.dump({"holder": holder}, f)
    return True


def _holder(path: Path) -> str:
    try:
        return str(json.loads(path.read_text()).get("holder", ""))
    except (OSError, ValueError):
        return ""


def _break_if_stale(path: Path, stale_s: float) -> None:
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return
    if age < stale_s:
        return
    # Renamed aside, so two waiters breaking it at once cannot remove a fresh one.
    aside = path.with_name(f"{path.name}.{secrets.token_hex(4)}.stale")
    try:
        path.rename(aside)
    except FileNotFoundError:  # another waiter broke it first
        return
    if time.time() - aside.stat().st_mtime < stale_s:
        # Between our stat and rename another waiter broke it and took it: give it back.
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    else:
        log.warning("blob lock %s was stale (%.0f s untouched): broken", path.name, age)
    aside.unlink()


def _keep(path: Path, every_s: float, stop: threading.Event) -> None:
    while not stop.wait(every_s):
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)


def open_blobs(settings: Settings) -> FsBlobStore:
    """The blob store the settings name (`DECLAWD_BLOB_DIR`, else the state directory)."""
    return FsBlobStore(settings.blobs_path)
