"""Sandbox records, slot allocation, idempotency records and the list filter parser.

Records come and go as `SandboxRecord`s (store/model.py). Invariants: a sandbox that is not
`released` holds a slot no other unreleased sandbox holds (partial UNIQUE index, and
`allocate_slot` picks and sets it in one IMMEDIATE transaction, so it holds across
processes); a state change is a compare-and-set (`transition`), so two kills never both
tear down; listing order is (created_at, sandbox_id), so pagination tokens stay valid while
sandboxes come and go.
"""

from __future__ import annotations

import ast
import urllib.parse
from collections.abc import Iterable
from typing import Any

from declawd.errors import InvalidInput
from declawd.store.errors import RecordNotFound
from declawd.store.model import (
    JSON_FIELDS,
    LIVE_STATES,
    POOL_TEAM,
    RECORD_FIELDS,
    SandboxRecord,
    SandboxState,
    record_from_row,
    record_to_row,
)
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

IDEMPOTENCY_TTL = 24 * 3600.0
MAX_LIST_LIMIT = 1000
_METADATA_QUERY_MAX = 8192


# One metadata key/value pair matched exactly (string values only), per dialect.
_METADATA_MATCH = {
    "sqlite": "EXISTS (SELECT 1 FROM json_each(sandboxes.metadata) AS m"
    " WHERE m.key = ? AND m.type = 'text' AND m.value = ?)",
    "postgresql": "sandboxes.metadata::jsonb @> jsonb_build_object(?::text, ?::text)",
}


# Decoded records by their row (column names and raw values): a node lists its sandboxes
# every second (the reaper) and every few seconds (metrics, pools), and decoding 500 rows'
# JSON columns each time was a tenth of its CPU with 500 sandboxes alive. A record is
# immutable (frozen, Mapping fields), so the same row gives the same object.
_DECODED: dict[tuple[Any, ...], SandboxRecord] = {}
_DECODED_MAX = 8192


def _record(row: Any) -> SandboxRecord:
    names = tuple(row.keys())
    key = (names, tuple(row[k] for k in names))
    try:
        hit = _DECODED.get(key)
    except TypeError:  # a value that is not hashable (a driver's decoded JSON): no cache
        return record_from_row(row_to_dict(row, JSON_FIELDS))
    if hit is None:
        hit = record_from_row(row_to_dict(row, JSON_FIELDS))
        if len(_DECODED) >= _DECODED_MAX:
            _DECODED.clear()
        _DECODED[key] = hit
    return hit


def _encode(fields: dict[str, Any]) -> dict[str, Any]:
    if "state" in fields:
        fields["state"] = SandboxState(fields["state"]).value
    if "released" in fields:
        fields["released"] = int(bool(fields["released"]))
    return encode_values("sandboxes", fields, RECORD_FIELDS, JSON_FIELDS)


class Sandboxes(Repository):
    def insert_sandbox(self, rec: SandboxRecord) -> None:
        """Insert a new record. Duplicate id → `Duplicate`."""
        if not rec.sandbox_id or not rec.team_id:
            raise ValueError("insert_sandbox: sandbox_id and team_id are required")
        insert_row(self._db, "sandboxes", _encode(record_to_row(rec)))

    def get_sandbox(self, sandbox_id: str, team_id: str | None = None) -> SandboxRecord | None:
        if team_id is None:
            row = self._db.query_one("SELECT * FROM sandboxes WHERE sandbox_id = ?", (sandbox_id,))
        else:
            row = self._db.query_one(
                "SELECT * FROM sandboxes WHERE sandbox_id = ? AND team_id = ?",
                (sandbox_id, team_id),
            )
        return _record(row) if row else None

    def update_sandbox(self, sandbox_id: str, **fields: Any) -> None:
        """Set the given fields. Unknown field → TypeError; unknown id → RecordNotFound."""
        if "sandbox_id" in fields:
            raise TypeError("sandboxes: sandbox_id cannot be changed")
        if not update_row(self._db, "sandboxes", "sandbox_id", sandbox_id, _encode(dict(fields))):
            raise RecordNotFound(f"sandbox {sandbox_id} not found")

    def update_sandbox_on_node(self, sandbox_id: str, node_id: str, **fields: Any) -> bool:
        """Set the given fields only while the record places the sandbox on `node_id`;
        False when it does not (any more): a node finishing the teardown of a sandbox that
        was restored on another node meanwhile leaves that node's record alone."""
        if "sandbox_id" in fields:
            raise TypeError("sandboxes: sandbox_id cannot be changed")
        values = _encode(dict(fields))
        sets = ", ".join(f"{quoted(k)} = ?" for k in values)
        with self._db.write() as c:
            cur = c.execute(
                f"UPDATE sandboxes SET {sets} WHERE sandbox_id = ? AND node_id = ?",
                [*values.values(), sandbox_id, node_id],
            )
            return bool(cur.rowcount > 0)

    def transition(
        self,
        sandbox_id: str,
        from_states: Iterable[SandboxState],
        to_state: SandboxState,
        **fields: Any,
    ) -> SandboxRecord | None:
        """Move the sandbox to `to_state` (and set `fields`) only if it is in one of
        `from_states`; returns the record as it was before, or None if it was not."""
        allowed = [SandboxState(s).value for s in from_states]
        values = _encode({**fields, "state": to_state})
        sets = ", ".join(f"{quoted(k)} = ?" for k in values)
        with self._db.write() as c:
            row = c.execute(
                f"SELECT * FROM sandboxes WHERE sandbox_id = ? AND state IN ({placeholders(allowed)})",
                (sandbox_id, *allowed),
            ).fetchone()
            if row is None:
                return None
            c.execute(
                f"UPDATE sandboxes SET {sets} WHERE sandbox_id = ?",
                [*values.values(), sandbox_id],
            )
        return _record(row)

    def list_sandboxes(
        self,
        team_id: str,
        *,
        states: Iterable[SandboxState] | None = None,
        metadata: dict[str, str] | None = None,
        limit: int = 50,
        next_token: str | None = None,
    ) -> tuple[list[SandboxRecord], str | None]:
        """One page of the team's sandboxes in (created_at, sandbox_id) order; a create
        that failed before it started is not listed. States default to the live ones.

        Returns (page, token for the next page or None when this is the last page).
        """
        if limit < 1:
            raise InvalidInput("limit", "must be at least 1")
        limit = min(limit, MAX_LIST_LIMIT)
        wanted = [SandboxState(s).value for s in (LIVE_STATES if states is None else states)]
        where = [
            "team_id = ?",
            f"state IN ({placeholders(wanted)})",
            "(started_at IS NOT NULL OR state = 'creating')",
        ]
        params: list[Any] = [team_id, *wanted]
        for key, value in (metadata or {}).items():
            where.append(_METADATA_MATCH[self._db.dialect])
            params.extend([key, value])
        if next_token:
            created_at, last_id = decode_token(next_token, valid_time_id_token)
            where.append("(created_at > ? OR (created_at = ? AND sandbox_id > ?))")
            params.extend([created_at, created_at, last_id])
        rows = self._db.query(
            f"SELECT * FROM sandboxes WHERE {' AND '.join(where)}"
            " ORDER BY created_at, sandbox_id LIMIT ?",
            [*params, limit + 1],
        )
        page = [_record(r) for r in rows[:limit]]
        token = None
        if len(rows) > limit:
            last = page[-1]
            token = encode_token([last.created_at, last.sandbox_id])
        return page, token

    def list_live_sandboxes(self, node_id: str | None = None) -> list[SandboxRecord]:
        """Every sandbox users can see, on any team (creating, running, paused); with
        `node_id`, only that node's (a node lists its own: docs/cluster.md)."""
        live = [s.value for s in LIVE_STATES]
        on_node, params = _on_node(node_id)
        rows = self._db.query(
            f"SELECT * FROM sandboxes WHERE state IN ({placeholders(live)}){on_node}"
            " ORDER BY created_at, sandbox_id",
            [*live, *params],
        )
        return [_record(r) for r in rows]

    def live_sandbox_ids(self, node_id: str | None = None) -> set[str]:
        """The ids of `list_live_sandboxes`, without reading their records."""
        live = [s.value for s in LIVE_STATES]
        on_node, params = _on_node(node_id)
        rows = self._db.query(
            f"SELECT sandbox_id FROM sandboxes WHERE state IN ({placeholders(live)}){on_node}",
            [*live, *params],
        )
        return {str(r[0]) for r in rows}

    def list_unreleased_sandboxes(self, node_id: str | None = None) -> list[SandboxRecord]:
        """Every sandbox that may still hold host resources: the live ones, and killed ones
        whose teardown has not finished (the reconcile sweep's work list); with `node_id`,
        only that node's."""
        on_node, params = _on_node(node_id)
        rows = self._db.query(
            f"SELECT * FROM sandboxes WHERE released = 0{on_node} ORDER BY created_at, sandbox_id",
            params,
        )
        return [_record(r) for r in rows]

    def count_live_by_node(self) -> dict[str, int]:
        """Live sandboxes (pooled ones included) per node id: placement's load figure."""
        live = [s.value for s in LIVE_STATES]
        rows = self._db.query(
            f"SELECT node_id, COUNT(*) FROM sandboxes WHERE state IN ({placeholders(live)})"
            " AND team_id != ? GROUP BY node_id",
            [*live, POOL_TEAM],
        )
        return {str(r[0]): int(r[1]) for r in rows}

    def allocate_slot(self, sandbox_id: str) -> int:
        """Lowest slot >= 1 not held by another unreleased sandbox, recorded on this one.

        Returns the sandbox's current slot if it already holds one. The sandbox must exist
        and be creating (RecordNotFound otherwise).
        """
        with self._db.write() as c:
            row = c.execute(
                "SELECT state, slot, node_id FROM sandboxes WHERE sandbox_id = ?", (sandbox_id,)
            ).fetchone()
            if row is None or row["state"] != SandboxState.CREATING.value:
                raise RecordNotFound(f"creating sandbox {sandbox_id} not found")
            if row["slot"] is not None:
                return int(row["slot"])
            # Slots are addresses of the sandbox's node's own pool: held once per node.
            taken = c.execute(
                "SELECT slot FROM sandboxes WHERE released = 0 AND slot IS NOT NULL"
                " AND node_id = ? ORDER BY slot",
                (row["node_id"],),
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
        live = [s.value for s in LIVE_STATES]
        row = self._db.query_one(
            f"SELECT COUNT(*) FROM sandboxes WHERE template_id = ? AND state IN ({placeholders(live)})",
            (template_id, *live),
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


def _on_node(node_id: str | None) -> tuple[str, list[Any]]:
    """The `AND node_id = ?` clause of a node-scoped list (none for None)."""
    if node_id is None:
        return "", []
    return " AND node_id = ?", [node_id]


def parse_metadata_query(value: str) -> dict[str, str]:
    """Parse the SDK's list filter: the Python repr of a dict, e.g. "{'env': 'prod'}".

    Also accepts the urlencoded `k=v&k2=v2` form. Anything else → 400 naming metadata.
    """
    text = value.strip()
    if not text:
        return {}
    if len(text) > _METADATA_QUERY_MAX:
        raise InvalidInput("metadata", "filter too long")
    parsed: Any
    if text.startswith("{"):
        try:
            # literal_eval only builds literals; the length cap bounds its recursion.
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise InvalidInput(
                "metadata", "expected a dict literal like {'key': 'value'}"
            ) from None
    else:
        try:
            parsed = dict(urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=True))
        except ValueError:
            raise InvalidInput(
                "metadata", "expected a dict literal like {'key': 'value'}"
            ) from None
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
    ):
        raise InvalidInput("metadata", "must map strings to strings")
    return parsed
