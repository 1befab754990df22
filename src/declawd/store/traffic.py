"""How a sandbox's ports route may be reached: its traffic access token and Host mask.

One `sandbox_traffic` row per sandbox (schema v5), written by the create route before the
sandbox exists and kept under its id (a restore brings back the same id, so the same token
and options). The token is 32 random bytes, urlsafe, stored as issued: `connect` must be able
to return it again, and the database file is 0600 (API keys, by contrast, are kept hashed).
Invariants: a sandbox with `allow_public_traffic` false has no token at all, so no token can
open its ports; a sandbox of an older schema (no row) gets one, public, on first `ensure`.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from declawd.store.records import Repository, placeholders

TOKEN_BYTES = 32


@dataclass(frozen=True)
class TrafficAccess:
    sandbox_id: str
    # None exactly when allow_public_traffic is false: only API keys open the ports then.
    token: str | None
    allow_public_traffic: bool = True
    # The Host header sent to the sandbox's servers (`${PORT}` substituted), None: as sent.
    mask_request_host: str | None = None

    def network_view(self) -> dict[str, Any]:
        """The options as the SDK's `SandboxNetworkOpts.to_dict()` writes them (non-defaults)."""
        out: dict[str, Any] = {}
        if not self.allow_public_traffic:
            out["allow_public_traffic"] = False
        if self.mask_request_host is not None:
            out["mask_request_host"] = self.mask_request_host
        return out


def new_traffic_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def _access(row: Any) -> TrafficAccess:
    return TrafficAccess(
        sandbox_id=row["sandbox_id"],
        token=row["token"],
        allow_public_traffic=bool(row["allow_public_traffic"]),
        mask_request_host=row["mask_request_host"],
    )


class Traffic(Repository):
    def set_traffic(
        self,
        sandbox_id: str,
        *,
        allow_public_traffic: bool = True,
        mask_request_host: str | None = None,
    ) -> TrafficAccess:
        """(Re)write the sandbox's options; a new token when public traffic is allowed."""
        access = TrafficAccess(
            sandbox_id,
            new_traffic_token() if allow_public_traffic else None,
            allow_public_traffic,
            mask_request_host,
        )
        with self._db.write() as c:
            c.execute(
                "INSERT INTO sandbox_traffic (sandbox_id, token, allow_public_traffic,"
                " mask_request_host, created_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (sandbox_id) DO UPDATE SET token = excluded.token,"
                " allow_public_traffic = excluded.allow_public_traffic,"
                " mask_request_host = excluded.mask_request_host,"
                " created_at = excluded.created_at",
                (
                    sandbox_id,
                    access.token,
                    int(allow_public_traffic),
                    mask_request_host,
                    self._clock(),
                ),
            )
        return access

    def get_traffic(self, sandbox_id: str) -> TrafficAccess | None:
        row = self._db.query_one(
            "SELECT * FROM sandbox_traffic WHERE sandbox_id = ?", (sandbox_id,)
        )
        return _access(row) if row else None

    def ensure_traffic(self, sandbox_id: str) -> TrafficAccess:
        """The sandbox's options; a sandbox created before schema v5 has none yet and gets
        the defaults (public traffic, a new token), once: concurrent callers agree."""
        found = self.get_traffic(sandbox_id)
        if found is not None:
            return found
        with self._db.write() as c:
            c.execute(
                "INSERT INTO sandbox_traffic (sandbox_id, token, allow_public_traffic,"
                " mask_request_host, created_at) VALUES (?, ?, 1, NULL, ?)"
                " ON CONFLICT DO NOTHING",
                (sandbox_id, new_traffic_token(), self._clock()),
            )
            row = c.execute(
                "SELECT * FROM sandbox_traffic WHERE sandbox_id = ?", (sandbox_id,)
            ).fetchone()
        return _access(row)

    def change_traffic(
        self,
        sandbox_id: str,
        *,
        allow_public_traffic: bool | None = None,
        mask_request_host: str | None = None,
        clear_mask: bool = False,
    ) -> TrafficAccess:
        """A live change of the options: None leaves one as it is. The token survives a
        change that keeps public traffic on; turning it off drops the token; turning it
        back on issues a new one (an old link never comes back to life)."""
        current = self.ensure_traffic(sandbox_id)
        allow = (
            current.allow_public_traffic if allow_public_traffic is None else allow_public_traffic
        )
        mask = None if clear_mask else (mask_request_host or current.mask_request_host)
        token = (current.token or new_traffic_token()) if allow else None
        with self._db.write() as c:
            c.execute(
                "UPDATE sandbox_traffic SET token = ?, allow_public_traffic = ?,"
                " mask_request_host = ? WHERE sandbox_id = ?",
                (token, int(allow), mask, sandbox_id),
            )
        return TrafficAccess(sandbox_id, token, allow, mask)

    def traffic_of(self, sandbox_ids: Iterable[str]) -> dict[str, TrafficAccess]:
        """The options of each of these sandboxes that has a row."""
        ids = list(dict.fromkeys(sandbox_ids))
        out: dict[str, TrafficAccess] = {}
        # SQLite caps bound parameters (999 on old builds): look up in chunks.
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = self._db.query(
                f"SELECT * FROM sandbox_traffic WHERE sandbox_id IN ({placeholders(chunk)})",
                chunk,
            )
            out.update((row["sandbox_id"], _access(row)) for row in rows)
        return out

    def delete_traffic(self, sandbox_id: str) -> bool:
        with self._db.write() as c:
            cur = c.execute("DELETE FROM sandbox_traffic WHERE sandbox_id = ?", (sandbox_id,))
            return cur.rowcount > 0
