"""The volumes of every team: create (empty or from an archive), get, list, download, delete.

A volume is a tree under `<volumes_dir>/<volume_id>/tree` (blob key `volumes/<id>/tree`)
with its records in the store. Invariants: another team's volume is NotFound; API writes
never take a team past its quota (checked under the team's lock, live read-write mounts
re-measured, since sandboxes write behind the API's back); a record exists only for a
complete tree (orphans swept at start, never one another server is creating on a shared
store: see `_prepare`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from declawd.blobs import BlobLockTimeout, open_blobs
from declawd.config import Settings
from declawd.errors import Conflict, InvalidInput, NotFound, TooLarge
from declawd.store import Store
from declawd.store.records import new_id
from declawd.store.volumes import VolumeRecord
from declawd.volumes import archives, host
from declawd.volumes.archives import ArchiveReport
from declawd.volumes.tree import CHUNK, DIR_MODE, VolumeTree, write_all

log = logging.getLogger(__name__)

# The SDK's name for volumes whose files can be read, written and locked one by one.
BACKEND = "file-granular"
CONTENT_TYPE = "application/gzip"
# The sandbox's default user (templates/plan.py): live-mounted trees must be writable by it.
SANDBOX_OWNER = (1000, 1000)
# Headers, padding and compression slack an archive may carry above its file bytes.
ARCHIVE_OVERHEAD = 1024 * archives.MAX_MEMBERS + (16 << 20)
MAX_NAME = 255

Filler = Callable[[Path, int], ArchiveReport | None]
# Spooled uploads and staged file writes nobody touched for this long are a crash's leftovers
# (a live one is written continuously, then consumed at once).
SCRATCH_STALE_S = 3600.0
# A create's lock: renewed while held, so only a crashed server's goes stale; a new volume id
# is never contended, the wait only covers a stale lock being broken.
CREATE_LOCK_STALE_S = 60.0
CREATE_LOCK_WAIT_S = 5.0


def _remove_stale(directory: Path, older_than_s: float) -> None:
    """Remove the entries of `directory` not modified for `older_than_s` (blocking)."""
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return
    cutoff = time.time() - older_than_s
    for entry in entries:
        try:
            if entry.lstat().st_mtime >= cutoff:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        except FileNotFoundError:
            continue


def volume_name(raw: object, label: str = "name") -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidInput(label, "is required")
    if len(raw) > MAX_NAME:
        raise InvalidInput(label, f"longer than {MAX_NAME} characters")
    if any(ord(ch) < 32 for ch in raw):
        raise InvalidInput(label, "must not contain control characters")
    return raw


class VolumeService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        owner: tuple[int, int] | None = SANDBOX_OWNER,
        guard: bool = True,
    ) -> None:
        """`owner` is given to every file and directory a volume gets (None: left as
        created, for tests without root); `guard` mounts the volumes dir `nosymfollow`."""
        self.settings = settings
        self.store = store
        self.root = settings.volumes_dir
        # The blob store the volumes live in (its root holds `volumes/`): its cross-host
        # locks guard a create against another server's start sweep.
        self.blobs = open_blobs(settings)
        self.owner = owner if os.geteuid() == 0 else None
        self._guard = guard
        self._team_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._started = False
        self._starting = asyncio.Lock()
        # Live mounts need the nosymfollow guard (volumes/host.py); copy mode does not.
        self.live_mounts = False

    # Start --------------------------------------------------------------------------
    async def start(self) -> None:
        """Once: guard the volumes dir and sweep what a crash left half made."""
        if self._started:
            return
        async with self._starting:
            if self._started:
                return
            await asyncio.to_thread(self._prepare)
            self._started = True

    def _prepare(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._guard:
            try:
                host.protect(self.root)
                self.live_mounts = True
            except Exception as exc:
                log.error("volumes: live mounts disabled, %s cannot be guarded: %s", self.root, exc)
        # On a shared blob store another API server may be making a volume, spooling an
        # upload or writing a file right now: a tree without a record is removed only under
        # its creation lock (held from its directory to its record), and spools and staged
        # writes only once nobody has touched them for SCRATCH_STALE_S.
        entries = list(self.root.iterdir())
        known = self.store.list_volume_ids()  # read after the listing (see _sweep_orphan)
        for entry in entries:
            if entry.name == ".incoming":
                _remove_stale(entry, SCRATCH_STALE_S)
            elif entry.name.startswith("vol-") and entry.name not in known:
                self._sweep_orphan(entry)
            elif entry.name.startswith("vol-"):
                shutil.rmtree(entry / "tree.partial", ignore_errors=True)
                _remove_stale(entry / "staging", SCRATCH_STALE_S)

    def _sweep_orphan(self, vdir: Path) -> None:
        """Remove a volume directory without a record, unless its create is under way."""
        try:
            with self._creating(vdir.name, wait_s=0):
                if self.store.get_volume(vdir.name) is not None:
                    return  # its create finished between the listing and the lock
                log.warning("volumes: removing %s, a volume with no record", vdir)
                shutil.rmtree(vdir, ignore_errors=True)
        except BlobLockTimeout:
            log.info("volumes: %s has no record yet: another server is creating it", vdir.name)

    def _creating(
        self, volume_id: str, *, wait_s: float
    ) -> contextlib.AbstractContextManager[None]:
        """The lock a create holds from the volume's directory to its record (blocking)."""
        return self.blobs.lock(f"volume-{volume_id}", wait_s=wait_s, stale_s=CREATE_LOCK_STALE_S)

    # Layout -------------------------------------------------------------------------
    def tree(self, volume_id: str) -> VolumeTree:
        vdir = self.root / volume_id
        return VolumeTree(vdir / "tree", vdir / "staging", self.owner)

    @property
    def quota_bytes(self) -> int:
        return self.settings.volume_quota_mb << 20

    def team_lock(self, team_id: str) -> asyncio.Lock:
        return self._team_locks[team_id]

    # Lookups ------------------------------------------------------------------------
    async def require(self, team_id: str, volume_id: str, *, label: str = "") -> VolumeRecord:
        """The team's volume as recorded, or NotFound (naming `label` when given)."""
        await self.start()
        rec = await asyncio.to_thread(self.store.get_volume, volume_id, team_id)
        if rec is None:
            prefix = f"{label}: " if label else ""
            raise NotFound(f"{prefix}volume '{volume_id}' not found")
        return rec

    async def get(self, team_id: str, volume_id: str) -> VolumeRecord:
        """The team's volume with its size now (re-measured while mounted read-write)."""
        rec = await self.require(team_id, volume_id)
        if volume_id in await asyncio.to_thread(self.store.rw_mounted_volumes, team_id):
            rec = await self._remeasure(rec)
        return rec

    async def list(self, team_id: str) -> list[VolumeRecord]:
        await self.start()
        await self.usage(team_id)
        return await asyncio.to_thread(self.store.list_volumes, team_id)

    async def _remeasure(self, rec: VolumeRecord) -> VolumeRecord:
        size = await asyncio.to_thread(self.tree(rec.volume_id).measure)
        if size != rec.size_bytes:
            await asyncio.to_thread(self.store.set_volume_size, rec.volume_id, size)
        return dataclasses.replace(rec, size_bytes=size)

    async def usage(self, team_id: str) -> int:
        """Bytes of the team's volumes, live read-write mounts measured now."""
        for vid in await asyncio.to_thread(self.store.rw_mounted_volumes, team_id):
            rec = await asyncio.to_thread(self.store.get_volume, vid, team_id)
            if rec is not None:
                await self._remeasure(rec)
        return await asyncio.to_thread(self.store.team_volume_bytes, team_id)

    async def allowance(self, team_id: str) -> int:
        """Bytes the team may still add."""
        return max(0, self.quota_bytes - await self.usage(team_id))

    def too_large(self, what: str) -> TooLarge:
        return TooLarge(
            f"{what}: over the team's volume quota of {self.settings.volume_quota_mb} MiB"
        )

    # Create -------------------------------------------------------------------------
    async def create(
        self,
        team_id: str,
        name: str,
        body: AsyncIterator[bytes] | None,
        *,
        declared: int | None = None,
        require_archive: bool = False,
    ) -> tuple[VolumeRecord, ArchiveReport | None]:
        """A new volume: empty without a body (or an empty one), else the archive's files.

        The body is spooled to disk first (bounded by what the quota leaves, plus archive
        overhead), then extracted under the team's lock with the quota checked again.
        """
        await self.start()
        name = volume_name(name)
        if body is None:
            if require_archive:
                raise InvalidInput("request body", "a tar.gz archive is required")
            return await self.create_from(team_id, name, lambda _t, _m: None), None
        limit = await self.allowance(team_id) + ARCHIVE_OVERHEAD
        if declared is not None and declared > limit:
            raise self.too_large("request body")
        spool = await self.spool(body, limit)
        try:
            if spool.stat().st_size == 0:
                if require_archive:
                    raise InvalidInput("request body", "a tar.gz archive is required")
                return await self.create_from(team_id, name, lambda _t, _m: None), None
            reports: list[ArchiveReport] = []

            def fill(target: Path, max_bytes: int) -> ArchiveReport:
                with open(spool, "rb") as f:
                    report = archives.extract(f, target, max_bytes=max_bytes, owner=self.owner)
                reports.append(report)
                return report

            rec = await self.create_from(team_id, name, fill)
            return rec, reports[0]
        finally:
            spool.unlink(missing_ok=True)

    async def spool(self, body: AsyncIterator[bytes], limit: int) -> Path:
        """Write a request body to a private temp file, at most `limit` bytes (TooLarge)."""
        incoming = self.root / ".incoming"
        await asyncio.to_thread(incoming.mkdir, mode=0o700, parents=True, exist_ok=True)
        fd, name = await asyncio.to_thread(tempfile.mkstemp, dir=incoming, prefix="in-")
        path = Path(name)
        try:
            await self.copy_body(body, fd, limit, "request body")
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        return path

    async def copy_body(self, body: AsyncIterator[bytes], fd: int, limit: int, what: str) -> int:
        """Copy `body` into `fd` in worker threads, batching small chunks; TooLarge past
        `limit` bytes. Returns the bytes written."""
        total = 0
        batch = bytearray()
        async for chunk in body:
            total += len(chunk)
            if total > limit:
                raise self.too_large(what)
            batch += chunk
            if len(batch) >= CHUNK:
                await asyncio.to_thread(write_all, fd, bytes(batch))
                batch.clear()
        if batch:
            await asyncio.to_thread(write_all, fd, bytes(batch))
        return total

    async def create_from(self, team_id: str, name: str, fill: Filler) -> VolumeRecord:
        """Make a volume whose tree `fill(target_dir, max_bytes)` populates, under the team's
        lock; the record is written only once the tree is complete."""
        volume_id = new_id("vol")
        async with self.team_lock(team_id):
            allowance = await self.allowance(team_id)
            # Held until the record is in: another server's start sweep leaves the tree be.
            creating = self._creating(volume_id, wait_s=CREATE_LOCK_WAIT_S)
            await asyncio.to_thread(creating.__enter__)
            try:
                size = await asyncio.to_thread(self._make_tree, volume_id, fill, allowance)
                if size > allowance:
                    await asyncio.to_thread(shutil.rmtree, self.root / volume_id, True)
                    raise self.too_large("volume")
                now = time.time()
                rec = VolumeRecord(
                    volume_id=volume_id,
                    team_id=team_id,
                    name=name,
                    created_at=now,
                    updated_at=now,
                    size_bytes=size,
                )
                try:
                    await asyncio.to_thread(self.store.insert_volume, rec)
                except BaseException:
                    await asyncio.to_thread(shutil.rmtree, self.root / volume_id, True)
                    raise
            finally:
                await asyncio.to_thread(creating.__exit__, None, None, None)
        log.info("volume %s (%r) created for team %s: %d bytes", volume_id, name, team_id, size)
        return rec

    def _make_tree(self, volume_id: str, fill: Filler, max_bytes: int) -> int:
        vdir = self.root / volume_id
        partial = vdir / "tree.partial"
        vdir.mkdir(mode=0o700)
        try:
            partial.mkdir(mode=DIR_MODE)
            if self.owner is not None:
                os.chown(partial, *self.owner)
            fill(partial, max_bytes)
            partial.rename(vdir / "tree")
            return self.tree(volume_id).measure()
        except BaseException:
            shutil.rmtree(vdir, ignore_errors=True)
            raise

    # Delete, download ---------------------------------------------------------------
    async def delete(self, team_id: str, volume_id: str) -> None:
        """Delete the volume (404 if absent). A volume a sandbox mounts live → Conflict."""
        rec = await self.require(team_id, volume_id)
        async with self.team_lock(team_id):
            mounts = await asyncio.to_thread(self.store.live_mounts_of, volume_id)
            if mounts:
                holders = ", ".join(sorted({m.sandbox_id for m in mounts}))
                raise Conflict(f"volume '{volume_id}' is mounted by sandbox {holders}")
            await asyncio.to_thread(self.store.delete_volume, rec.volume_id)
        # The record is gone first: a crash here leaves a tree the start sweep removes.
        await asyncio.to_thread(shutil.rmtree, self.root / volume_id, True)
        log.info("volume %s deleted by team %s", volume_id, team_id)

    async def download(self, team_id: str, volume_id: str) -> AsyncIterator[bytes]:
        """The volume's files as a tar.gz stream (404 if absent)."""
        await self.require(team_id, volume_id)
        return archives.tar_chunks(self.tree(volume_id), compress=True)
