"""One volume's files through the API (the SDK's `VolumeFiles` and `VolumeLocks`).

Every answer carries the version of the stat just read, so a change through a live mount shows
as a new version the next time the API looks. `if_version` is a compare-and-swap, checked
before the upload and again under the team's lock right before the rename into place (`"0"`:
only if nothing is there); live-mount writes are outside it. Leases are advisory.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from declawd.errors import Conflict, InvalidInput, NotFound
from declawd.store.volumes import FileStat, Lease
from declawd.volumes.paths import name_of, volume_path
from declawd.volumes.service import VolumeService
from declawd.volumes.tree import CHUNK, VolumeTree

DEFAULT_LOCK_TTL_S = 60
MAX_LOCK_TTL_S = 86400
ABSENT = ("", "0")


@dataclass(frozen=True)
class FileInfo:
    name: str
    path: str
    stat: FileStat
    version: int


class VolumeFiles:
    def __init__(self, service: VolumeService) -> None:
        self.service = service
        self.store = service.store

    async def _tree(self, team_id: str, volume_id: str) -> VolumeTree:
        await self.service.require(team_id, volume_id)
        return self.service.tree(volume_id)

    async def _versions(self, volume_id: str, stats: dict[str, FileStat | None]) -> dict[str, int]:
        return await asyncio.to_thread(self.store.file_versions, volume_id, stats)

    async def _current(
        self, tree: VolumeTree, volume_id: str, path: str
    ) -> tuple[FileStat | None, int | None]:
        st = await asyncio.to_thread(tree.stat, path)
        versions = await self._versions(volume_id, {path: st})
        return st, versions.get(path)

    # Reading ------------------------------------------------------------------------
    async def info(self, team_id: str, volume_id: str, raw_path: str | None) -> FileInfo:
        path = volume_path(raw_path)
        tree = await self._tree(team_id, volume_id)
        st, version = await self._current(tree, volume_id, path)
        if st is None or version is None:
            raise NotFound(f"path: not found: {path}")
        return FileInfo(name_of(path), path, st, version)

    async def exists(self, team_id: str, volume_id: str, raw_path: str | None) -> bool:
        path = volume_path(raw_path)
        tree = await self._tree(team_id, volume_id)
        return await asyncio.to_thread(tree.stat, path) is not None

    async def list(self, team_id: str, volume_id: str, raw_path: str | None) -> list[FileInfo]:
        path = volume_path(raw_path or "/")
        tree = await self._tree(team_id, volume_id)
        entries = await asyncio.to_thread(tree.list, path)
        versions = await self._versions(volume_id, {e.path: e.stat for e in entries})
        return [FileInfo(e.name, e.path, e.stat, versions[e.path]) for e in entries]

    async def read(
        self, team_id: str, volume_id: str, raw_path: str | None
    ) -> tuple[FileInfo, AsyncIterator[bytes]]:
        """The file's version and its bytes, read from one open descriptor."""
        path = volume_path(raw_path)
        tree = await self._tree(team_id, volume_id)
        fd, st = await asyncio.to_thread(tree.open_file, path)
        try:
            versions = await self._versions(volume_id, {path: st})
        except BaseException:
            os.close(fd)
            raise

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while data := await asyncio.to_thread(os.read, fd, CHUNK):
                    yield data
            finally:
                os.close(fd)

        return FileInfo(name_of(path), path, st, versions[path]), chunks()

    # Writing ------------------------------------------------------------------------
    @staticmethod
    def _check_version(path: str, expected: str | None, have: int | None) -> None:
        if expected is None:
            return
        if expected in ABSENT:
            if have is not None:
                raise Conflict(
                    f"path: {path} exists (version {have}); if_version {expected!r} wants none",
                    code="version_mismatch",
                )
            return
        if str(have) != expected:
            now = "it does not exist" if have is None else f"it is at version {have}"
            raise Conflict(
                f"path: version mismatch for {path}: if_version is {expected}, {now}",
                code="version_mismatch",
            )

    async def write(
        self,
        team_id: str,
        volume_id: str,
        raw_path: str | None,
        body: AsyncIterator[bytes],
        *,
        if_version: str | None = None,
        declared: int | None = None,
    ) -> FileInfo:
        path = volume_path(raw_path)
        if path == "/":
            raise InvalidInput("path", "is the volume root")
        svc = self.service
        tree = await self._tree(team_id, volume_id)
        st, version = await self._current(tree, volume_id, path)
        self._check_version(path, if_version, version)
        if st is not None and st.is_dir:
            raise InvalidInput("path", f"is a directory: {path}")
        limit = await svc.allowance(team_id) + (st.size if st else 0)
        if declared is not None and declared > limit:
            raise svc.too_large("body")
        fd, temp = await asyncio.to_thread(tree.temp_file)
        try:
            try:
                written = await svc.copy_body(body, fd, limit, "body")
            finally:
                os.close(fd)
            async with svc.team_lock(team_id):
                st, version = await self._current(tree, volume_id, path)
                self._check_version(path, if_version, version)
                old = st.size if st is not None and not st.is_dir else 0
                if written > await svc.allowance(team_id) + old:
                    raise svc.too_large("body")
                placed = await asyncio.to_thread(tree.place, temp, path)
                await self._resize(volume_id, placed.size - old)
                versions = await self._versions(volume_id, {path: placed})
        finally:
            await asyncio.to_thread(tree.discard, temp)
        return FileInfo(name_of(path), path, placed, versions[path])

    async def _resize(self, volume_id: str, delta: int) -> None:
        """Account a change of `delta` bytes (and stamp `updated_at`); under the team lock."""
        rec = await asyncio.to_thread(self.store.get_volume, volume_id)
        if rec is not None:
            await asyncio.to_thread(self.store.set_volume_size, volume_id, rec.size_bytes + delta)

    async def remove(
        self, team_id: str, volume_id: str, raw_path: str | None, *, recursive: bool
    ) -> None:
        path = volume_path(raw_path)
        tree = await self._tree(team_id, volume_id)
        async with self.service.team_lock(team_id):
            freed = await asyncio.to_thread(tree.measure, path)
            await asyncio.to_thread(tree.remove, path, recursive=recursive)
            await asyncio.to_thread(self.store.forget_files, volume_id, [path])
            await self._resize(volume_id, -freed)

    async def rename(
        self, team_id: str, volume_id: str, raw_old: str | None, raw_new: str | None
    ) -> FileInfo:
        old = volume_path(raw_old, "old_path")
        new = volume_path(raw_new, "new_path")
        tree = await self._tree(team_id, volume_id)
        async with self.service.team_lock(team_id):
            replaced = await asyncio.to_thread(tree.stat, new)
            await asyncio.to_thread(tree.rename, old, new)
            await asyncio.to_thread(self.store.forget_files, volume_id, [old, new])
            lost = replaced.size if replaced is not None and not replaced.is_dir else 0
            await self._resize(volume_id, -lost)
        return await self.info(team_id, volume_id, new)

    async def mkdir(self, team_id: str, volume_id: str, raw_path: str | None) -> str:
        path = volume_path(raw_path)
        tree = await self._tree(team_id, volume_id)
        await asyncio.to_thread(tree.mkdirs, path)
        return path

    # Leases -------------------------------------------------------------------------
    @staticmethod
    def ttl(raw: object) -> float:
        if raw is None:
            return float(DEFAULT_LOCK_TTL_S)
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise InvalidInput("ttl_seconds", "must be a number of seconds")
        if not 1 <= raw <= MAX_LOCK_TTL_S:
            raise InvalidInput("ttl_seconds", f"must be between 1 and {MAX_LOCK_TTL_S}")
        return float(raw)

    async def acquire(
        self, team_id: str, volume_id: str, raw_path: object, ttl_s: float
    ) -> tuple[str, Lease]:
        path = volume_path(_str(raw_path))
        await self.service.require(team_id, volume_id)
        lease = await asyncio.to_thread(self.store.acquire_lock, volume_id, path, ttl_s)
        if lease is None:
            raise Conflict(f"path: {path} is locked by another holder", code="locked")
        return path, lease

    async def renew(
        self, team_id: str, volume_id: str, raw_path: object, token: object, ttl_s: float
    ) -> tuple[str, Lease]:
        path = volume_path(_str(raw_path))
        await self.service.require(team_id, volume_id)
        lease = await asyncio.to_thread(
            self.store.renew_lock, volume_id, path, _token(token), ttl_s
        )
        if lease is None:
            raise Conflict(f"token: does not hold the lock on {path}", code="not_lock_holder")
        return path, lease

    async def release(self, team_id: str, volume_id: str, raw_path: object, token: object) -> None:
        path = volume_path(_str(raw_path))
        await self.service.require(team_id, volume_id)
        if not await asyncio.to_thread(self.store.release_lock, volume_id, path, _token(token)):
            raise Conflict(f"token: does not hold the lock on {path}", code="not_lock_holder")

    async def status(self, team_id: str, volume_id: str, raw_path: str | None) -> Lease | None:
        path = volume_path(raw_path)
        await self.service.require(team_id, volume_id)
        return await asyncio.to_thread(self.store.lock_status, volume_id, path)


def _str(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidInput("path", "must be a string")
    return value


def _token(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput("token", "is required")
    return value
