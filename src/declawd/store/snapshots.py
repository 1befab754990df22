"""Snapshot records: what was captured of a sandbox, when, and whether its blob is complete.

A snapshot is `writing` until its blob (node/snapshots.py) is complete, then `ready`, or
`failed` with its error; only ready ones are listed or restored from. Invariants: at most
one snapshot of a sandbox is `writing` at a time (checked and inserted in one IMMEDIATE
transaction, so two captures never freeze one sandbox at once, across processes too); every
lookup a user can reach is team-scoped; listing order is (created_at, snapshot_id) newest
first, so paging tokens stay valid while snapshots come and go.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from declawd.errors import Busy, InvalidInput
from declawd.store.errors import RecordNotFound
from declawd.store.model import SandboxRecord, normalize_sandbox_config
from declawd.store.records import (
    Repository,
    decode_token,
    encode_token,
    encode_values,
    insert_row,
    placeholders,
    quoted,
    row_to_dict,
    update_row,
    valid_time_id_token,
)

MAX_LIST_LIMIT = 1000


class SnapshotSource(StrEnum):
    MANUAL = "manual"
    PAUSE = "pause"
    PERIODIC = "periodic"


class SnapshotState(StrEnum):
    WRITING = "writing"
    READY = "ready"
    FAILED = "failed"


# Restore without a snapshot id takes the newest of the best source (the SDK's documented
# preference): a pause snapshot is the sandbox exactly as it stopped.
RESTORE_PREFERENCE: tuple[SnapshotSource, ...] = (
    SnapshotSource.PAUSE,
    SnapshotSource.PERIODIC,
    SnapshotSource.MANUAL,
)


@dataclass(frozen=True)
class SnapshotRecord:
    snapshot_id: str
    team_id: str
    sandbox_id: str
    source: SnapshotSource
    state: SnapshotState
    created_at: float
    # The sandbox as it was at capture: what a restore brings back.
    template_id: str = ""
    template_alias: str = ""
    runtime: str = "runc"
    network: Mapping[str, Any] = field(default_factory=dict)
    security: Mapping[str, Any] | None = None
    envs: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    lifecycle: Mapping[str, Any] = field(default_factory=dict)
    timeout: int = 0
    cpu_count: float = 1.0
    memory_mb: int = 512
    # Size of the filesystem blob; memory is never captured on this node (mem_bytes None).
    fs_bytes: int | None = None
    mem_bytes: int | None = None
    # How long the capture kept the sandbox frozen (0 when it was paused already).
    pause_duration_ms: int | None = None
    error: str | None = None

    @property
    def is_ready(self) -> bool:
        return self.state is SnapshotState.READY

    def replace(self, **changes: Any) -> SnapshotRecord:
        return dataclasses.replace(self, **changes)


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SnapshotRecord))
JSON_FIELDS: tuple[str, ...] = ("network", "security", "envs", "metadata", "lifecycle")


def snapshot_of(
    rec: SandboxRecord, source: SnapshotSource | str, *, snapshot_id: str, created_at: float
) -> SnapshotRecord:
    """A `writing` snapshot of `rec` as it is now (its template, policy, envs, limits)."""
    return SnapshotRecord(
        snapshot_id=snapshot_id,
        team_id=rec.team_id,
        sandbox_id=rec.sandbox_id,
        source=SnapshotSource(source),
        state=SnapshotState.WRITING,
        created_at=created_at,
        template_id=rec.template_id,
        template_alias=rec.template_alias,
        runtime=rec.runtime,
        network=dict(rec.network),
        security=dict(rec.security) if rec.security is not None else None,
        envs=dict(rec.envs),
        metadata=dict(rec.metadata),
        lifecycle=dict(rec.lifecycle),
        timeout=rec.timeout,
        cpu_count=rec.cpu_count,
        memory_mb=rec.memory_mb,
    )


def _record(row: Any) -> SnapshotRecord:
    values = row_to_dict(row, JSON_FIELDS)
    values = {k: values[k] for k in FIELDS if k in values}
    values["source"] = SnapshotSource(values["source"])
    values["state"] = SnapshotState(values["state"])
    normalize_sandbox_config(values)
    return SnapshotRecord(**values)


def _encode(fields: dict[str, Any]) -> dict[str, Any]:
    if "source" in fields:
        fields["source"] = SnapshotSource(fields["source"]).value
    if "state" in fields:
        fields["state"] = SnapshotState(fields["state"]).value
    for name in JSON_FIELDS:
        if fields.get(name) is not None:
            fields[name] = dict(fields[name])
    return encode_values("snapshots", fields, FIELDS, JSON_FIELDS)


_NEWEST_FIRST = "ORDER BY created_at DESC, snapshot_id DESC"


class Snapshots(Repository):
    def insert_snapshot(self, snap: SnapshotRecord) -> None:
        """Insert a new record. While another snapshot of the same sandbox is `writing`,
        a `writing` one is refused with `Busy`; duplicate id → `Duplicate`."""
        if not snap.snapshot_id or not snap.team_id or not snap.sandbox_id:
            raise ValueError("insert_snapshot: snapshot_id, team_id and sandbox_id are required")
        values = _encode({f: getattr(snap, f) for f in FIELDS})
        if snap.state is not SnapshotState.WRITING:
            insert_row(self._db, "snapshots", values)
            return
        with self._db.write() as c:
            busy = c.execute(
                "SELECT snapshot_id FROM snapshots WHERE sandbox_id = ? AND state = ?",
                (snap.sandbox_id, SnapshotState.WRITING.value),
            ).fetchone()
            if busy is not None:
                raise Busy(
                    f"sandbox '{snap.sandbox_id}': snapshot '{busy['snapshot_id']}' is"
                    " still being written",
                    retry_after=2.0,
                )
            c.execute(
                f"INSERT INTO snapshots ({', '.join(map(quoted, values))})"
                f" VALUES ({placeholders(values)})",
                list(values.values()),
            )

    def update_snapshot(self, snapshot_id: str, /, **fields: Any) -> None:
        """Set the given fields. Unknown field → TypeError; unknown id → RecordNotFound."""
        if "snapshot_id" in fields:
            raise TypeError("snapshots: snapshot_id cannot be changed")
        if not update_row(self._db, "snapshots", "snapshot_id", snapshot_id, _encode(fields)):
            raise RecordNotFound(f"snapshot {snapshot_id} not found")

    def get_snapshot(self, snapshot_id: str, team_id: str | None = None) -> SnapshotRecord | None:
        """The record in any state; with `team_id`, only if it is that team's."""
        sql, params = "SELECT * FROM snapshots WHERE snapshot_id = ?", [snapshot_id]
        if team_id is not None:
            sql, params = sql + " AND team_id = ?", [*params, team_id]
        row = self._db.query_one(sql, params)
        return _record(row) if row else None

    def delete_snapshot(self, snapshot_id: str) -> bool:
        """Forget the record; True if there was one."""
        with self._db.write() as c:
            cur = c.execute("DELETE FROM snapshots WHERE snapshot_id = ?", (snapshot_id,))
            return cur.rowcount > 0

    def list_sandbox_snapshots(
        self,
        team_id: str,
        sandbox_id: str,
        *,
        sources: Iterable[SnapshotSource] | None = None,
        states: Iterable[SnapshotState] | None = (SnapshotState.READY,),
    ) -> list[SnapshotRecord]:
        """The sandbox's snapshots, newest first: ready ones unless `states` says otherwise
        (None: every state); every source unless `sources` narrows it."""
        where, params = ["team_id = ?", "sandbox_id = ?"], [team_id, sandbox_id]
        if sources is not None:
            wanted = [SnapshotSource(s).value for s in sources]
            where.append(f"source IN ({placeholders(wanted)})")
            params.extend(wanted)
        if states is not None:
            wanted = [SnapshotState(s).value for s in states]
            where.append(f"state IN ({placeholders(wanted)})")
            params.extend(wanted)
        rows = self._db.query(
            f"SELECT * FROM snapshots WHERE {' AND '.join(where)} {_NEWEST_FIRST}", params
        )
        return [_record(r) for r in rows]

    def list_snapshots(
        self,
        team_id: str,
        *,
        sandbox_id: str | None = None,
        limit: int = 50,
        next_token: str | None = None,
    ) -> tuple[list[SnapshotRecord], str | None]:
        """One page of the team's ready snapshots (of one sandbox, if given), newest first.

        Returns (page, token for the next page or None when this is the last page).
        """
        if limit < 1:
            raise InvalidInput("limit", "must be at least 1")
        limit = min(limit, MAX_LIST_LIMIT)
        where = ["team_id = ?", "state = ?"]
        params: list[Any] = [team_id, SnapshotState.READY.value]
        if sandbox_id:
            where.append("sandbox_id = ?")
            params.append(sandbox_id)
        if next_token:
            created_at, last_id = decode_token(next_token, valid_time_id_token)
            where.append("(created_at < ? OR (created_at = ? AND snapshot_id < ?))")
            params.extend([created_at, created_at, last_id])
        rows = self._db.query(
            f"SELECT * FROM snapshots WHERE {' AND '.join(where)} {_NEWEST_FIRST} LIMIT ?",
            [*params, limit + 1],
        )
        page = [_record(r) for r in rows[:limit]]
        token = None
        if len(rows) > limit:
            last = page[-1]
            token = encode_token([last.created_at, last.snapshot_id])
        return page, token

    def count_snapshots_using(self, template_id: str) -> int:
        """Snapshots a restore would mount this template's layers under (not failed ones)."""
        row = self._db.query_one(
            "SELECT COUNT(*) FROM snapshots WHERE template_id = ? AND state != 'failed'",
            (template_id,),
        )
        return int(row[0]) if row else 0

    def latest_snapshot(self, team_id: str, sandbox_id: str) -> SnapshotRecord | None:
        """What a restore without a snapshot id uses: the newest ready snapshot of the best
        source in `RESTORE_PREFERENCE` (pause > periodic > manual); None when there is none."""
        rank = " ".join(f"WHEN '{s.value}' THEN {i}" for i, s in enumerate(RESTORE_PREFERENCE))
        row = self._db.query_one(
            "SELECT * FROM snapshots WHERE team_id = ? AND sandbox_id = ? AND state = ?"
            f" ORDER BY CASE source {rank} ELSE {len(RESTORE_PREFERENCE)} END,"
            " created_at DESC, snapshot_id DESC LIMIT 1",
            (team_id, sandbox_id, SnapshotState.READY.value),
        )
        return _record(row) if row else None

    def writing_snapshot(self, sandbox_id: str) -> SnapshotRecord | None:
        """The sandbox's snapshot being written now, if any."""
        row = self._db.query_one(
            "SELECT * FROM snapshots WHERE sandbox_id = ? AND state = ?",
            (sandbox_id, SnapshotState.WRITING.value),
        )
        return _record(row) if row else None

    def list_snapshots_in_state(self, state: SnapshotState) -> list[SnapshotRecord]:
        """Every team's snapshots in `state`, oldest first (the start-up sweep's work list)."""
        rows = self._db.query(
            "SELECT * FROM snapshots WHERE state = ? ORDER BY created_at, snapshot_id",
            (SnapshotState(state).value,),
        )
        return [_record(r) for r in rows]

    def snapshot_ids(self) -> set[str]:
        """Ids of every snapshot record, in any state (to find blobs that have none)."""
        return {str(r[0]) for r in self._db.query("SELECT snapshot_id FROM snapshots")}
