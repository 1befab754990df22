"""The gateway's VaultReader: current value per request, rotation and deletion seen at once."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from declawd.store import Store
from declawd.vault import NewSecret, VaultService
from declawd.vault.crypto import MasterKey
from declawd.vault.reader import VaultReader
from tests.unit.vault.conftest import VALUE


@pytest.fixture
def reader(store: Store, key_path: Path) -> Iterator[VaultReader]:
    r = VaultReader(store.db_path, key_path)
    yield r
    r.close()


@pytest.fixture
def secret_id(svc: VaultService, team: str) -> str:
    rec = svc.create_secret(
        team, NewSecret(environment="prod", value=VALUE, name="k", provider="openai")
    )
    return rec.secret_id


class CountingKey:
    """Counts decrypts: the cache must avoid them while the version stays the same."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = MasterKey.decrypt

        def counted(key: MasterKey, blob: bytes, secret_id: str) -> object:
            self.calls += 1
            return real(key, blob, secret_id)

        monkeypatch.setattr(MasterKey, "decrypt", counted)


def test_reads_the_current_value_and_decrypts_once_per_version(
    reader: VaultReader, secret_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = CountingKey(monkeypatch)
    assert [reader.value(secret_id) for _ in range(3)] == [VALUE] * 3
    assert key.calls == 1


def test_a_rotation_is_seen_on_the_next_call(
    reader: VaultReader, svc: VaultService, team: str, secret_id: str
) -> None:
    assert reader.value(secret_id) == VALUE
    svc.rotate(team, secret_id, "sk-rotated-0000000001")
    assert reader.value(secret_id) == "sk-rotated-0000000001"
    svc.rotate(team, secret_id, "sk-rotated-0000000002")
    assert reader.value(secret_id) == "sk-rotated-0000000002"


def test_a_deleted_secret_is_none_and_leaves_the_cache(
    reader: VaultReader, svc: VaultService, team: str, secret_id: str
) -> None:
    assert reader.value(secret_id) == VALUE
    svc.delete(team, secret_id)
    assert reader.value(secret_id) is None
    assert "cached=0" in repr(reader)
    assert reader.value("vsec-000000000000") is None


def test_a_row_that_does_not_decrypt_is_none_and_logged_by_id_once(
    reader: VaultReader, store: Store, secret_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    with sqlite3.connect(store.db_path) as c:
        c.execute(
            "UPDATE vault_secrets SET ciphertext = ?, version = 7 WHERE secret_id = ?",
            (b"\x01" + b"\x00" * 40, secret_id),
        )
    with caplog.at_level(logging.ERROR, logger="declawd.vault.reader"):
        assert reader.value(secret_id) is None
        assert reader.value(secret_id) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"vault secret {secret_id}: cannot decrypt (wrong master key or corrupt row)"
    ]


def test_a_wrong_master_key_never_yields_a_value(
    store: Store, tmp_path: Path, secret_id: str
) -> None:
    wrong = tmp_path / "other.key"
    MasterKey.load_or_create(wrong)
    r = VaultReader(store.db_path, wrong)
    try:
        assert r.value(secret_id) is None
    finally:
        r.close()


def test_no_key_file_yet_means_no_value(store: Store, tmp_path: Path, secret_id: str) -> None:
    r = VaultReader(store.db_path, tmp_path / "absent.key")
    try:
        assert r.value(secret_id) is None
        assert not (tmp_path / "absent.key").exists()  # the reader never creates the key
    finally:
        r.close()


def test_a_database_without_vault_tables_means_no_value(tmp_path: Path, key_path: Path) -> None:
    db = tmp_path / "empty.db"
    sqlite3.connect(db).close()
    r = VaultReader(db, key_path)
    try:
        assert r.value("vsec-000000000001") is None
    finally:
        r.close()


def test_the_reader_never_writes(reader: VaultReader, store: Store, secret_id: str) -> None:
    assert reader.value(secret_id) == VALUE
    conn = reader._connection()
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("DELETE FROM vault_secrets")


def test_concurrent_callers_all_get_the_value(reader: VaultReader, secret_id: str) -> None:
    got: list[str | None] = []
    barrier = threading.Barrier(8)

    def call() -> None:
        barrier.wait()
        got.extend(reader.value(secret_id) for _ in range(20))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [VALUE] * 160


def test_the_repr_never_shows_a_value(reader: VaultReader, secret_id: str) -> None:
    assert reader.value(secret_id) == VALUE
    assert VALUE not in repr(reader)
