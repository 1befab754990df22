"""The gateway's audit writer: batched rows, details of http events, order kept."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from declawd.egress.audit import AuditEvent, AuditWriter
from declawd.store.db import MIGRATIONS


@pytest.mark.asyncio
async def test_http_event_details_are_stored_with_their_event(tmp_path: Path) -> None:
    db = tmp_path / "declawd.db"
    writer = AuditWriter(db)
    await writer.start()
    try:
        writer.emit(AuditEvent("sbx1", "dns", "allow", "name_allowed", name="a.com"))
        writer.emit(
            AuditEvent(
                "sbx1",
                "http",
                "allow",
                "inspected",
                name="a.com",
                detail={"method": "POST", "status_code": 200},
            )
        )
        writer.emit(AuditEvent("sbx1", "connection", "deny", "sni_not_allowed"))
        await writer.flush()
    finally:
        await writer.stop()
    conn = sqlite3.connect(db)
    rows = conn.execute(
        "SELECT e.kind, d.detail FROM audit_events e LEFT JOIN audit_details d"
        " ON d.event_id = e.id ORDER BY e.id"
    ).fetchall()
    conn.close()
    assert [r[0] for r in rows] == ["dns", "http", "connection"]
    assert rows[0][1] is None and rows[2][1] is None
    assert json.loads(rows[1][1]) == {"method": "POST", "status_code": 200}


def test_the_store_migration_creates_the_details_table_the_gateway_also_creates() -> None:
    # Both processes run CREATE TABLE IF NOT EXISTS of the same text: whichever is first.
    from declawd.egress.audit import DETAILS_SCHEMA

    assert DETAILS_SCHEMA.strip() in MIGRATIONS[3]


@pytest.mark.asyncio
async def test_flush_and_stop_racing_the_writer_task_write_each_event_once(tmp_path: Path) -> None:
    # `flush()` while the task flushes, and `stop()` while a batch is in its worker thread,
    # used to write that batch a second time (it leaves `_pending` only once written).
    db = tmp_path / "declawd.db"
    writer = AuditWriter(db, batch_size=5, flush_interval_s=0.001)
    await writer.start()
    try:
        for i in range(300):
            writer.emit(AuditEvent("sbx1", "dns", "deny", "r", name=f"n{i}"))
            if i % 7 == 0:
                await asyncio.gather(writer.flush(), asyncio.sleep(0))
    finally:
        await writer.stop()
    conn = sqlite3.connect(db)
    names = [r[0] for r in conn.execute("SELECT name FROM audit_events ORDER BY id")]
    conn.close()
    assert names == [f"n{i}" for i in range(300)]
