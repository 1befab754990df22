"""Network audit events: batched, durable writes into `audit_events` of the server's database.

The resolver and the nflog reader `emit()` events without blocking; a single writer task
flushes them in batches from a thread (WAL + busy_timeout, so the API server can read while we
write). The queue is bounded: under a flood the oldest *excess* events are counted and reported
as one summary row per sandbox instead of exhausting memory. Network audit has no off switch.

The target is the server's SQLite file, or, when the server runs on PostgreSQL, the same
`postgresql://` URL: the gateway then writes through the store's backend (`store/pg.py`, a
pool of two, migrating under the write lock if it comes first), so every API server reads
every node's events and ids commit in order under the store's write lock. The URL must be
reachable from the gateway's netns: a unix-socket URL always is. A cluster node's gateway
(whose netns may reach no store) writes a node-local SQLite spool instead, which the node
agent ships to the store (`cluster/auditspool.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from declawd.store.db import (
    AUDIT_DETAILS_SCHEMA,
    AUDIT_EVENTS_SCHEMA,
    Backend,
    is_postgres_url,
    open_database,
)

log = logging.getLogger(__name__)

# One definition of the table, shared with the store (whichever process starts first
# creates it).
SCHEMA = AUDIT_EVENTS_SCHEMA
DETAILS_SCHEMA = AUDIT_DETAILS_SCHEMA

# The PostgreSQL pool of the gateway: one flushing thread, one spare.
PG_POOL_SIZE = 2

_INSERT = (
    "INSERT INTO audit_events (time, sandbox_id, kind, verdict, reason, name, address, port,"
    " protocol) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True)
class AuditEvent:
    sandbox_id: str
    kind: str  # "dns" | "connection" | "http"
    verdict: str  # "allow" | "deny"
    reason: str
    name: str | None = None
    address: str | None = None
    port: int | None = None
    protocol: str | None = None
    time: float = 0.0
    # More than the columns hold (an inspected request: method, url, status, counters):
    # stored as JSON in `audit_details`, keyed by the event's id.
    detail: Mapping[str, Any] | None = None

    def row(self) -> tuple[object, ...]:
        return (
            self.time or time.time(),
            self.sandbox_id,
            self.kind,
            self.verdict,
            self.reason,
            self.name,
            self.address,
            self.port,
            self.protocol,
        )


def open_db(path: Path) -> sqlite3.Connection:
    """Open (and if needed create) the audit table; the caller closes the connection."""
    conn = sqlite3.connect(str(path), timeout=10.0, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(SCHEMA)
        conn.executescript(DETAILS_SCHEMA)
    except BaseException:
        conn.close()
        raise
    return conn


class AuditWriter:
    """Bounded in-memory queue + one flushing task. `emit` never blocks or raises."""

    def __init__(
        self,
        db_path: Path | str,
        *,
        batch_size: int = 500,
        flush_interval_s: float = 0.2,
        max_pending: int = 50_000,
    ) -> None:
        self.db_path = db_path
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_pending = max_pending
        self._pending: list[AuditEvent] = []
        self._dropped: Counter[str] = Counter()
        self._wake = asyncio.Event()
        # One flush at a time: `flush()`, `stop()` and the task would otherwise write the
        # same head of `_pending` twice (a batch is dropped from it only once written).
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()  # set by `stop`: the task ends after its flush
        self._conn: sqlite3.Connection | None = None
        # PostgreSQL mode: the store's backend for the server's URL (None on SQLite).
        self._backend: Backend | None = None
        self._retryable: tuple[type[Exception], ...] = (sqlite3.Error,)
        self.written = 0

    async def start(self) -> None:
        if is_postgres_url(self.db_path):
            import psycopg

            self._retryable = (sqlite3.Error, psycopg.Error)
            self._backend = await asyncio.to_thread(
                open_database, str(self.db_path), pool_size=PG_POOL_SIZE
            )
        else:
            self._conn = await asyncio.to_thread(open_db, Path(self.db_path))
        self._closing.clear()
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def stop(self) -> None:
        """Flush what is pending, then close. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            # Told, not cancelled: a cancel would leave a batch that its worker thread is
            # still writing in `_pending`, to be written again below.
            self._closing.set()
            self._wake.set()
            await task
        if self._conn is not None or self._backend is not None:
            await self.flush()
            conn, self._conn = self._conn, None
            backend, self._backend = self._backend, None
            if conn is not None:
                conn.close()
            if backend is not None:
                await asyncio.to_thread(backend.close)

    def emit(self, event: AuditEvent) -> None:
        if event.time == 0.0:
            event = AuditEvent(**{**event.__dict__, "time": time.time()})
        if len(self._pending) >= self.max_pending:
            self._dropped[event.sandbox_id] += 1
            return
        self._pending.append(event)
        if len(self._pending) >= self.batch_size:
            self._wake.set()

    async def flush(self) -> None:
        """Write everything queued so far (tests and shutdown)."""
        async with self._flushing:
            await self._flush_locked()

    async def _run(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            self._wake.clear()
            if self._closing.is_set():
                return  # `stop` writes what is left
            try:
                async with self._flushing:
                    await self._flush_locked()
            except self._retryable as exc:
                # Keep the events and retry: a locked or briefly unavailable db is not fatal.
                log.warning("audit flush failed, will retry: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), 1.0)  # `stop` ends the wait

    async def _flush_locked(self) -> None:
        while self._pending or self._dropped:
            batch = self._pending[: self.batch_size]
            summaries = [
                AuditEvent(sbx, "dns", "deny", f"audit_overflow:{n}", time=time.time())
                for sbx, n in self._dropped.items()
            ]
            events = batch + summaries
            await asyncio.to_thread(self._write, events)
            del self._pending[: len(batch)]
            for e in summaries:
                self._dropped.pop(e.sandbox_id, None)
            self.written += len(events)

    def _write(self, events: list[AuditEvent]) -> None:
        if self._backend is not None:
            self._write_backend(self._backend, events)
            return
        conn = self._conn
        if conn is None:
            raise sqlite3.ProgrammingError("audit db closed")
        with conn:
            conn.execute("BEGIN")
            # In order, so ids follow emission; runs without details go in one executemany.
            run: list[tuple[object, ...]] = []
            for e in events:
                if e.detail is None:
                    run.append(e.row())
                    continue
                if run:
                    conn.executemany(_INSERT, run)
                    run = []
                cur = conn.execute(_INSERT, e.row())
                conn.execute(
                    "INSERT INTO audit_details (event_id, detail) VALUES (?, ?)",
                    (cur.lastrowid, json.dumps(dict(e.detail), separators=(",", ":"))),
                )
            if run:
                conn.executemany(_INSERT, run)

    @staticmethod
    def _write_backend(backend: Backend, events: list[AuditEvent]) -> None:
        """One batch through the store's backend (PostgreSQL): one write transaction, so
        under the store's write lock, in emission order."""
        with backend.write() as c:
            run: list[tuple[object, ...]] = []
            for e in events:
                if e.detail is None:
                    run.append(e.row())
                    continue
                if run:
                    c.executemany(_INSERT, run)
                    run = []
                event_id = c.execute(_INSERT + " RETURNING id", e.row()).fetchone()[0]
                c.execute(
                    "INSERT INTO audit_details (event_id, detail) VALUES (?, ?)",
                    (event_id, json.dumps(dict(e.detail), separators=(",", ":"))),
                )
            if run:
                c.executemany(_INSERT, run)
