"""Dashboard sessions (an API key exchanged for a cookie) and the build history the dashboard
shows.

A session row is keyed by the sha256 of its cookie value, so the database never holds a
usable cookie. Invariant: a session authenticates only while it is fresh (used within the
idle limit, younger than the absolute limit) AND the key it was signed in with is still
unrevoked, so revoking a key ends its sessions on their very next request, as it does for
the key itself.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from declawd.store.records import Repository, row_to_dict

# Schema v6 (store/db.py MIGRATIONS[5]); v5 is the ports migration.
# The table is created by migration v6 (store/db.py, _V6).


IDLE_S = 12 * 3600.0  # a session unused this long has expired (sliding)
MAX_AGE_S = 7 * 24 * 3600.0  # ... and none lives longer than this, however often used
TOUCH_EVERY_S = 60.0  # last_seen_at is rewritten at most this often (not on every request)


def hash_session(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Sessions(Repository):
    def create_session(self, team_id: str, key_id: str) -> tuple[str, str]:
        """A new session of `key_id`: (session id for the cookie, CSRF token). The session
        id is not recoverable afterwards. Expired sessions are purged on the way."""
        session_id = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = self._clock()
        with self._db.write() as c:
            self._purge(c, now)
            c.execute(
                "INSERT INTO dashboard_sessions (session_hash, team_id, key_id, csrf_token,"
                " created_at, last_seen_at) VALUES (?, ?, ?, ?, ?, ?)",
                (hash_session(session_id), team_id, key_id, csrf, now, now),
            )
        return session_id, csrf

    def get_session(self, session_id: str) -> dict[str, Any] | None:
        """{"team_id", "key_id", "csrf_token", "created_at", "last_seen_at", "expires_at"}
        of a fresh session whose key is unrevoked, sliding its idle expiry; else None."""
        if not session_id or len(session_id) > 128:
            return None
        now = self._clock()
        row = self._db.query_one(
            "SELECT s.* FROM dashboard_sessions s JOIN api_keys k USING (key_id)"
            " WHERE s.session_hash = ? AND k.revoked_at IS NULL"
            " AND s.last_seen_at > ? AND s.created_at > ?",
            (hash_session(session_id), now - IDLE_S, now - MAX_AGE_S),
        )
        if row is None:
            return None
        out = row_to_dict(row, ())
        if now - out["last_seen_at"] >= TOUCH_EVERY_S:
            with self._db.write() as c:
                c.execute(
                    "UPDATE dashboard_sessions SET last_seen_at = ? WHERE session_hash = ?",
                    (now, out["session_hash"]),
                )
            out["last_seen_at"] = now
        out["expires_at"] = min(out["last_seen_at"] + IDLE_S, out["created_at"] + MAX_AGE_S)
        del out["session_hash"]
        return out

    def delete_session(self, session_id: str) -> bool:
        """Sign-out; True if the session existed."""
        with self._db.write() as c:
            cur = c.execute(
                "DELETE FROM dashboard_sessions WHERE session_hash = ?", (hash_session(session_id),)
            )
            return cur.rowcount > 0

    def purge_sessions(self) -> int:
        """Delete expired sessions and those of revoked keys; returns how many."""
        with self._db.write() as c:
            return self._purge(c, self._clock())

    @staticmethod
    def _purge(c: Any, now: float) -> int:
        cur = c.execute(
            "DELETE FROM dashboard_sessions WHERE last_seen_at <= ? OR created_at <= ?"
            " OR key_id IN (SELECT key_id FROM api_keys WHERE revoked_at IS NOT NULL)",
            (now - IDLE_S, now - MAX_AGE_S),
        )
        return int(cur.rowcount)

    # Build history -------------------------------------------------------------------
    def list_builds(self, team_id: str, template_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """The team's builds of `template_id`, newest first (built-ins have none)."""
        rows = self._db.query(
            "SELECT build_id, template_id, status, created_at, finished_at FROM builds"
            " WHERE team_id = ? AND template_id = ? ORDER BY created_at DESC, build_id LIMIT ?",
            (team_id, template_id, limit),
        )
        return [dict(r) for r in rows]
