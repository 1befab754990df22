"""Vault records in `declawd.db`: environments, secrets (ciphertext only) and sandbox refs.

A secret row's `version` grows by one on every rotation, in the transaction that writes the
new ciphertext; the gateway's reader keys its cache on it, so a rotation is seen on the next
request. Rows leave as frozen records without the ciphertext: only `SECRET_VALUE_SQL` (the
reader) and the service's decrypt path ever read it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from declawd.inspect.model import VaultBinding, VaultScope
from declawd.store.records import Repository, placeholders

if TYPE_CHECKING:
    from declawd.store import Store

DAY_S = 86400.0
# The one query for a value: (version, ciphertext) of the current row, or no row (deleted).
SECRET_VALUE_SQL = "SELECT version, ciphertext FROM vault_secrets WHERE secret_id = ?"


@dataclass(frozen=True)
class EnvironmentRecord:
    team_id: str
    name: str
    created_at: float


@dataclass(frozen=True)
class SecretRecord:
    secret_id: str
    team_id: str
    environment: str
    name: str
    provider: str | None
    scopes: tuple[VaultScope, ...]
    version: int
    rotation_interval_days: int
    created_at: float
    updated_at: float
    rotated_at: float | None = None

    def rotation_due(self, now: float) -> bool:
        if self.rotation_interval_days <= 0:
            return False
        since = self.rotated_at if self.rotated_at is not None else self.created_at
        return now >= since + self.rotation_interval_days * DAY_S


def _secret(row: Any) -> SecretRecord:
    return SecretRecord(
        secret_id=row["secret_id"],
        team_id=row["team_id"],
        environment=row["environment"],
        name=row["name"],
        provider=row["provider"],
        scopes=decode_scopes(row["scopes"]),
        version=int(row["version"]),
        rotation_interval_days=int(row["rotation_interval_days"]),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
        rotated_at=None if row["rotated_at"] is None else float(row["rotated_at"]),
    )


def encode_scopes(scopes: Sequence[VaultScope]) -> str:
    return json.dumps([s.to_wire() for s in scopes], separators=(",", ":"))


def decode_scopes(raw: str) -> tuple[VaultScope, ...]:
    return tuple(VaultScope.from_wire(s) for s in json.loads(raw))


_COLUMNS = (
    "secret_id, team_id, environment, name, provider, scopes, version,"
    " rotation_interval_days, created_at, updated_at, rotated_at"
)


class VaultRecords(Repository):
    @classmethod
    def of(cls, store: Store) -> VaultRecords:
        """The vault tables of the store's database (same connections, same clock)."""
        return cls(store._db, store._clock)

    # Environments -----------------------------------------------------------------------
    def ensure_environment(self, team_id: str, name: str) -> tuple[EnvironmentRecord, bool]:
        """The environment, and whether this call created it (idempotent under races)."""
        with self._db.write() as c:
            cur = c.execute(
                "INSERT INTO vault_environments (team_id, name, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT (team_id, name) DO NOTHING",
                (team_id, name, self._clock()),
            )
            created = cur.rowcount > 0
            row = c.execute(
                "SELECT * FROM vault_environments WHERE team_id = ? AND name = ?",
                (team_id, name),
            ).fetchone()
        return EnvironmentRecord(row["team_id"], row["name"], float(row["created_at"])), created

    def environment(self, team_id: str, name: str) -> EnvironmentRecord | None:
        row = self._db.query_one(
            "SELECT * FROM vault_environments WHERE team_id = ? AND name = ?", (team_id, name)
        )
        return (
            EnvironmentRecord(row["team_id"], row["name"], float(row["created_at"]))
            if row
            else None
        )

    def environments(self, team_id: str) -> list[EnvironmentRecord]:
        rows = self._db.query(
            "SELECT * FROM vault_environments WHERE team_id = ? ORDER BY created_at, name",
            (team_id,),
        )
        return [EnvironmentRecord(r["team_id"], r["name"], float(r["created_at"])) for r in rows]

    # Secrets ----------------------------------------------------------------------------
    def insert_secret(self, rec: SecretRecord, ciphertext: bytes) -> None:
        """Raises store `Duplicate` when the name is taken in that environment."""
        with self._db.write() as c:
            c.execute(
                f"INSERT INTO vault_secrets ({_COLUMNS}, ciphertext)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.secret_id,
                    rec.team_id,
                    rec.environment,
                    rec.name,
                    rec.provider,
                    encode_scopes(rec.scopes),
                    rec.version,
                    rec.rotation_interval_days,
                    rec.created_at,
                    rec.updated_at,
                    rec.rotated_at,
                    ciphertext,
                ),
            )

    def secret(self, secret_id: str, team_id: str | None = None) -> SecretRecord | None:
        """The secret, or None when absent or (with `team_id`) another team's."""
        row = self._db.query_one(
            f"SELECT {_COLUMNS} FROM vault_secrets WHERE secret_id = ?", (secret_id,)
        )
        if row is None or (team_id is not None and row["team_id"] != team_id):
            return None
        return _secret(row)

    def secret_at(self, team_id: str, environment: str, name: str) -> SecretRecord | None:
        row = self._db.query_one(
            f"SELECT {_COLUMNS} FROM vault_secrets"
            " WHERE team_id = ? AND environment = ? AND name = ?",
            (team_id, environment, name),
        )
        return _secret(row) if row else None

    def secrets_named(self, team_id: str, name: str) -> list[SecretRecord]:
        rows = self._db.query(
            f"SELECT {_COLUMNS} FROM vault_secrets WHERE team_id = ? AND name = ?"
            " ORDER BY environment",
            (team_id, name),
        )
        return [_secret(r) for r in rows]

    def secrets_of(self, team_id: str) -> list[SecretRecord]:
        """The team's secrets, oldest first (the SDK's name lookup takes the first match)."""
        rows = self._db.query(
            f"SELECT {_COLUMNS} FROM vault_secrets WHERE team_id = ?"
            " ORDER BY created_at, secret_id",
            (team_id,),
        )
        return [_secret(r) for r in rows]

    def ciphertext(self, secret_id: str) -> bytes | None:
        row = self._db.query_one(SECRET_VALUE_SQL, (secret_id,))
        return bytes(row["ciphertext"]) if row else None

    def rotate_secret(self, secret_id: str, ciphertext: bytes) -> SecretRecord | None:
        """New ciphertext under the next version; None if the secret is gone."""
        now = self._clock()
        with self._db.write() as c:
            cur = c.execute(
                "UPDATE vault_secrets SET ciphertext = ?, version = version + 1,"
                " rotated_at = ?, updated_at = ? WHERE secret_id = ?",
                (ciphertext, now, now, secret_id),
            )
            if cur.rowcount == 0:
                return None
            row = c.execute(
                f"SELECT {_COLUMNS} FROM vault_secrets WHERE secret_id = ?", (secret_id,)
            ).fetchone()
        return _secret(row)

    def set_scopes(self, secret_id: str, scopes: Sequence[VaultScope]) -> SecretRecord | None:
        with self._db.write() as c:
            cur = c.execute(
                "UPDATE vault_secrets SET scopes = ?, updated_at = ? WHERE secret_id = ?",
                (encode_scopes(scopes), self._clock(), secret_id),
            )
            if cur.rowcount == 0:
                return None
            row = c.execute(
                f"SELECT {_COLUMNS} FROM vault_secrets WHERE secret_id = ?", (secret_id,)
            ).fetchone()
        return _secret(row)

    def delete_secret(self, secret_id: str) -> list[str] | None:
        """Drop the secret and the refs to it; the live sandboxes that had it bound, or None
        when it was already gone."""
        with self._db.write() as c:
            users = [r[0] for r in c.execute(_LIVE_USERS, (secret_id,)).fetchall()]
            c.execute("DELETE FROM sandbox_vault_refs WHERE secret_id = ?", (secret_id,))
            cur = c.execute("DELETE FROM vault_secrets WHERE secret_id = ?", (secret_id,))
            return users if cur.rowcount else None

    # Sandbox refs -----------------------------------------------------------------------
    def attach(self, sandbox_id: str, bindings: Iterable[VaultBinding]) -> None:
        """Record the secrets the sandbox holds placeholders for (replaces what it had)."""
        with self._db.write() as c:
            c.execute("DELETE FROM sandbox_vault_refs WHERE sandbox_id = ?", (sandbox_id,))
            c.executemany(
                "INSERT INTO sandbox_vault_refs (sandbox_id, env, secret_id, ref)"
                " VALUES (?, ?, ?, ?)",
                [(sandbox_id, b.env, b.secret_id, b.ref) for b in bindings],
            )

    def detach(self, sandbox_id: str) -> None:
        with self._db.write() as c:
            c.execute("DELETE FROM sandbox_vault_refs WHERE sandbox_id = ?", (sandbox_id,))

    def bindings_for(self, sandbox_id: str) -> tuple[VaultBinding, ...]:
        """The sandbox's bindings with each secret's CURRENT scopes; deleted secrets skipped."""
        rows = self._db.query(
            "SELECT r.env, r.secret_id, r.ref, s.scopes FROM sandbox_vault_refs r"
            " JOIN vault_secrets s USING (secret_id) WHERE r.sandbox_id = ? ORDER BY r.env",
            (sandbox_id,),
        )
        return tuple(
            VaultBinding(r["env"], r["secret_id"], r["ref"], decode_scopes(r["scopes"]))
            for r in rows
        )

    def value_for_node(self, secret_id: str, node_id: str) -> tuple[int, bytes] | None:
        """(version, ciphertext) of the secret if it is bound to a live sandbox placed on
        node `node_id` (cluster mode: what that node's gateway may inject), else None: an
        unknown secret, an unbound one and one bound only elsewhere look the same."""
        if not node_id:
            return None
        row = self._db.query_one(_NODE_VALUE, (secret_id, node_id))
        return (int(row["version"]), bytes(row["ciphertext"])) if row else None

    def sandboxes_using(self, secret_ids: Sequence[str]) -> list[str]:
        """Live sandboxes bound to any of these secrets, in id order."""
        if not secret_ids:
            return []
        rows = self._db.query(
            "SELECT DISTINCT r.sandbox_id FROM sandbox_vault_refs r"
            " JOIN sandboxes s USING (sandbox_id)"
            f" WHERE r.secret_id IN ({placeholders(secret_ids)}) AND s.released = 0"
            " ORDER BY r.sandbox_id",
            list(secret_ids),
        )
        return [r[0] for r in rows]


_LIVE_USERS = (
    "SELECT DISTINCT r.sandbox_id FROM sandbox_vault_refs r JOIN sandboxes s USING (sandbox_id)"
    " WHERE r.secret_id = ? AND s.released = 0 ORDER BY r.sandbox_id"
)
# A secret's value for a node: bound to at least one sandbox of that node that is not killed
# and not released (a killed sandbox of a lost node stays unreleased for a while).
_NODE_VALUE = (
    "SELECT v.version, v.ciphertext FROM vault_secrets v WHERE v.secret_id = ? AND EXISTS ("
    "SELECT 1 FROM sandbox_vault_refs r JOIN sandboxes s USING (sandbox_id)"
    " WHERE r.secret_id = v.secret_id AND s.node_id = ? AND s.released = 0"
    " AND s.state <> 'killed')"
)
