"""Network audit events: batch insert, filtered paging, and tailing for the live stream.

The gateway daemon (another process) also inserts into `audit_events` directly, so rows
are the contract: `time` is epoch seconds (REAL); the API shape (ISO-8601 UTC time, None
fields omitted) is produced here on the way out. Event ids only grow, so (sandbox_id, id)
gives a stable page order and a resumable cursor for the stream.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any

from declawd.errors import InvalidInput
from declawd.store.records import Repository, decode_token, encode_token

REQUIRED_FIELDS = ("sandbox_id", "kind", "verdict")
AUDIT_FIELDS = ("sandbox_id", "kind", "verdict", "reason", "name", "address", "port", "protocol")
MAX_AUDIT_LIMIT = 1000


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        dt = datetime.fromisoformat(value)
        return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
    return float(value)


def event_from_row(row: sqlite3.Row) -> dict[str, Any]:
    """The API's event shape (declaw-api.md §11.4)."""
    out: dict[str, Any] = {"time": datetime.fromtimestamp(row["time"], tz=UTC).isoformat()}
    for f in AUDIT_FIELDS:
        if row[f] is not None:
            out[f] = row[f]
    return out


def _valid_audit_token(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


class Audit(Repository):
    def insert_audit_events(self, events: list[dict[str, Any]]) -> None:
        """Insert all or none. `sandbox_id`, `kind`, `verdict` are required (ValueError);
        `time` (epoch float, datetime or ISO string) defaults to now; other keys ignored."""
        if not events:
            return
        for e in events:
            missing = [f for f in REQUIRED_FIELDS if not e.get(f)]
            if missing:
                raise ValueError(f"audit event without {', '.join(missing)}: {e!r}")
        rows = [
            (
                _epoch(e["time"]) if e.get("time") is not None else self._clock(),
                *(e.get(f) for f in AUDIT_FIELDS),
            )
            for e in events
        ]
        with self._db.write() as c:
            c.executemany(
                "INSERT INTO audit_events (time, sandbox_id, kind, verdict, reason, name,"
                " address, port, protocol) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def query_audit(
        self,
        sandbox_id: str,
        *,
        since: float | None = None,
        until: float | None = None,
        verdict: str | None = None,
        kind: str | None = None,
        limit: int = 100,
        next_token: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Oldest first; `since` inclusive, `until` exclusive (epoch seconds)."""
        if limit < 1:
            raise InvalidInput("limit", "must be at least 1")
        limit = min(limit, MAX_AUDIT_LIMIT)
        where = ["sandbox_id = ?"]
        params: list[Any] = [sandbox_id]
        for clause, value in (
            ("time >= ?", since),
            ("time < ?", until),
            ("verdict = ?", verdict),
            ("kind = ?", kind),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        if next_token:
            where.append("id > ?")
            params.append(decode_token(next_token, _valid_audit_token))
        rows = self._db.query(
            f"SELECT * FROM audit_events WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
            [*params, limit + 1],
        )
        page = rows[:limit]
        token = encode_token(int(page[-1]["id"])) if len(rows) > limit else None
        return [event_from_row(r) for r in page], token

    def audit_after(
        self, sandbox_id: str, last_id: int, limit: int = 500
    ) -> list[tuple[int, dict[str, Any]]]:
        """Events with id > last_id, oldest first (pass 0 to start from the beginning)."""
        rows = self._db.query(
            "SELECT * FROM audit_events WHERE sandbox_id = ? AND id > ? ORDER BY id LIMIT ?",
            (sandbox_id, last_id, limit),
        )
        return [(int(r["id"]), event_from_row(r)) for r in rows]

    def last_audit_id(self, sandbox_id: str) -> int:
        """The newest event id for the sandbox (0 if none): where a live-only stream starts."""
        row = self._db.query_one(
            "SELECT MAX(id) FROM audit_events WHERE sandbox_id = ?", (sandbox_id,)
        )
        return int(row[0]) if row and row[0] is not None else 0
