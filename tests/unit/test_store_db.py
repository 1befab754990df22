"""Schema migrations, connection settings and concurrency of declawd.store."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from declawd.store import (
    AUDIT_EVENTS_SCHEMA,
    Duplicate,
    SandboxRecord,
    SandboxState,
    SchemaTooNew,
    Store,
)
from declawd.store.db import MIGRATIONS, Database, split_statements

TABLES = {
    "teams",
    "api_keys",
    "sandboxes",
    "idempotency",
    "templates",
    "template_aliases",
    "builds",
    "audit_events",
}


def _creating(sandbox_id: str, team_id: str) -> SandboxRecord:
    return SandboxRecord(
        sandbox_id=sandbox_id,
        team_id=team_id,
        state=SandboxState.CREATING,
        template_id="tpl-000000000001",
        template_alias="base",
        runtime="runc",
        created_at=1000.0,
        timeout=300,
    )


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as c:
        rows = c.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows}


def test_fresh_file_is_migrated_to_latest_version(tmp_path: Path) -> None:
    db = tmp_path / "state" / "declawd.db"
    with Store(db) as store:
        assert store.schema_version == len(MIGRATIONS)
    assert _tables(db) >= TABLES


def test_reopen_is_idempotent_and_keeps_data(db_target: Path | str) -> None:
    db = db_target
    with Store(db) as store:
        team = store.create_team("acme")
    with Store(db) as store:
        assert store.schema_version == len(MIGRATIONS)
        assert store.get_team(team) is not None


def test_db_file_is_private(tmp_path: Path) -> None:
    db = tmp_path / "declawd.db"
    Store(db).close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_connection_pragmas(tmp_path: Path) -> None:
    with Store(tmp_path / "d.db") as store:
        c = store._db.conn()
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert c.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        assert c.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    Store(db).close()
    with sqlite3.connect(db) as c:
        c.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(SchemaTooNew):
        Store(db)


def test_migrations_apply_in_order_one_version_each(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    steps = ["CREATE TABLE a (x INTEGER);", "ALTER TABLE a ADD COLUMN y TEXT;\nCREATE TABLE b (z);"]
    Database(db, steps[:1]).close()
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == 1
    d2 = Database(db, steps)
    assert d2.user_version() == 2
    assert [r[1] for r in d2.query("PRAGMA table_info(a)")] == ["x", "y"]
    d2.close()


_V1_ROW = (
    "INSERT INTO sandboxes (sandbox_id, team_id, template_id, state, runtime, slot,"
    " created_at, started_at, error, lab) VALUES (?, 'team-a', 'tpl-1', ?, 'runc', ?, ?, ?, ?, 0)"
)


def test_migration_v1_to_v2_maps_states_and_released(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    Database(db, MIGRATIONS[:1]).close()
    with sqlite3.connect(db) as c:
        c.executemany(
            _V1_ROW,
            [
                ("sbx-failed", "failed", 1, 1.0, None, "boom"),
                ("sbx-running", "running", 2, 2.0, 2.5, None),
                ("sbx-creating", "creating", 3, 3.0, None, None),
                ("sbx-killed", "killed", 2, 0.5, 0.6, None),  # a dead one kept slot 2 in v1
            ],
        )
    with Store(db) as store:
        assert store.schema_version == len(MIGRATIONS)
        failed = store.get_sandbox("sbx-failed")
        running = store.get_sandbox("sbx-running")
        creating = store.get_sandbox("sbx-creating")
        killed = store.get_sandbox("sbx-killed")
        assert failed is not None and running is not None
        assert creating is not None and killed is not None
        assert (failed.state, failed.released, failed.error) == (
            SandboxState.KILLED,
            True,
            "boom",
        )
        assert (running.state, running.released) == (SandboxState.RUNNING, False)
        assert (creating.state, creating.released) == (SandboxState.CREATING, False)
        assert (killed.state, killed.released) == (SandboxState.KILLED, True)
        assert running.timeout == 0 and running.template_alias == "tpl-1"  # NULLs of v1
        assert [r.sandbox_id for r in store.list_unreleased_sandboxes()] == [
            "sbx-running",
            "sbx-creating",
        ]
        # the slot index now covers unreleased sandboxes: slots 2 and 3 are held, 1 is free
        with pytest.raises(Duplicate):
            store.update_sandbox("sbx-creating", slot=2)
        store.insert_sandbox(_creating("sbx-new", "team-a"))
        assert store.allocate_slot("sbx-new") == 1


def test_failed_migration_leaves_previous_version(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    Database(db, ["CREATE TABLE a (x);"]).close()
    with pytest.raises(sqlite3.OperationalError):
        Database(db, ["CREATE TABLE a (x);", "CREATE TABLE b (y);\nSELECT nosuchfn();"])
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == 1
        names = {r[0] for r in c.execute("SELECT name FROM sqlite_master")}
    assert "b" not in names  # rolled back together with the failing statement


def test_gateway_created_audit_table_first(tmp_path: Path) -> None:
    """The gateway daemon may create audit_events before the server ever migrates."""
    db = tmp_path / "d.db"
    with sqlite3.connect(db) as c:
        c.executescript(AUDIT_EVENTS_SCHEMA)
        c.execute(
            "INSERT INTO audit_events (time, sandbox_id, kind, verdict)"
            " VALUES (1.0, 's', 'dns', 'allow')"
        )
    with Store(db) as store:
        assert store.schema_version == len(MIGRATIONS)
        assert len(store.audit_after("s", 0)) == 1


def test_audit_schema_is_identical_to_the_gateways() -> None:
    from declawd.egress import audit as gateway_audit

    assert AUDIT_EVENTS_SCHEMA == gateway_audit.SCHEMA


def test_split_statements() -> None:
    assert split_statements("CREATE TABLE a (x);\n\nCREATE INDEX i ON a (x);\n") == [
        "CREATE TABLE a (x);",
        "CREATE INDEX i ON a (x);",
    ]
    with pytest.raises(ValueError):
        split_statements("CREATE TABLE a (x")


def test_close_is_idempotent_and_final(db_target: Path | str) -> None:
    store = Store(db_target)
    store.list_teams()
    store.close()
    store.close()
    with pytest.raises(RuntimeError):
        store.list_teams()


def test_close_while_another_thread_is_inside_a_statement(tmp_path: Path) -> None:
    """A background write still running when the store closes (a node's pause snapshot at
    shutdown): the statement finishes, the process lives, the thread's next call raises.
    Closing that connection under the statement crashed the unit suite with SIGSEGV."""
    db = Database(tmp_path / "d.db", ["CREATE TABLE t (x INTEGER);"])
    inside, result = threading.Event(), []

    def slow() -> int:
        inside.set()
        time.sleep(0.5)
        return 1

    def writer() -> None:
        c = db.conn()
        c.create_function("slow", 0, slow)
        with db.write() as w:
            w.execute("INSERT INTO t VALUES (slow())")
        result.append("written")
        try:
            db.conn()
        except RuntimeError as exc:
            result.append(str(exc))

    t = threading.Thread(target=writer)
    t.start()
    assert inside.wait(10)
    db.close()  # while the INSERT runs in the other thread
    t.join(10)
    assert result == ["written", "store is closed"]
    check = sqlite3.connect(tmp_path / "d.db")
    assert check.execute("SELECT x FROM t").fetchall() == [(1,)]
    check.close()


def test_each_live_thread_gets_its_own_connection(tmp_path: Path) -> None:
    with Store(tmp_path / "d.db") as store:
        seen: list[int] = []
        all_hold = threading.Barrier(4)

        def grab() -> None:
            seen.append(id(store._db.conn()))
            all_hold.wait(timeout=30)  # keep every thread (and its connection) alive

        threads = [threading.Thread(target=grab) for _ in range(3)]
        for t in threads:
            t.start()
        seen.append(id(store._db.conn()))
        all_hold.wait(timeout=30)
        for t in threads:
            t.join()
        assert len(set(seen)) == 4
        assert store._db.conn() is store._db.conn()


def test_concurrent_threads_mixed_reads_and_writes(db_target: Path | str) -> None:
    with Store(db_target) as store:
        team = store.create_team("t")
        _, key = store.create_api_key(team)
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(40):
                    sid = f"sbx-{n:02x}{i:010x}"
                    store.insert_sandbox(_creating(sid, team))
                    store.allocate_slot(sid)
                    assert store.authenticate(key) is not None
                    store.update_sandbox(sid, state=SandboxState.RUNNING, started_at=float(i))
                    won = store.transition(
                        sid, [SandboxState.RUNNING], SandboxState.KILLED, released=True
                    )
                    assert won is not None
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        page, _ = store.list_sandboxes(team, limit=1000, states=list(SandboxState))
        assert len(page) == 8 * 40
        assert all(s.state is SandboxState.KILLED and s.released for s in page)
        assert store.list_unreleased_sandboxes() == []


_WRITER = textwrap.dedent(
    """
    import select, sys
    from declawd.store import Store
    s = Store(sys.argv[1])
    batch = [{"time": 1.0, "sandbox_id": "sbx-gw", "kind": "dns", "verdict": "allow",
              "reason": "r"}] * 20
    s.insert_audit_events(batch)
    print("ready", flush=True)
    n = 1
    while not select.select([sys.stdin], [], [], 0)[0]:  # until the parent closes stdin
        s.insert_audit_events(batch)
        n += 1
    print(n, flush=True)
    """
)


def test_two_processes_with_a_busy_writer(db_target: Path | str) -> None:
    """Another process inserting audit rows non-stop must not make us fail with 'locked'."""
    db = db_target
    with Store(db) as store:
        team = store.create_team("t")
        _, key = store.create_api_key(team)
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert writer.stdin is not None and writer.stdout is not None
            assert writer.stdout.readline().strip() == "ready"
            errors: list[BaseException] = []

            def work(n: int) -> None:
                try:
                    for i in range(30):
                        sid = f"sbx-{n:02x}{i:010x}"
                        store.insert_sandbox(_creating(sid, team))
                        store.allocate_slot(sid)
                        store.insert_audit_events(
                            [{"sandbox_id": sid, "kind": "dns", "verdict": "allow"}]
                        )
                        assert store.authenticate(key) is not None
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            writer.stdin.close()  # the writer ran for the whole time our threads did
            batches = int(writer.stdout.readline())
            assert writer.wait(timeout=60) == 0
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
            if writer.stdout:
                writer.stdout.close()
        assert errors == []
        assert len(store.audit_after("sbx-gw", 0, limit=10**7)) == batches * 20
        slots = [s.slot for s in store.list_live_sandboxes()]
        assert sorted(slots) == list(range(1, 4 * 30 + 1))


_OPENER = textwrap.dedent(
    """
    import sys
    from declawd.store import Store
    Store(sys.argv[1]).close()
    """
)


def test_processes_opening_a_fresh_file_together_migrate_once(db_target: Path | str) -> None:
    db = db_target
    procs = [
        subprocess.Popen([sys.executable, "-c", _OPENER, str(db)], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else b"") for p in procs]
    for p in procs:
        if p.stderr:
            p.stderr.close()
    assert all(rc == 0 for rc, _ in results), results
    with Store(db) as store:
        assert store.schema_version == len(MIGRATIONS)
