"""Audit events (network, and inspected requests): batch insert, filtered pages, live tailing.

The gateway daemon (another process) also inserts into `audit_events` and `audit_details`
directly, so rows are the contract: `time` is epoch seconds (REAL), a detail is a JSON object
keyed by its event's id; the API shape (ISO-8601 UTC time, None fields omitted, the detail's
keys merged in) is produced here on the way out. Event ids only grow, so (sandbox_id, id)
gives a stable page order and a resumable cursor for the stream.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from declawd.errors import InvalidInput
from declawd.store.records import Repository, decode_token, encode_token

REQUIRED_FIELDS = ("sandbox_id", "kind", "verdict")
AUDIT_FIELDS = ("sandbox_id", "kind", "verdict", "reason", "name", "address", "port", "protocol")
MAX_AUDIT_LIMIT = 1000
_INSERT = (
    "INSERT INTO audit_events (time, sandbox_id, kind, verdict, reason, name, address, port,"
    " protocol) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# PostgreSQL: the event and its detail in one statement (SQLite has no INSERT in a WITH).
_INSERT_WITH_DETAIL = (
    f"WITH e AS ({_INSERT} RETURNING id)"
    " INSERT INTO audit_details (event_id, detail) SELECT id, ? FROM e"
)
# Every event with the detail row it may have (an `http` event's request fields).
_SELECT = (
    "SELECT e.*, d.detail AS detail FROM audit_events e"
    " LEFT JOIN audit_details d ON d.event_id = e.id"
)


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        dt = datetime.fromisoformat(value)
        return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
    return float(value)


def event_from_row(row: Any) -> dict[str, Any]:
    """The API's event shape (declaw-api.md §11.4) from a `_SELECT` row: the columns, then
    the detail's keys (an `http` event: the SDK's AuditEntry fields and ours); a column
    wins a clash."""
    out: dict[str, Any] = {"time": datetime.fromtimestamp(row["time"], tz=UTC).isoformat()}
    for f in AUDIT_FIELDS:
        if row[f] is not None:
            out[f] = row[f]
    raw = row["detail"]
    if raw:
        try:
            detail = json.loads(raw)
        except ValueError:
            detail = None
        if isinstance(detail, dict):
            for k, v in detail.items():
                out.setdefault(k, v)
    return out


def _valid_audit_token(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


class Audit(Repository):
    def insert_audit_events(self, events: list[dict[str, Any]]) -> None:
        """Insert all or none. `sandbox_id`, `kind`, `verdict` are required (ValueError);
        `time` (epoch float, datetime or ISO string) defaults to now; `detail` (a mapping)
        goes to `audit_details`; other keys ignored."""
        if not events:
            return
        for e in events:
            missing = [f for f in REQUIRED_FIELDS if not e.get(f)]
            if missing:
                # The columns only: a detail may be long, and is nobody's business in a log.
                columns = {k: e.get(k) for k in AUDIT_FIELDS}
                raise ValueError(f"audit event without {', '.join(missing)}: {columns!r}")
            if e.get("detail") is not None and not isinstance(e["detail"], Mapping):
                raise ValueError("audit event detail: must be a mapping")
        rows = [
            (
                _epoch(e["time"]) if e.get("time") is not None else self._clock(),
                *(e.get(f) for f in AUDIT_FIELDS),
            )
            for e in events
        ]
        with self._db.write() as c:
            # In order; runs without a detail go in one executemany (PostgreSQL pipelines
            # it), an event with one needs its id back (RETURNING: both backends).
            run: list[tuple[Any, ...]] = []
            for e, row in zip(events, rows, strict=True):
                if e.get("detail") is None:
                    run.append(row)
                    continue
                if run:
                    c.executemany(_INSERT, run)
                    run = []
                detail = json.dumps(dict(e["detail"]), separators=(",", ":"))
                if self._db.dialect == "postgresql":  # one round trip, not two
                    c.execute(_INSERT_WITH_DETAIL, (*row, detail))
                    continue
                event_id = c.execute(_INSERT + " RETURNING id", row).fetchone()[0]
                c.execute(
                    "INSERT INTO audit_details (event_id, detail) VALUES (?, ?)",
                    (event_id, detail),
                )
            if run:
                c.executemany(_INSERT, run)

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
        where = ["e.sandbox_id = ?"]
        params: list[Any] = [sandbox_id]
        for clause, value in (
            ("e.time >= ?", since),
            ("e.time < ?", until),
            ("e.verdict = ?", verdict),
            ("e.kind = ?", kind),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        if next_token:
            where.append("e.id > ?")
            params.append(decode_token(next_token, _valid_audit_token))
        rows = self._db.query(
            f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY e.id LIMIT ?",
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
            f"{_SELECT} WHERE e.sandbox_id = ? AND e.id > ? ORDER BY e.id LIMIT ?",
            (sandbox_id, last_id, limit),
        )
        return [(int(r["id"]), event_from_row(r)) for r in rows]

    def last_audit_id(self, sandbox_id: str) -> int:
        """The newest event id for the sandbox (0 if none): where a live-only stream starts."""
        row = self._db.query_one(
            "SELECT MAX(id) FROM audit_events WHERE sandbox_id = ?", (sandbox_id,)
        )
        return int(row[0]) if row and row[0] is not None else 0
