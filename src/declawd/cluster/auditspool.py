"""A node's gateway audit: spooled to a node-local SQLite file, shipped by the agent to the store.

In cluster mode the gateway daemon runs in the gateway netns, whose only way out is the
upstream link, so it cannot reach a store over TCP. It writes its audit events with the
same `AuditWriter` as ever, but to `audit_spool_path` (0600 in the agent's 0700
`<state_dir>/cluster/`, reached through the filesystem like the vault socket), and the node
agent's `AuditShipper` moves them, oldest first, into the shared store
(`Store.insert_audit_events`: one write transaction per batch).

Why a file rather than a socket to the agent: the daemon outlives agent restarts (kill -9
included), and while the agent is away its events go on landing on disk, where they also
survive a restart of the daemon or of the machine; handed over a socket they would wait in
the daemon's memory (bounded, so a long outage would end in overflow summaries) and die with
it. Spool ids follow emission order and the shipper sends them in that order, so the store's
ids follow emission per node as before. A batch costs two local SQLite commits (WAL,
synchronous=NORMAL: no fsync each) on top of the store's one.

Exactly once: before a batch goes to the store the shipper records its last spool id in
`audit_shipping`; after the store commits it deletes the batch and the mark in one local
transaction. A mark found later (the agent died, or the store's commit answer was lost)
is settled by looking for the batch's last event in the store: the batch is one store
transaction, so that event is there if and only if the whole batch is. Found: the batch
is dropped from the spool; not found: it is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import sqlite3
from pathlib import Path
from typing import Any

from declawd.config import Settings
from declawd.egress.audit import open_db
from declawd.store import Store
from declawd.store.audit import REQUIRED_FIELDS

log = logging.getLogger(__name__)

BATCH_SIZE = 500
INTERVAL_S = 0.2  # how often an idle spool is looked at
RETRY_S = 1.0  # after a failure (store unreachable, spool locked)

# One row at most: the last spool id of the batch being sent to the store.
_SHIPPING_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_shipping (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    upto INTEGER NOT NULL
);
"""
_SELECT = (
    "SELECT e.*, d.detail AS detail FROM audit_events e"
    " LEFT JOIN audit_details d ON d.event_id = e.id"
)
_COLUMNS = ("kind", "verdict", "reason", "name", "address", "port", "protocol")
# Rows the store accepts (`insert_audit_events` refuses the batch over one without these).
_VALID = " AND ".join(f"e.{f} != ''" for f in REQUIRED_FIELDS)


def audit_spool_path(settings: Settings) -> Path:
    """Where a node's gateway daemon writes its audit (inside the 0700 node directory)."""
    return settings.node_tls_dir / "audit-spool.db"


def open_spool(path: Path) -> sqlite3.Connection:
    """Open (creating it 0600, in a 0700 directory, if needed) the spool; the caller closes."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    conn = open_db(path)  # the daemon's own schema: whichever opens first creates it
    try:
        conn.row_factory = sqlite3.Row
        conn.executescript(_SHIPPING_SCHEMA)
    except BaseException:
        conn.close()
        raise
    return conn


def _event(row: sqlite3.Row) -> dict[str, Any]:
    event: dict[str, Any] = {k: row[k] for k in ("time", "sandbox_id", *_COLUMNS)}
    if row["detail"]:
        event["detail"] = json.loads(row["detail"])
    return event


class AuditShipper:
    """Moves the spool's events into the store, oldest first, each exactly once."""

    def __init__(self, spool: Path, store: Store, *, batch_size: int = BATCH_SIZE) -> None:
        self.spool = spool
        self.store = store
        self.batch_size = batch_size
        self._conn: sqlite3.Connection | None = None
        self.shipped = 0

    def __repr__(self) -> str:
        return f"AuditShipper({self.spool}, shipped={self.shipped})"

    def open(self) -> None:
        """Create the spool if needed (before the gateway daemon starts: it then finds the
        file 0600). Blocking; idempotent."""
        self._db()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = open_spool(self.spool)
        return self._conn

    def ship_once(self) -> int:
        """Settle a batch left in flight, then send one batch; how many events it held
        (0: the spool is empty). Blocking; raises what the spool or the store raise."""
        conn = self._db()
        self._settle(conn)
        rows = conn.execute(f"{_SELECT} ORDER BY e.id LIMIT ?", (self.batch_size,)).fetchall()
        if not rows:
            return 0
        upto = int(rows[-1]["id"])
        events = [_event(r) for r in rows]
        valid = [e for e in events if all(e[f] for f in REQUIRED_FIELDS)]
        if len(valid) < len(events):
            # Never from the daemon; were one there, it must not hold up every later event.
            dropped = len(events) - len(valid)
            log.warning("audit spool: %d events without sandbox, kind or verdict dropped", dropped)
        conn.execute("INSERT OR REPLACE INTO audit_shipping (one, upto) VALUES (1, ?)", (upto,))
        if valid:
            self.store.insert_audit_events(valid)
        self._forget(conn, upto)
        self.shipped += len(rows)
        return len(rows)

    def ship_all(self) -> int:
        """Send batches until the spool is empty; how many events went (blocking)."""
        total = 0
        while n := self.ship_once():
            total += n
        return total

    def _settle(self, conn: sqlite3.Connection) -> None:
        mark = conn.execute("SELECT upto FROM audit_shipping").fetchone()
        if mark is None:
            return
        upto = int(mark["upto"])
        last = conn.execute(
            f"{_SELECT} WHERE e.id <= ? AND {_VALID} ORDER BY e.id DESC LIMIT 1", (upto,)
        ).fetchone()
        if last is not None and not self._in_store(last):
            conn.execute("DELETE FROM audit_shipping")
            log.info("audit batch up to spool id %d had not reached the store: resending", upto)
            return
        self._forget(conn, upto)
        log.info("audit batch up to spool id %d had reached the store: dropped", upto)

    def _in_store(self, row: sqlite3.Row) -> bool:
        """Whether the store holds an event equal to `row` (same sandbox, same time to the
        bit: `emit` stamps each event with `time.time()` as it happens)."""
        t = float(row["time"])
        found, _ = self.store.query_audit(
            row["sandbox_id"], since=t, until=math.nextafter(t, math.inf), limit=1000
        )
        # A column that is NULL may be filled from the detail on the way out: compare the rest.
        want = {k: row[k] for k in _COLUMNS if row[k] is not None}
        return any(all(e.get(k) == v for k, v in want.items()) for e in found)

    @staticmethod
    def _forget(conn: sqlite3.Connection, upto: int) -> None:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM audit_details WHERE event_id <= ?", (upto,))
            conn.execute("DELETE FROM audit_events WHERE id <= ?", (upto,))
            conn.execute("DELETE FROM audit_shipping")

    async def run(self, interval_s: float = INTERVAL_S) -> None:
        """Ship until cancelled: whenever the spool has events, at most `interval_s` later.
        A failure (store unreachable, spool busy) is logged and retried: the events wait
        in the spool. Cancelled, it first lets a batch in its worker thread finish (so
        `close` never closes the spool under it)."""
        while True:
            work = asyncio.ensure_future(asyncio.to_thread(self.ship_once))
            try:
                shipped = await asyncio.shield(work)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await work
                raise
            except Exception as exc:  # any failure: keep the events, try again later
                log.warning("shipping gateway audit: %s (will retry)", exc)
                await asyncio.sleep(RETRY_S)
                continue
            if not shipped:
                await asyncio.sleep(interval_s)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
