"""The gateway's `SecretSource`: current plaintext of a vault secret, read per request.

Each call is one indexed read of the row's (version, ciphertext) on a read-only SQLite
connection (WAL: never waits on the server's writers); the decrypted value is cached under
that version, so a rotation is seen on the very next request and costs one decrypt, and a
deleted row drops its cache entry and answers None. Thread-safe (one lock around the
connection); cheap enough to call from the event loop. A row that does not decrypt is logged
by id and answered None: the request then carries the placeholder, never a wrong secret.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

from declawd.errors import Internal
from declawd.vault.crypto import MasterKey
from declawd.vault.store import SECRET_VALUE_SQL

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 1000


class VaultReader:
    def __init__(self, db_path: Path, key_path: Path) -> None:
        self._db_path = Path(db_path)
        self._key_path = Path(key_path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._key: MasterKey | None = None
        self._cache: dict[str, tuple[int, str]] = {}
        # (secret_id, version) already reported as undecryptable: log once, not per request.
        self._reported: set[tuple[str, int]] = set()

    def __repr__(self) -> str:
        return f"VaultReader({self._db_path}, cached={len(self._cache)})"

    def value(self, secret_id: str) -> str | None:
        with self._lock:
            try:
                row = self._connection().execute(SECRET_VALUE_SQL, (secret_id,)).fetchone()
            except sqlite3.Error as exc:
                # A missing table (server not migrated yet) or a transient error: nothing
                # to inject this time, and no stale value either.
                log.warning("vault read of %s failed: %s", secret_id, exc)
                self._cache.pop(secret_id, None)
                self._close()
                return None
            if row is None:
                self._cache.pop(secret_id, None)
                return None
            version, blob = int(row[0]), bytes(row[1])
            hit = self._cache.get(secret_id)
            if hit is not None and hit[0] == version:
                return hit[1]
            self._cache.pop(secret_id, None)
            try:
                plain = self._master_key().decrypt(blob, secret_id).reveal()
            except Internal as exc:
                if (secret_id, version) not in self._reported:
                    self._reported.add((secret_id, version))
                    log.error("%s", exc.message)
                return None
            self._cache[secret_id] = (version, plain)
            return plain

    def forget(self) -> None:
        """Drop every cached plaintext (e.g. on reload); the next calls re-read and decrypt."""
        with self._lock:
            self._cache.clear()

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
            self._close()

    # Internals (called under the lock) -------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            uri = self._db_path.absolute().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._conn = conn
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _master_key(self) -> MasterKey:
        # Loaded on first need: the gateway may start before any secret (and key) exists.
        if self._key is None:
            self._key = MasterKey.load(self._key_path)
        return self._key
