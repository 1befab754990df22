"""Volume records: volumes, the versions of their files, leases over paths, attachments.

Each version is stored with the stat it was issued for, so a change behind the API's back (a
live mount) shows as a different stat and gets a new version. Invariants: a version is never
reused within a volume (`version_seq` only grows, in the transaction that hands it out), and a
path has at most one unexpired lease (primary key; expired ones cleared when the next is taken).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from declawd.store.errors import RecordNotFound
from declawd.store.records import Repository, encode_json, row_to_dict


@dataclass(frozen=True)
class VolumeRecord:
    volume_id: str
    team_id: str
    name: str
    created_at: float
    updated_at: float
    size_bytes: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FileStat:
    """What the disk says about one path: enough to tell that it changed."""

    is_dir: bool
    size: int
    mode: int
    mtime_ns: int
    ctime_ns: int
    ino: int


@dataclass(frozen=True)
class Lease:
    token: str
    expires_at: float


@dataclass(frozen=True)
class AttachmentRow:
    sandbox_id: str
    volume_id: str
    mount_path: str
    mode: str
    subpath: str = ""


def _volume(row: Any) -> VolumeRecord:
    d = row_to_dict(row, ("metadata",))
    return VolumeRecord(
        volume_id=d["volume_id"],
        team_id=d["team_id"],
        name=d["name"],
        created_at=d["created_at"],
        updated_at=d["updated_at"],
        size_bytes=int(d["size_bytes"]),
        metadata=d["metadata"] or {},
    )


def _same(row: Any, st: FileStat) -> bool:
    return (
        bool(row["is_dir"]) == st.is_dir
        and row["size"] == st.size
        and row["mtime_ns"] == st.mtime_ns
        and row["ctime_ns"] == st.ctime_ns
        and row["ino"] == st.ino
    )


def _under(path: str) -> str:
    """LIKE pattern for every path strictly below `path` ('/' is the root)."""
    base = path.rstrip("/").replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return base + "/%"


class Volumes(Repository):
    # Volumes ------------------------------------------------------------------------
    def insert_volume(self, rec: VolumeRecord) -> None:
        with self._db.write() as c:
            c.execute(
                "INSERT INTO volumes (volume_id, team_id, name, size_bytes, metadata,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.volume_id,
                    rec.team_id,
                    rec.name,
                    rec.size_bytes,
                    encode_json(dict(rec.metadata)),
                    rec.created_at,
                    rec.updated_at,
                ),
            )

    def get_volume(self, volume_id: str, team_id: str | None = None) -> VolumeRecord | None:
        """The volume, or None when it does not exist or (with `team_id`) is another team's."""
        row = self._db.query_one("SELECT * FROM volumes WHERE volume_id = ?", (volume_id,))
        if row is None or (team_id is not None and row["team_id"] != team_id):
            return None
        return _volume(row)

    def list_volumes(self, team_id: str) -> list[VolumeRecord]:
        """The team's volumes, newest first."""
        rows = self._db.query(
            "SELECT * FROM volumes WHERE team_id = ? ORDER BY created_at DESC, volume_id DESC",
            (team_id,),
        )
        return [_volume(r) for r in rows]

    def list_volume_ids(self) -> set[str]:
        return {r[0] for r in self._db.query("SELECT volume_id FROM volumes")}

    def set_volume_size(self, volume_id: str, size_bytes: int) -> None:
        with self._db.write() as c:
            cur = c.execute(
                "UPDATE volumes SET size_bytes = ?, updated_at = ? WHERE volume_id = ?",
                (max(0, size_bytes), self._clock(), volume_id),
            )
            if cur.rowcount == 0:
                raise RecordNotFound(f"volume {volume_id} not found")

    def team_volume_bytes(self, team_id: str) -> int:
        row = self._db.query_one(
            "SELECT COALESCE(SUM(size_bytes), 0) FROM volumes WHERE team_id = ?", (team_id,)
        )
        return int(row[0]) if row else 0

    def delete_volume(self, volume_id: str) -> bool:
        """Drop the volume with its versions, leases and attachment rows; False if absent."""
        with self._db.write() as c:
            c.execute("DELETE FROM volume_files WHERE volume_id = ?", (volume_id,))
            c.execute("DELETE FROM volume_locks WHERE volume_id = ?", (volume_id,))
            c.execute("DELETE FROM volume_attachments WHERE volume_id = ?", (volume_id,))
            return c.execute("DELETE FROM volumes WHERE volume_id = ?", (volume_id,)).rowcount > 0

    # Versions -----------------------------------------------------------------------
    def file_versions(self, volume_id: str, stats: Mapping[str, FileStat | None]) -> dict[str, int]:
        """The version of each path for the stat the disk gave now.

        A path whose stat matches its row keeps its version; a new or changed one gets the
        next number of the volume; a path that is gone (None) loses its row (a missing path
        has no version). Done in one transaction, so two callers that saw the same stat
        agree on the version instead of bumping it twice.
        """
        out: dict[str, int] = {}
        with self._db.write() as c:
            seq_row = c.execute(
                "SELECT version_seq FROM volumes WHERE volume_id = ?", (volume_id,)
            ).fetchone()
            if seq_row is None:
                raise RecordNotFound(f"volume {volume_id} not found")
            seq = start = int(seq_row[0])
            for path, st in stats.items():
                row = c.execute(
                    "SELECT * FROM volume_files WHERE volume_id = ? AND path = ?",
                    (volume_id, path),
                ).fetchone()
                if st is None:
                    if row is not None:
                        c.execute(
                            "DELETE FROM volume_files WHERE volume_id = ? AND path = ?",
                            (volume_id, path),
                        )
                    continue
                if row is not None and _same(row, st):
                    out[path] = int(row["version"])
                    continue
                seq += 1
                c.execute(
                    "INSERT INTO volume_files (volume_id, path, is_dir, size, mode, version,"
                    " mtime_ns, ctime_ns, ino) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (volume_id, path) DO UPDATE SET is_dir = excluded.is_dir,"
                    " size = excluded.size, mode = excluded.mode, version = excluded.version,"
                    " mtime_ns = excluded.mtime_ns, ctime_ns = excluded.ctime_ns,"
                    " ino = excluded.ino",
                    (
                        volume_id,
                        path,
                        int(st.is_dir),
                        st.size,
                        st.mode,
                        seq,
                        st.mtime_ns,
                        st.ctime_ns,
                        st.ino,
                    ),
                )
                out[path] = seq
            if seq != start:
                c.execute(
                    "UPDATE volumes SET version_seq = ? WHERE volume_id = ?", (seq, volume_id)
                )
        return out

    def forget_files(self, volume_id: str, paths: Iterable[str]) -> None:
        """Drop the version rows of each path and of everything below it."""
        with self._db.write() as c:
            for path in paths:
                c.execute(
                    "DELETE FROM volume_files WHERE volume_id = ? AND (path = ? OR path LIKE ?"
                    " ESCAPE '\\')",
                    (volume_id, path, _under(path)),
                )

    # Leases -------------------------------------------------------------------------
    def acquire_lock(self, volume_id: str, path: str, ttl_s: float) -> Lease | None:
        """A new lease over (volume, path), or None while someone else's is unexpired."""
        now = self._clock()
        with self._db.write() as c:
            c.execute(
                "DELETE FROM volume_locks WHERE volume_id = ? AND path = ? AND expires_at <= ?",
                (volume_id, path, now),
            )
            held = c.execute(
                "SELECT 1 FROM volume_locks WHERE volume_id = ? AND path = ?", (volume_id, path)
            ).fetchone()
            if held is not None:
                return None
            lease = Lease(secrets.token_urlsafe(18), now + ttl_s)
            c.execute(
                "INSERT INTO volume_locks (volume_id, path, token, expires_at) VALUES (?, ?, ?, ?)",
                (volume_id, path, lease.token, lease.expires_at),
            )
            return lease

    def renew_lock(self, volume_id: str, path: str, token: str, ttl_s: float) -> Lease | None:
        """Extend the caller's unexpired lease; None if `token` does not hold it (any more)."""
        now = self._clock()
        with self._db.write() as c:
            cur = c.execute(
                "UPDATE volume_locks SET expires_at = ? WHERE volume_id = ? AND path = ?"
                " AND token = ? AND expires_at > ?",
                (now + ttl_s, volume_id, path, token, now),
            )
            return Lease(token, now + ttl_s) if cur.rowcount else None

    def release_lock(self, volume_id: str, path: str, token: str) -> bool:
        """End the caller's unexpired lease; False if `token` does not hold it."""
        now = self._clock()
        with self._db.write() as c:
            cur = c.execute(
                "DELETE FROM volume_locks WHERE volume_id = ? AND path = ? AND token = ?"
                " AND expires_at > ?",
                (volume_id, path, token, now),
            )
            return cur.rowcount > 0

    def lock_status(self, volume_id: str, path: str) -> Lease | None:
        """The unexpired lease over the path, if any."""
        row = self._db.query_one(
            "SELECT token, expires_at FROM volume_locks WHERE volume_id = ? AND path = ?"
            " AND expires_at > ?",
            (volume_id, path, self._clock()),
        )
        return Lease(row["token"], float(row["expires_at"])) if row else None

    # Attachments --------------------------------------------------------------------
    def record_attachments(self, sandbox_id: str, rows: Iterable[AttachmentRow]) -> None:
        """Replace what the sandbox has attached (a restore under the same id re-records)."""
        with self._db.write() as c:
            c.execute("DELETE FROM volume_attachments WHERE sandbox_id = ?", (sandbox_id,))
            for r in rows:
                c.execute(
                    "INSERT INTO volume_attachments (sandbox_id, volume_id, mount_path, mode,"
                    " subpath) VALUES (?, ?, ?, ?, ?)",
                    (sandbox_id, r.volume_id, r.mount_path, r.mode, r.subpath),
                )

    def attachments_of(self, sandbox_id: str) -> list[AttachmentRow]:
        rows = self._db.query(
            "SELECT * FROM volume_attachments WHERE sandbox_id = ? ORDER BY mount_path",
            (sandbox_id,),
        )
        return [AttachmentRow(**dict(r)) for r in rows]

    def live_mounts_of(self, volume_id: str) -> list[AttachmentRow]:
        """Live (mount, mount-ro) attachments of sandboxes that still hold their mounts."""
        rows = self._db.query(
            "SELECT a.* FROM volume_attachments a JOIN sandboxes s USING (sandbox_id)"
            " WHERE a.volume_id = ? AND a.mode != 'copy' AND s.released = 0"
            " ORDER BY a.sandbox_id",
            (volume_id,),
        )
        return [AttachmentRow(**dict(r)) for r in rows]

    def rw_mounted_volumes(self, team_id: str) -> set[str]:
        """The team's volumes a sandbox may be writing to right now (a `mount` attachment)."""
        rows = self._db.query(
            "SELECT DISTINCT a.volume_id FROM volume_attachments a"
            " JOIN sandboxes s USING (sandbox_id) JOIN volumes v USING (volume_id)"
            " WHERE v.team_id = ? AND a.mode = 'mount' AND s.released = 0",
            (team_id,),
        )
        return {r[0] for r in rows}
