"""Teams and API keys: creation, authentication, revocation, the dev key.

A key is `dcw_` + 40 urlsafe random characters, shown once; only its sha256 is stored,
so authentication is one indexed lookup by hash and a revoked key fails on the very next
request (no cache).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path
from typing import Any

from declawd.store.errors import AmbiguousKey
from declawd.store.records import Repository, new_id

KEY_PREFIX = "dcw_"
KEY_RANDOM_CHARS = 40  # token_urlsafe(30) yields exactly 40 characters
KEY_LENGTH = len(KEY_PREFIX) + KEY_RANDOM_CHARS
DISPLAY_PREFIX_LEN = 12
DEFAULT_TEAM = "default"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(30)


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def looks_like_key(text: str) -> bool:
    return len(text) == KEY_LENGTH and text.startswith(KEY_PREFIX)


class TeamsAndKeys(Repository):
    # Teams ---------------------------------------------------------------------------
    def create_team(self, name: str) -> str:
        """Raises `Duplicate` if the name is taken."""
        if not name or not name.strip():
            raise ValueError("team name must not be empty")
        team_id = new_id("team")
        with self._db.write() as c:
            c.execute(
                "INSERT INTO teams (team_id, name, created_at) VALUES (?, ?, ?)",
                (team_id, name, self._clock()),
            )
        return team_id

    def get_team(self, team_id: str) -> dict[str, Any] | None:
        row = self._db.query_one("SELECT * FROM teams WHERE team_id = ?", (team_id,))
        return dict(row) if row else None

    def get_team_by_name(self, name: str) -> dict[str, Any] | None:
        row = self._db.query_one("SELECT * FROM teams WHERE name = ?", (name,))
        return dict(row) if row else None

    def list_teams(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._db.query("SELECT * FROM teams ORDER BY created_at, name")]

    # Keys ----------------------------------------------------------------------------
    def create_api_key(self, team_id: str, name: str = "") -> tuple[str, str]:
        """Returns (key_id, plaintext). The plaintext is not recoverable afterwards.

        An unknown team_id violates the foreign key (the backend's IntegrityError:
        sqlite3's or psycopg's).
        """
        key_id = new_id("key")
        plaintext = generate_key()
        with self._db.write() as c:
            c.execute(
                "INSERT INTO api_keys (key_id, team_id, name, key_hash, prefix, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    key_id,
                    team_id,
                    name,
                    hash_key(plaintext),
                    plaintext[:DISPLAY_PREFIX_LEN],
                    self._clock(),
                ),
            )
        return key_id, plaintext

    def authenticate(self, plaintext: str) -> dict[str, str] | None:
        """{"team_id", "key_id"} for a valid, unrevoked key; otherwise None."""
        if not looks_like_key(plaintext):
            return None
        row = self._db.query_one(
            "SELECT key_id, team_id FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL",
            (hash_key(plaintext),),
        )
        return {"team_id": row["team_id"], "key_id": row["key_id"]} if row else None

    def list_api_keys(self, team_id: str | None = None) -> list[dict[str, Any]]:
        sql = (
            "SELECT k.key_id, k.team_id, t.name AS team_name, k.name, k.prefix,"
            " k.created_at, k.revoked_at FROM api_keys k JOIN teams t USING (team_id)"
        )
        params: tuple[str, ...] = ()
        if team_id is not None:
            sql += " WHERE k.team_id = ?"
            params = (team_id,)
        return [dict(r) for r in self._db.query(sql + " ORDER BY k.created_at, k.key_id", params)]

    def revoke_api_key(self, key_id_or_prefix: str) -> bool:
        """Revoke by key id, displayed prefix, or the full key.

        True if an active key was revoked now; False if nothing matched or it was already
        revoked. A prefix shared by several keys raises `AmbiguousKey`.
        """
        ident = key_id_or_prefix.strip()
        if not ident:
            return False
        with self._db.write() as c:
            if looks_like_key(ident):
                rows = c.execute(
                    "SELECT key_id, revoked_at FROM api_keys WHERE key_hash = ?",
                    (hash_key(ident),),
                ).fetchall()
            else:
                rows = c.execute(
                    "SELECT key_id, revoked_at FROM api_keys WHERE key_id = ?", (ident,)
                ).fetchall()
                if not rows:
                    rows = c.execute(
                        "SELECT key_id, revoked_at FROM api_keys WHERE prefix = ?", (ident,)
                    ).fetchall()
            if len(rows) > 1:
                raise AmbiguousKey(f"{ident!r} matches {len(rows)} keys; revoke by key id instead")
            if not rows or rows[0]["revoked_at"] is not None:
                return False
            c.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ?",
                (self._clock(), rows[0]["key_id"]),
            )
        return True

    def ensure_dev_key(self, path: Path) -> tuple[str, str, bool]:
        """(team_id, plaintext, created): reuse the key in `path` while it is valid.

        Otherwise make sure team "default" exists, create a key for it and write it to
        `path` (mode 0600, written atomically so a reader never sees half a key).
        """
        path = Path(path)
        with contextlib.suppress(FileNotFoundError):
            existing = path.read_text().strip()
            auth = self.authenticate(existing)
            if auth is not None:
                return auth["team_id"], existing, False
        team = self.get_team_by_name(DEFAULT_TEAM)
        team_id = team["team_id"] if team else self.create_team(DEFAULT_TEAM)
        _, plaintext = self.create_api_key(team_id, name="dev")
        _write_secret(path, plaintext + "\n")
        return team_id, plaintext, True


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
