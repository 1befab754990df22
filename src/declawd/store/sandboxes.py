"""Sandbox records, slot allocation, idempotency records and the list filter parser.

Invariants: a live sandbox (creating/running) holds a slot no other live sandbox holds
(partial UNIQUE index, and `allocate_slot` picks and sets it in one IMMEDIATE
transaction, so it holds across processes); listing order is (created_at, sandbox_id),
so pagination tokens stay valid while sandboxes come and go.
"""

from __future__ import annotations

import ast
import urllib.parse
from typing import Any

from declawd.errors import BadRequest
from declawd.store.errors import RecordNotFound
from declawd.store.records import (
    Repository,
    decode_token,
    encode_token,
    encode_values,
    insert_row,
    row_to_dict,
    update_row,
)

SANDBOX_STATES = ("creating", "running", "killed", "failed")
LIVE_STATES = ("creating", "running")
SANDBOX_COLUMNS = (
    "sandbox_id",
    "team_id",
    "template_id",
    "template_alias",
    "state",
    "runtime",
    "slot",
    "address",
    "metadata",
    "envs",
    "network",
    "security",
    "created_at",
    "started_at",
    "end_at",
    "killed_at",
    "error",
    "cpu_count",
    "memory_mb",
    "lab",
)
SANDBOX_JSON = ("metadata", "envs", "network", "security")
IDEMPOTENCY_TTL = 24 * 3600.0
MAX_LIST_LIMIT = 1000
_LIVE_SQL = "('creating', 'running')"
_METADATA_QUERY_MAX = 8192


def _sandbox(row: Any) -> dict[str, Any]:
    out = row_to_dict(row, SANDBOX_JSON)
    if out.get("lab") is not None:
        out["lab"] = bool(out["lab"])
    return out


def _check_state(state: Any) -> None:
    if state not in SANDBOX_STATES:
        raise ValueError(f"sandbox state must be one of {SANDBOX_STATES}, not {state!r}")


def _valid_sandbox_token(v: Any) -> bool:
    return (
        isinstance(v, list)
        and len(v) == 2
        and isinstance(v[0], int | float)
        and not isinstance(v[0], bool)
        and isinstance(v[1], str)
    )


class Sandboxes(Repository):
    def insert_sandbox(self, rec: dict[str, Any]) -> None:
        """Insert a new record; `sandbox_id`, `team_id`, `state` required. Duplicate id →
        `Duplicate`. `created_at` defaults to now."""
        fields = dict(rec)
        fields.setdefault("created_at", self._clock())
        for required in ("sandbox_id", "team_id", "state"):
            if not fields.get(required):
                raise ValueError(f"insert_sandbox: {required} is required")
        _check_state(fields["state"])
        insert_row(
            self._db,
            "sandboxes",
            encode_values("sandboxes", fields, SANDBOX_COLUMNS, SANDBOX_JSON),
        )

    def get_sandbox(self, sandbox_id: str, team_id: str | None = None) -> dict[str, Any] | None:
        if team_id is None:
            row = self._db.query_one("SELECT * FROM sandboxes WHERE sandbox_id = ?", (sandbox_id,))
        else:
            row = self._db.query_one(
                "SELECT * FROM sandboxes WHERE sandbox_id = ? AND team_id = ?",
                (sandbox_id, team_id),
            )
        return _sandbox(row) if row else None

    def update_sandbox(self, sandbox_id: str, **fields: Any) -> None:
        """Set the given columns. Unknown column → TypeError; unknown id → RecordNotFound."""
        if "sandbox_id" in fields:
            raise TypeError("sandboxes: sandbox_id cannot be changed")
        if "state" in fields:
            _check_state(fields["state"])
        values = encode_values("sandboxes", fields, SANDBOX_COLUMNS, SANDBOX_JSON)
        if not update_row(self._db, "sandboxes", "sandbox_id", sandbox_id, values):
            raise RecordNotFound(f"sandbox {sandbox_id} not found")

    def list_sandboxes(
        self,
        team_id: str,
        *,
        states: list[str] | None = None,
        metadata: dict[str, str] | None = None,
        limit: int = 50,
        next_token: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the team's sandboxes in (created_at, sandbox_id) order.

        Returns (page, token for the next page or None when this is the last page).
        """
        if limit < 1:
            raise BadRequest("limit: must be at least 1")
        limit = min(limit, MAX_LIST_LIMIT)
        where = ["team_id = ?"]
        params: list[Any] = [team_id]
        if states:
            where.append(f"state IN ({', '.join('?' for _ in states)})")
            params.extend(states)
        for key, value in (metadata or {}).items():
            where.append(
                "EXISTS (SELECT 1 FROM json_each(sandboxes.metadata) AS m"
                " WHERE m.key = ? AND m.type = 'text' AND m.value = ?)"
            )
            params.extend([key, value])
        if next_token:
            created_at, last_id = decode_token(next_token, _valid_sandbox_token)
            where.append("(created_at > ? OR (created_at = ? AND sandbox_id > ?))")
            params.extend([created_at, created_at, last_id])
        rows = self._db.query(
            f"SELECT * FROM sandboxes WHERE {' AND '.join(where)}"
            " ORDER BY created_at, sandbox_id LIMIT ?",
            [*params, limit + 1],
        )
        page = [_sandbox(r) for r in rows[:limit]]
        token = None
        if len(rows) > limit:
            last = page[-1]
            token = encode_token([last["created_at"], last["sandbox_id"]])
        return page, token

    def list_live_sandboxes(self) -> list[dict[str, Any]]:
        rows = self._db.query(
            f"SELECT * FROM sandboxes WHERE state IN {_LIVE_SQL} ORDER BY created_at, sandbox_id"
        )
        return [_sandbox(r) for r in rows]

    def allocate_slot(self, sandbox_id: str) -> int:
        """Lowest slot >= 1 not held by another live sandbox, recorded on this sandbox.

        Returns the sandbox's current slot if it already holds one. The sandbox must exist
        and be live (RecordNotFound otherwise).
        """
        with self._db.write() as c:
            row = c.execute(
                "SELECT state, slot FROM sandboxes WHERE sandbox_id = ?", (sandbox_id,)
            ).fetchone()
            if row is None or row["state"] not in LIVE_STATES:
                raise RecordNotFound(f"live sandbox {sandbox_id} not found")
            if row["slot"] is not None:
                return int(row["slot"])
            taken = c.execute(
                f"SELECT slot FROM sandboxes WHERE state IN {_LIVE_SQL}"
                " AND slot IS NOT NULL ORDER BY slot"
            ).fetchall()
            slot = 1
            for (s,) in taken:
                if s == slot:
                    slot += 1
                elif s > slot:
                    break
            c.execute("UPDATE sandboxes SET slot = ? WHERE sandbox_id = ?", (slot, sandbox_id))
        return slot

    def count_sandboxes_using(self, template_id: str) -> int:
        row = self._db.query_one(
            f"SELECT COUNT(*) FROM sandboxes WHERE template_id = ? AND state IN {_LIVE_SQL}",
            (template_id,),
        )
        return int(row[0]) if row else 0

    # Idempotency -----------------------------------------------------------------------
    def idempotency_begin(
        self, team_id: str, key: str, request_hash: str
    ) -> tuple[str, str | None]:
        """Claim `key` for a create. ("new", None) means the caller owns it now and must
        call `idempotency_finish`; otherwise ("in_progress"|"done"|"mismatch", sandbox_id)."""
        now = self._clock()
        with self._db.write() as c:
            c.execute("DELETE FROM idempotency WHERE created_at < ?", (now - IDEMPOTENCY_TTL,))
            row = c.execute(
                "SELECT request_hash, sandbox_id, state FROM idempotency"
                " WHERE team_id = ? AND key = ?",
                (team_id, key),
            ).fetchone()
            if row is None:
                c.execute(
                    "INSERT INTO idempotency (team_id, key, request_hash, sandbox_id, state,"
                    " created_at) VALUES (?, ?, ?, NULL, 'in_progress', ?)",
                    (team_id, key, request_hash, now),
                )
                return "new", None
        if row["request_hash"] != request_hash:
            return "mismatch", None
        if row["state"] == "done":
            return "done", row["sandbox_id"]
        return "in_progress", None

    def idempotency_finish(self, team_id: str, key: str, sandbox_id: str | None) -> None:
        """Record the outcome; None (create failed) forgets the key so it can be retried."""
        with self._db.write() as c:
            if sandbox_id is None:
                c.execute("DELETE FROM idempotency WHERE team_id = ? AND key = ?", (team_id, key))
            else:
                c.execute(
                    "UPDATE idempotency SET state = 'done', sandbox_id = ?"
                    " WHERE team_id = ? AND key = ?",
                    (sandbox_id, team_id, key),
                )

    def idempotency_abandon_in_progress(self) -> int:
        """Forget every in-progress claim: call once at server start, when no create can
        still be running, so a crash mid-create does not block its key for 24 h."""
        with self._db.write() as c:
            return c.execute("DELETE FROM idempotency WHERE state = 'in_progress'").rowcount


def parse_metadata_query(value: str) -> dict[str, str]:
    """Parse the SDK's list filter: the Python repr of a dict, e.g. "{'env': 'prod'}".

    Also accepts the urlencoded `k=v&k2=v2` form. Anything else → 400 naming metadata.
    """
    text = value.strip()
    if not text:
        return {}
    if len(text) > _METADATA_QUERY_MAX:
        raise BadRequest("metadata: filter too long")
    parsed: Any
    if text.startswith("{"):
        try:
            # literal_eval only builds literals; the length cap bounds its recursion.
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise BadRequest("metadata: expected a dict literal like {'key': 'value'}") from None
    else:
        try:
            parsed = dict(urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=True))
        except ValueError:
            raise BadRequest("metadata: expected a dict literal like {'key': 'value'}") from None
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
    ):
        raise BadRequest("metadata: must map strings to strings")
    return parsed
