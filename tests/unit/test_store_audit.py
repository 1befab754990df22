"""Audit events: insert, filtered pages, tailing, and rows written by the gateway."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from declawd.egress.audit import AuditEvent, AuditWriter
from declawd.errors import InvalidInput
from declawd.store import AUDIT_EVENTS_SCHEMA, Store


@pytest.fixture
def store(db_target: Path | str) -> Iterator[Store]:
    with Store(db_target, clock=lambda: 500.0) as s:
        yield s


def _ev(t: float, verdict: str = "allow", kind: str = "dns", sid: str = "sbx-1") -> dict:
    return {"time": t, "sandbox_id": sid, "kind": kind, "verdict": verdict, "reason": "policy"}


def test_event_shape(store: Store) -> None:
    store.insert_audit_events(
        [
            {**_ev(1_700_000_000.25), "name": "api.openai.com"},
            {
                **_ev(1_700_000_001.0, "deny", "connection"),
                "address": "203.0.113.66",
                "port": 443,
                "protocol": "tcp",
            },
        ]
    )
    events, token = store.query_audit("sbx-1")
    assert token is None
    assert events[0] == {
        "time": "2023-11-14T22:13:20.250000+00:00",
        "sandbox_id": "sbx-1",
        "kind": "dns",
        "verdict": "allow",
        "reason": "policy",
        "name": "api.openai.com",
    }
    assert events[1]["address"] == "203.0.113.66" and events[1]["port"] == 443
    assert "name" not in events[1]
    assert datetime.fromisoformat(events[1]["time"]).timestamp() == 1_700_000_001.0


def test_time_defaults_and_iso_input(store: Store) -> None:
    store.insert_audit_events(
        [
            {"sandbox_id": "sbx-1", "kind": "dns", "verdict": "allow"},
            {
                "sandbox_id": "sbx-1",
                "kind": "dns",
                "verdict": "allow",
                "time": "2023-11-14T22:13:20+00:00",
            },
        ]
    )
    events, _ = store.query_audit("sbx-1")
    assert events[0]["time"] == "1970-01-01T00:08:20+00:00"  # the injected clock: 500 s
    assert events[1]["time"] == "2023-11-14T22:13:20+00:00"
    store.insert_audit_events([])  # no-op


def test_required_fields(store: Store) -> None:
    with pytest.raises(ValueError, match="verdict"):
        store.insert_audit_events([_ev(1.0), {"sandbox_id": "sbx-1", "kind": "dns"}])
    assert store.audit_after("sbx-1", 0) == []  # the whole batch or nothing


def test_filters(store: Store) -> None:
    store.insert_audit_events(
        [
            _ev(10, "allow", "dns"),
            _ev(20, "deny", "dns"),
            _ev(30, "deny", "connection"),
            _ev(40, "allow", "connection"),
            _ev(25, "deny", "dns", sid="sbx-2"),
        ]
    )

    def times(**kw: object) -> list[str]:
        events, _ = store.query_audit("sbx-1", **kw)  # type: ignore[arg-type]
        return [e["time"][17:19] for e in events]  # seconds field

    assert times() == ["10", "20", "30", "40"]
    assert times(since=20) == ["20", "30", "40"]
    assert times(until=30) == ["10", "20"]
    assert times(since=15, until=35) == ["20", "30"]
    assert times(verdict="deny") == ["20", "30"]
    assert times(kind="connection") == ["30", "40"]
    assert times(verdict="deny", kind="dns") == ["20"]


def test_pages_are_complete_and_ordered(store: Store) -> None:
    store.insert_audit_events([_ev(float(i)) for i in range(25)])
    got: list[str] = []
    token = None
    while True:
        events, token = store.query_audit("sbx-1", limit=10, next_token=token)
        got.extend(e["time"] for e in events)
        if token is None:
            break
    assert len(got) == 25 and got == sorted(got)
    # new events arriving later are found by the same cursor
    events, token = store.query_audit("sbx-1", limit=10)
    store.insert_audit_events([_ev(100.0)])
    rest = []
    while token:
        page, token = store.query_audit("sbx-1", limit=10, next_token=token)
        rest.extend(page)
    assert len(rest) == 16


def test_bad_token_and_limit(store: Store) -> None:
    with pytest.raises(InvalidInput, match="^next_token: invalid pagination token$"):
        store.query_audit("sbx-1", next_token="!!")
    with pytest.raises(InvalidInput) as exc:
        store.query_audit("sbx-1", next_token="Ii0xIg")  # json "-1"
    assert exc.value.field == "next_token"
    with pytest.raises(InvalidInput) as exc:
        store.query_audit("sbx-1", limit=0)
    assert (exc.value.field, exc.value.reason) == ("limit", "must be at least 1")


def test_audit_after_tails_the_stream(store: Store) -> None:
    assert store.audit_after("sbx-1", 0) == []
    assert store.last_audit_id("sbx-1") == 0
    store.insert_audit_events([_ev(1), _ev(2, sid="sbx-2"), _ev(3)])
    first = store.audit_after("sbx-1", 0)
    assert [e["time"][-8:-6] for _, e in first] == ["01", "03"]
    last = first[-1][0]
    assert store.last_audit_id("sbx-1") == last
    assert store.audit_after("sbx-1", last) == []
    store.insert_audit_events([_ev(4)])
    more = store.audit_after("sbx-1", last)
    assert len(more) == 1 and more[0][0] > last
    assert len(store.audit_after("sbx-1", 0, limit=1)) == 1


def test_rows_written_directly_by_the_gateway_are_read(tmp_path: Path) -> None:
    db = tmp_path / "declawd.db"
    with Store(db) as store:
        gw = sqlite3.connect(db, isolation_level=None)
        try:
            gw.executescript(AUDIT_EVENTS_SCHEMA)  # what the daemon runs on start
            gw.execute(
                "INSERT INTO audit_events (time, sandbox_id, kind, verdict, reason, address,"
                " port, protocol) VALUES (1.5, 'sbx-9', 'connection', 'deny', 'floor',"
                " '10.0.0.1', 80, 'tcp')"
            )
        finally:
            gw.close()
        events, _ = store.query_audit("sbx-9")
        assert events == [
            {
                "time": "1970-01-01T00:00:01.500000+00:00",
                "sandbox_id": "sbx-9",
                "kind": "connection",
                "verdict": "deny",
                "reason": "floor",
                "address": "10.0.0.1",
                "port": 80,
                "protocol": "tcp",
            }
        ]


HTTP_DETAIL = {
    "timestamp": "2023-11-14T22:13:20+00:00",
    "method": "POST",
    "url": "https://api.openai.com/v1/chat?key=***",
    "status_code": 200,
    "direction": "outbound",
    "pii_redactions": 0,
    "injection_blocks": 0,
    "transformations_applied": 2,
    "vault_injections": 1,
    "bytes_out": 120,
    "bytes_in": 800,
}


def test_an_http_events_detail_is_merged_into_the_event(store: Store) -> None:
    store.insert_audit_events(
        [
            _ev(1.0, kind="dns"),
            {
                **_ev(2.0, kind="http"),
                "reason": "inspected",
                "name": "api.openai.com",
                "port": 443,
                "detail": HTTP_DETAIL,
            },
        ]
    )
    events, _ = store.query_audit("sbx-1", kind="http")
    assert events == [
        {
            "time": "1970-01-01T00:00:02+00:00",
            "sandbox_id": "sbx-1",
            "kind": "http",
            "verdict": "allow",
            "reason": "inspected",
            "name": "api.openai.com",
            "port": 443,
            **HTTP_DETAIL,
        }
    ]
    assert [e["kind"] for _, e in store.audit_after("sbx-1", 0)] == ["dns", "http"]
    assert store.audit_after("sbx-1", 0)[1][1]["transformations_applied"] == 2
    assert "method" not in store.query_audit("sbx-1", kind="dns")[0][0]


def test_a_column_wins_over_a_detail_key_of_the_same_name(store: Store) -> None:
    store.insert_audit_events([{**_ev(1.0, kind="http"), "detail": {"verdict": "x", "a": 1}}])
    event = store.query_audit("sbx-1")[0][0]
    assert event["verdict"] == "allow" and event["a"] == 1


def test_a_detail_that_is_not_a_mapping_is_refused_with_the_whole_batch(store: Store) -> None:
    with pytest.raises(ValueError, match="detail"):
        store.insert_audit_events([_ev(1.0), {**_ev(2.0), "detail": "nope"}])
    assert store.query_audit("sbx-1")[0] == []


async def test_http_events_the_gateway_writes_are_read_with_their_detail(
    db_target: Path | str,
) -> None:
    db = db_target
    with Store(db) as store:
        writer = AuditWriter(db)
        await writer.start()
        writer.emit(AuditEvent("sbx-7", "connection", "allow", "policy", time=1.0))
        writer.emit(AuditEvent("sbx-7", "http", "allow", "inspected", time=2.0, detail=HTTP_DETAIL))
        await writer.stop()
        events, _ = store.query_audit("sbx-7")
        assert [e["kind"] for e in events] == ["connection", "http"]
        assert "url" not in events[0]
        assert {k: events[1][k] for k in HTTP_DETAIL} == HTTP_DETAIL


def test_a_malformed_detail_row_does_not_break_reading(tmp_path: Path) -> None:
    db = tmp_path / "declawd.db"
    with Store(db) as store:
        store.insert_audit_events([_ev(1.0, kind="http")])
        event_id = store.last_audit_id("sbx-1")
        gw = sqlite3.connect(db, isolation_level=None)
        try:
            gw.execute(
                "INSERT INTO audit_details (event_id, detail) VALUES (?, '{oops')", (event_id,)
            )
        finally:
            gw.close()
        assert store.query_audit("sbx-1")[0][0]["kind"] == "http"
