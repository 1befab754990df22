"""Row <-> dict mapping shared by the store's repositories.

Callers pass and receive plain dicts; JSON columns are (de)serialised here and nowhere
else, and column names in dynamic UPDATEs come only from each table's fixed column list,
never from caller input unchecked.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from declawd.errors import InvalidInput
from declawd.store.db import Backend

Clock = Callable[[], float]


def new_id(prefix: str) -> str:
    """`<prefix>-` + 12 lowercase hex, the id shape of every record (contracts.md)."""
    return f"{prefix}-{secrets.token_hex(6)}"


def encode_json(value: Any) -> str | None:
    # default=str: Paths (template layers) come back as strings.
    return None if value is None else json.dumps(value, default=str)


def row_to_dict(row: Any, json_cols: Collection[str]) -> dict[str, Any]:
    out = dict(row)
    for col in json_cols:
        if col in out and out[col] is not None:
            out[col] = json.loads(out[col])
    return out


def encode_values(
    table: str, fields: Mapping[str, Any], columns: Collection[str], json_cols: Collection[str]
) -> dict[str, Any]:
    unknown = set(fields) - set(columns)
    if unknown:
        raise TypeError(f"{table}: unknown field(s) {', '.join(sorted(unknown))}")
    return {k: encode_json(v) if k in json_cols else v for k, v in fields.items()}


def quoted(column: str) -> str:
    """A column name as an SQL identifier (`user` is reserved in PostgreSQL)."""
    return f'"{column}"'


def insert_row(db: Backend, table: str, values: Mapping[str, Any]) -> None:
    cols = ", ".join(quoted(k) for k in values)
    marks = ", ".join("?" for _ in values)
    with db.write() as c:
        c.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", list(values.values()))


def update_row(db: Backend, table: str, key_col: str, key: str, values: Mapping[str, Any]) -> bool:
    """UPDATE one row by primary key; returns whether it existed."""
    with db.write() as c:
        if not values:
            row = c.execute(f"SELECT 1 FROM {table} WHERE {key_col} = ?", (key,)).fetchone()
            return row is not None
        sets = ", ".join(f"{quoted(k)} = ?" for k in values)
        cur = c.execute(f"UPDATE {table} SET {sets} WHERE {key_col} = ?", [*values.values(), key])
        return cur.rowcount > 0


def encode_token(value: Any) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, check: Callable[[Any], bool]) -> Any:
    """Decode an opaque pagination token; anything we did not issue → 400 next_token."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = json.loads(raw)
        if check(value):
            return value
    except (ValueError, TypeError):
        pass
    raise InvalidInput("next_token", "invalid pagination token")


class Repository:
    """Base of the store's mixins: the shared database and clock."""

    _db: Backend
    _clock: Clock

    def __init__(self, db: Backend, clock: Clock = time.time) -> None:
        self._db = db
        self._clock = clock


def valid_time_id_token(v: Any) -> bool:
    """A page token of the (created_at, id) orderings: `[number, str]`."""
    return (
        isinstance(v, list)
        and len(v) == 2
        and isinstance(v[0], int | float)
        and not isinstance(v[0], bool)
        and isinstance(v[1], str)
    )


def placeholders(values: Collection[Any]) -> str:
    """`?, ?, ?` for an SQL `IN (...)` of these values."""
    return ", ".join("?" for _ in values)
