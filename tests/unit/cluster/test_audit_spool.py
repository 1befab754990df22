"""A cluster node's gateway audit: the daemon's spool, shipped by the agent to the store.

The daemon's side is the real `AuditWriter` on the spool file; the agent's side is the
real `AuditShipper` on a real store (each backend). "Agent down" is no shipper running;
"agent died mid-batch" is a shipper whose batch fails before or after the store commits,
followed by a new shipper on the same spool, as after a restart.
"""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from declawd.cluster.auditspool import AuditShipper, audit_spool_path, open_spool
from declawd.config import Settings
from declawd.egress.audit import AuditEvent, AuditWriter
from declawd.store import Store


@pytest.fixture
def store(db_target: Path | str) -> Iterator[Store]:
    s = Store(db_target)
    try:
        yield s
    finally:
        s.close()


def spool_of(tmp_path: Path) -> Path:
    """A node's spool, made as the agent makes it at its start (before its daemon runs)."""
    spool = audit_spool_path(Settings(state_dir=tmp_path / "node"))
    open_spool(spool).close()
    return spool


async def daemon_writes(spool: Path, events: list[AuditEvent]) -> None:
    """What the gateway daemon does: emit, then flush to its audit target (the spool)."""
    writer = AuditWriter(spool)
    await writer.start()
    try:
        for e in events:
            writer.emit(e)
        await writer.flush()
    finally:
        await writer.stop()


def dns(sandbox_id: str, n: int) -> AuditEvent:
    return AuditEvent(sandbox_id, "dns", "deny", "name_not_allowed", name=f"n{n}.example")


def names_in_store(store: Store, sandbox_id: str) -> list[str]:
    events, _ = store.query_audit(sandbox_id, limit=1000)
    return [e.get("name") or e["kind"] for e in events]


def spool_count(spool: Path) -> int:
    conn = sqlite3.connect(spool)
    try:
        return int(conn.execute("SELECT count(*) FROM audit_events").fetchone()[0])
    finally:
        conn.close()


def test_spool_is_private_in_the_node_directory(tmp_path: Path) -> None:
    spool = spool_of(tmp_path)
    assert stat.S_IMODE(spool.stat().st_mode) == 0o600
    assert stat.S_IMODE(spool.parent.stat().st_mode) == 0o700


async def test_a_batch_is_handed_over_in_order_with_details(tmp_path: Path, store: Store) -> None:
    spool = spool_of(tmp_path)
    shipper = AuditShipper(spool, store)
    shipper.open()
    await daemon_writes(
        spool,
        [
            dns("sbx1", 1),
            AuditEvent(
                "sbx1", "http", "allow", "inspected", name="a.com", detail={"method": "POST"}
            ),
            AuditEvent("sbx1", "connection", "deny", "sni_not_allowed", address="1.1.1.1"),
        ],
    )
    try:
        assert shipper.ship_all() == 3
    finally:
        shipper.close()
    events, _ = store.query_audit("sbx1")
    assert [e["kind"] for e in events] == ["dns", "http", "connection"]
    assert events[1]["method"] == "POST" and events[2]["address"] == "1.1.1.1"
    assert spool_count(spool) == 0


async def test_agent_down_then_up_nothing_lost_or_duplicated(tmp_path: Path, store: Store) -> None:
    spool = spool_of(tmp_path)
    first = AuditShipper(spool, store, batch_size=4)
    first.open()
    await daemon_writes(spool, [dns("sbx1", i) for i in range(5)])
    assert first.ship_all() == 5
    first.close()  # the agent goes away; the daemon goes on writing
    await daemon_writes(spool, [dns("sbx1", i) for i in range(5, 15)])
    assert spool_count(spool) == 10
    again = AuditShipper(spool, store, batch_size=4)  # the agent restarted
    try:
        assert again.ship_all() == 10
        assert again.ship_all() == 0
    finally:
        again.close()
    assert names_in_store(store, "sbx1") == [f"n{i}.example" for i in range(15)]


class _Died(Exception):
    pass


async def test_died_after_the_store_committed_the_batch_is_not_sent_again(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = spool_of(tmp_path)
    await daemon_writes(spool, [dns("sbx1", i) for i in range(6)])
    dying = AuditShipper(spool, store, batch_size=4)

    def die(*_: Any) -> None:
        raise _Died

    monkeypatch.setattr(AuditShipper, "_forget", staticmethod(die))
    with pytest.raises(_Died):
        dying.ship_once()
    dying.close()
    monkeypatch.undo()
    assert len(names_in_store(store, "sbx1")) == 4  # committed, not yet dropped from the spool
    restarted = AuditShipper(spool, store, batch_size=4)
    try:
        assert restarted.ship_all() == 2
    finally:
        restarted.close()
    assert names_in_store(store, "sbx1") == [f"n{i}.example" for i in range(6)]
    assert spool_count(spool) == 0


async def test_died_before_the_store_committed_the_batch_is_sent_again(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = spool_of(tmp_path)
    await daemon_writes(spool, [dns("sbx1", i) for i in range(6)])
    dying = AuditShipper(spool, store, batch_size=4)

    def unreachable(*_: Any) -> None:
        raise _Died

    monkeypatch.setattr(store, "insert_audit_events", unreachable)
    with pytest.raises(_Died):
        dying.ship_once()
    dying.close()
    monkeypatch.undo()
    assert names_in_store(store, "sbx1") == []
    restarted = AuditShipper(spool, store, batch_size=4)
    try:
        assert restarted.ship_all() == 6
    finally:
        restarted.close()
    assert names_in_store(store, "sbx1") == [f"n{i}.example" for i in range(6)]


async def test_the_agent_ships_while_the_daemon_writes(tmp_path: Path, store: Store) -> None:
    """Two processes on one spool in production; here two threads: the daemon's flushes
    and the shipper's deletes interleave, and every event lands once, in order."""
    spool = spool_of(tmp_path)
    shipper = AuditShipper(spool, store, batch_size=7)
    shipper.open()
    shipping = asyncio.create_task(shipper.run(interval_s=0.01))
    writer = AuditWriter(spool, batch_size=5, flush_interval_s=0.01)
    await writer.start()
    try:
        for i in range(200):
            writer.emit(dns("sbx1", i))
            if i % 10 == 0:
                await asyncio.sleep(0.005)
        await writer.flush()
        for _ in range(500):
            if shipper.shipped == 200:
                break
            await asyncio.sleep(0.01)
    finally:
        await writer.stop()
        shipping.cancel()
        await asyncio.gather(shipping, return_exceptions=True)
        shipper.close()
    assert names_in_store(store, "sbx1") == [f"n{i}.example" for i in range(200)]


async def test_a_failing_store_is_retried_by_the_loop(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = spool_of(tmp_path)
    await daemon_writes(spool, [dns("sbx1", i) for i in range(3)])
    real = store.insert_audit_events
    calls: list[int] = []

    def flaky(events: list[dict[str, Any]]) -> None:
        calls.append(len(events))
        if len(calls) == 1:
            raise OSError("store unreachable")
        real(events)

    monkeypatch.setattr(store, "insert_audit_events", flaky)
    monkeypatch.setattr("declawd.cluster.auditspool.RETRY_S", 0.01)
    shipper = AuditShipper(spool, store)
    shipping = asyncio.create_task(shipper.run(interval_s=0.01))
    try:
        for _ in range(300):
            if shipper.shipped == 3:
                break
            await asyncio.sleep(0.01)
    finally:
        shipping.cancel()
        await asyncio.gather(shipping, return_exceptions=True)
        shipper.close()
    assert calls == [3, 3]
    assert names_in_store(store, "sbx1") == [f"n{i}.example" for i in range(3)]


async def test_an_event_the_store_refuses_does_not_hold_up_the_rest(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = spool_of(tmp_path)
    await daemon_writes(spool, [dns("sbx1", 0), dns("", 1), dns("sbx1", 2), dns("", 3)])
    dying = AuditShipper(spool, store)

    def die(*_: Any) -> None:
        raise _Died

    monkeypatch.setattr(AuditShipper, "_forget", staticmethod(die))
    with pytest.raises(_Died):
        dying.ship_once()  # the batch ends with a refused event: settled on the one before
    dying.close()
    monkeypatch.undo()
    again = AuditShipper(spool, store)
    try:
        assert again.ship_all() == 0
    finally:
        again.close()
    assert names_in_store(store, "sbx1") == ["n0.example", "n2.example"]
    assert spool_count(spool) == 0


async def test_stopping_mid_batch_lets_the_batch_finish(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agent stops (its task cancelled) while a batch is in the worker thread: the
    # batch completes before the spool is closed under it.
    spool = spool_of(tmp_path)
    await daemon_writes(spool, [dns("sbx1", i) for i in range(3)])
    real = store.insert_audit_events
    started = threading.Event()

    def slow(events: list[dict[str, Any]]) -> None:
        started.set()
        time.sleep(0.3)
        real(events)

    monkeypatch.setattr(store, "insert_audit_events", slow)
    shipper = AuditShipper(spool, store)
    shipping = asyncio.create_task(shipper.run())
    assert await asyncio.to_thread(started.wait, 5)
    shipping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await shipping
    shipper.close()
    assert names_in_store(store, "sbx1") == [f"n{i}.example" for i in range(3)]
    assert spool_count(spool) == 0
