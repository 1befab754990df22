"""Persistence for declawd: teams, API keys, sandboxes, idempotency, templates, audit.

SQLite in WAL mode at `<state_dir>/declawd.db`, schema versioned by `PRAGMA
user_version`. Callers pass and receive plain dicts; JSON columns are decoded for them.
See docs/store.md.
"""

from declawd.store.db import AUDIT_EVENTS_SCHEMA
from declawd.store.errors import (
    AmbiguousKey,
    Duplicate,
    RecordNotFound,
    SchemaTooNew,
    StoreError,
)
from declawd.store.sandboxes import LIVE_STATES, SANDBOX_STATES, parse_metadata_query
from declawd.store.store import Store

__all__ = [
    "AUDIT_EVENTS_SCHEMA",
    "LIVE_STATES",
    "SANDBOX_STATES",
    "AmbiguousKey",
    "Duplicate",
    "RecordNotFound",
    "SchemaTooNew",
    "Store",
    "StoreError",
    "parse_metadata_query",
]
