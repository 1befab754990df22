"""SQLite connection handling and schema migrations for `declawd.db`, and the choice of backend.

`open_database(target)` gives the SQLite `Database` for a path (or `sqlite:///path`) and the
PostgreSQL one (`store/pg.py`, which runs these same migrations translated) for a
`postgresql://` URL; both answer the `Backend` protocol the store's mixins use.

SQLite: one connection per thread (the server calls the store from anyio worker threads and
from the event loop; several processes share the file). Invariant: every write runs in
`BEGIN IMMEDIATE`, so a writer takes the lock up front and waits (busy_timeout) instead
of failing with "database is locked" when it would upgrade a stale read snapshot.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from declawd.store.errors import Duplicate, SchemaTooNew

BUSY_TIMEOUT_MS = 5000

# The gateway daemon (another process, declawd.egress.audit.SCHEMA) creates this table
# itself with `CREATE TABLE IF NOT EXISTS` of exactly this text: whichever process runs
# first defines it, so both texts must stay identical (a unit test compares them).
AUDIT_EVENTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    sandbox_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    verdict TEXT NOT NULL,
    reason TEXT,
    name TEXT,
    address TEXT,
    port INTEGER,
    protocol TEXT
);
CREATE INDEX IF NOT EXISTS audit_events_sandbox ON audit_events (sandbox_id, id);
"""

# Details of an audit event that has more than the columns above (an inspected HTTP request:
# method, url, status, counters), as JSON. Same rule as above: the gateway creates it too.
AUDIT_DETAILS_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_details (
    event_id INTEGER PRIMARY KEY,
    detail TEXT NOT NULL
);
"""

_V1 = (
    """
CREATE TABLE teams (
    team_id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY,
    team_id TEXT NOT NULL REFERENCES teams (team_id),
    name TEXT NOT NULL DEFAULT '',
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE INDEX api_keys_team ON api_keys (team_id);
CREATE INDEX api_keys_prefix ON api_keys (prefix);
CREATE TABLE sandboxes (
    sandbox_id TEXT PRIMARY KEY,
    team_id TEXT NOT NULL,
    template_id TEXT,
    template_alias TEXT,
    state TEXT NOT NULL,
    runtime TEXT,
    slot INTEGER,
    address TEXT,
    metadata TEXT,
    envs TEXT,
    network TEXT,
    security TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    end_at REAL,
    killed_at REAL,
    error TEXT,
    cpu_count REAL,
    memory_mb INTEGER,
    lab INTEGER
);
CREATE UNIQUE INDEX sandboxes_live_slot ON sandboxes (slot)
    WHERE state IN ('creating', 'running');
CREATE INDEX sandboxes_team_order ON sandboxes (team_id, created_at, sandbox_id);
CREATE INDEX sandboxes_state ON sandboxes (state);
CREATE TABLE idempotency (
    team_id TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    sandbox_id TEXT,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (team_id, key)
);
CREATE INDEX idempotency_created ON idempotency (created_at);
CREATE TABLE templates (
    template_id TEXT PRIMARY KEY,
    team_id TEXT NOT NULL DEFAULT '',
    alias TEXT,
    state TEXT NOT NULL,
    spec TEXT,
    layers TEXT,
    user TEXT,
    workdir TEXT,
    envs TEXT,
    start_cmd TEXT,
    ready_cmd TEXT,
    ready_timeout REAL,
    cpu_count REAL,
    memory_mb INTEGER,
    runtime TEXT,
    size_bytes INTEGER,
    build_seconds REAL,
    created_at REAL NOT NULL,
    error TEXT
);
CREATE INDEX templates_team ON templates (team_id, created_at);
CREATE TABLE template_aliases (
    team_id TEXT NOT NULL,
    alias TEXT NOT NULL,
    template_id TEXT NOT NULL,
    PRIMARY KEY (team_id, alias)
);
CREATE INDEX template_aliases_template ON template_aliases (template_id);
CREATE TABLE builds (
    build_id TEXT PRIMARY KEY,
    template_id TEXT,
    team_id TEXT,
    status TEXT NOT NULL,
    logs TEXT,
    created_at REAL NOT NULL,
    finished_at REAL
);
"""
    + AUDIT_EVENTS_SCHEMA
)

# v2: the sandbox model (store/model.py). States are the SDK's only: a failed create is
# `killed` with its error; `released` says whether the host resources are gone, and a slot
# is held until they are (so a kill can answer before its teardown finishes).
_V2 = """
ALTER TABLE sandboxes ADD COLUMN released INTEGER NOT NULL DEFAULT 1;
ALTER TABLE sandboxes ADD COLUMN timeout INTEGER;
UPDATE sandboxes SET released = 0 WHERE state IN ('creating', 'running');
UPDATE sandboxes SET state = 'killed' WHERE state = 'failed';
DROP INDEX sandboxes_live_slot;
CREATE UNIQUE INDEX sandboxes_held_slot ON sandboxes (slot) WHERE released = 0;
CREATE INDEX sandboxes_unreleased ON sandboxes (released) WHERE released = 0;
"""

# v3: persistence. A paused sandbox keeps its remaining time (`paused_at`, `remaining_s`);
# `lifecycle` is the create's {"on_timeout", "auto_resume"}. Snapshots, volumes and the
# metrics series have tables of their own.
_V3 = """
ALTER TABLE sandboxes ADD COLUMN paused_at REAL;
ALTER TABLE sandboxes ADD COLUMN remaining_s REAL;
ALTER TABLE sandboxes ADD COLUMN lifecycle TEXT;
CREATE TABLE snapshots (
    snapshot_id TEXT PRIMARY KEY,
    team_id TEXT NOT NULL,
    sandbox_id TEXT NOT NULL,
    source TEXT NOT NULL,
    state TEXT NOT NULL,
    template_id TEXT,
    template_alias TEXT,
    runtime TEXT,
    network TEXT,
    security TEXT,
    envs TEXT,
    metadata TEXT,
    lifecycle TEXT,
    timeout INTEGER,
    cpu_count REAL,
    memory_mb INTEGER,
    fs_bytes INTEGER,
    mem_bytes INTEGER,
    pause_duration_ms INTEGER,
    created_at REAL NOT NULL,
    error TEXT
);
CREATE INDEX snapshots_sandbox ON snapshots (sandbox_id, created_at);
CREATE INDEX snapshots_team ON snapshots (team_id, created_at, snapshot_id);
CREATE TABLE volumes (
    volume_id TEXT PRIMARY KEY,
    team_id TEXT NOT NULL,
    name TEXT NOT NULL,
    size_bytes INTEGER NOT NULL DEFAULT 0,
    metadata TEXT,
    version_seq INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX volumes_team ON volumes (team_id, created_at, volume_id);
CREATE TABLE volume_files (
    volume_id TEXT NOT NULL,
    path TEXT NOT NULL,
    is_dir INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    mode INTEGER NOT NULL,
    version INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    PRIMARY KEY (volume_id, path)
);
CREATE TABLE volume_locks (
    volume_id TEXT NOT NULL,
    path TEXT NOT NULL,
    token TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (volume_id, path)
);
CREATE TABLE volume_attachments (
    sandbox_id TEXT NOT NULL,
    volume_id TEXT NOT NULL,
    mount_path TEXT NOT NULL,
    mode TEXT NOT NULL,
    subpath TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (sandbox_id, mount_path)
);
CREATE INDEX volume_attachments_volume ON volume_attachments (volume_id);
CREATE TABLE sandbox_metrics (
    sandbox_id TEXT NOT NULL,
    ts REAL NOT NULL,
    cpu_usage_percent REAL NOT NULL,
    memory_usage_mb REAL NOT NULL,
    disk_usage_mb REAL NOT NULL,
    PRIMARY KEY (sandbox_id, ts)
);
"""

# v4: content inspection. Vault secrets (values AES-GCM encrypted under the node master key,
# never readable back), the environments they live in, the secrets each sandbox was created
# with (`vault_refs`), and the detail rows of `http` audit events.
_V4 = (
    """
CREATE TABLE vault_environments (
    team_id TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (team_id, name)
);
CREATE TABLE vault_secrets (
    secret_id TEXT PRIMARY KEY,
    team_id TEXT NOT NULL,
    environment TEXT NOT NULL,
    name TEXT NOT NULL,
    provider TEXT,
    scopes TEXT NOT NULL,
    ciphertext BLOB NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    rotation_interval_days INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    rotated_at REAL,
    UNIQUE (team_id, environment, name)
);
CREATE TABLE sandbox_vault_refs (
    sandbox_id TEXT NOT NULL,
    env TEXT NOT NULL,
    secret_id TEXT NOT NULL,
    ref TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (sandbox_id, env)
);
CREATE INDEX sandbox_vault_refs_secret ON sandbox_vault_refs (secret_id);
"""
    + AUDIT_DETAILS_SCHEMA
)

# v5: ports. Per sandbox, how its ports route may be reached (store/traffic.py): the
# traffic access token (kept as issued, so connect can return it again; the file is 0600),
# NULL when `allow_public_traffic` is false, and the Host header its servers are sent.
# A table of its own, keyed by sandbox id, so it is written before the sandbox exists and
# outlives a restore under the same id.
_V5 = """
CREATE TABLE sandbox_traffic (
    sandbox_id TEXT PRIMARY KEY,
    token TEXT UNIQUE,
    allow_public_traffic INTEGER NOT NULL,
    mask_request_host TEXT,
    created_at REAL NOT NULL
);
"""

# v6: the dashboard's sessions (store/sessions.py): only a hash of the session id is kept;
# a session is one API key's (revoking the key ends it).
_V6 = """
CREATE TABLE dashboard_sessions (
    session_hash TEXT PRIMARY KEY,
    team_id TEXT NOT NULL REFERENCES teams (team_id),
    key_id TEXT NOT NULL REFERENCES api_keys (key_id),
    csrf_token TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_seen_at REAL NOT NULL
);
CREATE INDEX dashboard_sessions_key ON dashboard_sessions (key_id);
CREATE INDEX dashboard_sessions_seen ON dashboard_sessions (last_seen_at);
"""

# v7: cluster mode (docs/cluster.md). Each sandbox is on one node (`node_id`, '' in the
# single-process default); a node's slots are its own address pool's, so a slot is held once
# per node. The node registry (heartbeat, capacity) and the hashed single-use join tokens.
_V7 = """
ALTER TABLE sandboxes ADD COLUMN node_id TEXT NOT NULL DEFAULT '';
DROP INDEX sandboxes_held_slot;
CREATE UNIQUE INDEX sandboxes_held_slot ON sandboxes (node_id, slot) WHERE released = 0;
CREATE INDEX sandboxes_node ON sandboxes (node_id, released);
CREATE TABLE nodes (
    node_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    state TEXT NOT NULL,
    joined_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    capacity TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE join_tokens (
    token_hash TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at REAL,
    used_by TEXT
);
"""

# v8: the node a team template's build was sent to (cluster mode; '' when built in the
# process that recorded it), so the lost-node sweep can fail the builds of a node it marks
# down. The index holds only the builds still running.
_V8 = """
ALTER TABLE builds ADD COLUMN node_id TEXT NOT NULL DEFAULT '';
CREATE INDEX builds_building_on_node ON builds (node_id) WHERE status = 'building';
"""

# Applied in order; migration i (0-based) brings the schema to user_version i + 1.
# Append only: never edit a script that has shipped.
MIGRATIONS: list[str] = [_V1, _V2, _V3, _V4, _V5, _V6, _V7, _V8]


def _rollback(c: sqlite3.Connection) -> None:
    # SQLite may already have rolled back on its own (e.g. SQLITE_FULL, interrupted).
    if c.in_transaction:
        c.execute("ROLLBACK")


def split_statements(script: str) -> list[str]:
    """Split a SQL script into complete statements (no triggers with inner `;` here)."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        raise ValueError(f"incomplete SQL statement: {buf.strip()[:80]!r}")
    return out


class WriteConnection(Protocol):
    """What `write()` yields: `sqlite3.Connection`, or `pg.PgConnection` (same calls)."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]], /) -> Any: ...


class Backend(Protocol):
    """The calls the store's mixins make; rows index by position and by column name."""

    @property
    def dialect(self) -> str: ...

    def query(self, sql: str, params: Sequence[Any] = ...) -> list[Any]: ...

    def query_one(self, sql: str, params: Sequence[Any] = ...) -> Any: ...

    def write(self) -> contextlib.AbstractContextManager[WriteConnection]: ...

    def user_version(self) -> int: ...

    def migrate(self) -> int: ...

    def close(self) -> None: ...


SQLITE_URL_PREFIX = "sqlite:///"
POSTGRES_URL_PREFIXES = ("postgresql://", "postgres://")


def is_postgres_url(target: object) -> bool:
    """Whether `target` is a PostgreSQL URL (else it names a SQLite file)."""
    return isinstance(target, str) and target.startswith(POSTGRES_URL_PREFIXES)


def open_database(
    target: Path | str, migrations: Sequence[str] = MIGRATIONS, *, pool_size: int | None = None
) -> Backend:
    """The backend `target` names: a `postgresql://` (or `postgres://`) URL selects
    PostgreSQL (`pool_size=N` in its query, or the argument, sizes the pool); a path or
    `sqlite:///path` selects the SQLite file there. Creates and migrates as needed."""
    if is_postgres_url(target):
        assert isinstance(target, str)
        from declawd.store.pg import PgDatabase  # psycopg only where PostgreSQL is used

        return PgDatabase(target, migrations, pool_size=pool_size)
    return Database(sqlite_path(target), migrations)


def sqlite_path(target: Path | str) -> Path:
    """The file of a SQLite target: a path, or `sqlite:///relative` / `sqlite:////absolute`."""
    if isinstance(target, str) and target.startswith("sqlite:"):
        if not target.startswith(SQLITE_URL_PREFIX):
            raise ValueError(f"expected {SQLITE_URL_PREFIX}PATH, got {target!r}")
        return Path(target[len(SQLITE_URL_PREFIX) :])
    return Path(target)


class Database:
    """Per-thread connections to one SQLite file, plus transaction helpers."""

    dialect = "sqlite"

    def __init__(self, path: Path | str, migrations: Sequence[str] = MIGRATIONS) -> None:
        self.path = Path(path)
        self._migrations = list(migrations)
        self._local = threading.local()
        self._lock = threading.Lock()
        # (owning thread, connection): lets close() reach every thread's connection and
        # lets us close connections whose thread has died.
        self._conns: list[tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = []
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # The file holds key hashes and audit trails: not world-readable. SQLite gives
            # the -wal/-shm files the same mode.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        try:
            self.migrate()
        except BaseException:
            self.close()
            raise

    # Connections ----------------------------------------------------------------------
    def conn(self) -> sqlite3.Connection:
        c: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if c is not None:
            return c
        if self._closed:
            raise RuntimeError("store is closed")
        # isolation_level=None: no implicit transactions; we issue BEGIN ourselves.
        c = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        c.row_factory = sqlite3.Row
        c.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        c.execute("PRAGMA journal_mode = WAL")
        c.execute("PRAGMA synchronous = NORMAL")
        c.execute("PRAGMA foreign_keys = ON")
        self._local.conn = c
        with self._lock:
            self._reap_dead_locked()
            self._conns.append((weakref.ref(threading.current_thread()), c))
        return c

    def _reap_dead_locked(self) -> None:
        alive = []
        for ref, c in self._conns:
            t = ref()
            if t is None or not t.is_alive():
                c.close()
            else:
                alive.append((ref, c))
        self._conns = alive

    def close(self) -> None:
        """Close the store: no thread opens a connection any more. Idempotent.

        The calling thread's connection and those of threads that ended are closed now.
        Another live thread's connection is only let go: it may be inside a statement this
        very moment (a background write still running at shutdown), and closing a SQLite
        connection under a running statement crashes the process (it did, in the unit
        suite). It closes when that thread drops it; its next `conn()` raises."""
        me = threading.current_thread()
        with self._lock:
            self._closed = True
            for ref, c in self._conns:
                owner = ref()
                if owner is None or owner is me or not owner.is_alive():
                    c.close()
            self._conns = []
        self._local = threading.local()

    # Statements -----------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self.conn().execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn().execute(sql, params).fetchone()
        return row

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken with BEGIN IMMEDIATE; unique violations → Duplicate."""
        c = self.conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except sqlite3.IntegrityError as exc:
            _rollback(c)
            if "UNIQUE" in str(exc):
                raise Duplicate(str(exc)) from exc
            raise
        except BaseException:
            _rollback(c)
            raise
        else:
            c.execute("COMMIT")

    # Migrations -----------------------------------------------------------------------
    def user_version(self) -> int:
        row = self.query_one("PRAGMA user_version")
        return int(row[0]) if row else 0

    def migrate(self) -> int:
        """Bring the schema up to date, one transaction per migration; returns the version.

        The version is re-read inside each transaction, so two processes opening a fresh
        file at once apply each migration exactly once.
        """
        target = len(self._migrations)
        while True:
            with self.write() as c:
                current = int(c.execute("PRAGMA user_version").fetchone()[0])
                if current > target:
                    raise SchemaTooNew(
                        f"{self.path}: schema version {current} is newer than this "
                        f"declawd understands ({target})"
                    )
                if current == target:
                    return current
                for stmt in split_statements(self._migrations[current]):
                    c.execute(stmt)
                c.execute(f"PRAGMA user_version = {current + 1}")
