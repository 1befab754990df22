"""Persistence for declawd: teams, API keys, sandboxes, idempotency, templates, audit,
and each sandbox's traffic access (ports).

SQLite in WAL mode at `<state_dir>/declawd.db` (schema versioned by `PRAGMA user_version`),
or PostgreSQL when the settings' `database_url` names one (store/pg.py). Sandboxes travel as frozen `SandboxRecord`s; the other tables as plain dicts
with JSON columns decoded. See docs/store.md.
"""

from declawd.store.db import AUDIT_DETAILS_SCHEMA, AUDIT_EVENTS_SCHEMA
from declawd.store.errors import (
    AmbiguousKey,
    Duplicate,
    RecordNotFound,
    SchemaTooNew,
    StoreError,
)
from declawd.store.model import LIVE_STATES, SandboxRecord, SandboxState
from declawd.store.sandboxes import parse_metadata_query
from declawd.store.store import Store, database_target, open_store
from declawd.store.store import read as store_read
from declawd.store.traffic import TrafficAccess

__all__ = [
    "AUDIT_DETAILS_SCHEMA",
    "AUDIT_EVENTS_SCHEMA",
    "LIVE_STATES",
    "AmbiguousKey",
    "Duplicate",
    "RecordNotFound",
    "SandboxRecord",
    "SandboxState",
    "SchemaTooNew",
    "Store",
    "StoreError",
    "TrafficAccess",
    "database_target",
    "open_store",
    "parse_metadata_query",
    "store_read",
]
