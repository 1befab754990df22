"""The vault's rules (declaw-api.md §9 and §12.2): environments, write-only secrets, scopes.

One team per API key: the service is always called with the caller's team id and never
reaches another team's rows (they answer NotFound, like absent ones). Values come in as
`SecretValue`, are sealed under the node master key before they touch the database and never
come back out of this class; rotation and scope changes report which live sandboxes hold the
secret so the caller can refresh their inspection policies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from declawd.errors import Conflict, InvalidInput, NotFound, TooLarge
from declawd.inspect.model import PLACEHOLDER, VaultBinding, VaultScope
from declawd.store import Duplicate, Store
from declawd.store.records import new_id
from declawd.vault.crypto import MasterKey, SecretValue
from declawd.vault.presets import preset
from declawd.vault.refs import check_name, resolve
from declawd.vault.scopes import parse_scopes
from declawd.vault.store import EnvironmentRecord, SecretRecord, VaultRecords

MAX_VALUE_BYTES = 64 * 1024
# Scrubbing replaces every occurrence of the value in responses: a very short value would
# rewrite ordinary text, so a value this short is refused.
MIN_VALUE_CHARS = 8
MAX_ROTATION_DAYS = 3650


@dataclass(frozen=True)
class NewSecret:
    """A create request, fields as the body gave them (checked by `create_secret`)."""

    environment: Any
    value: Any
    name: Any = None
    provider: Any = None
    scopes: Any = None
    rotation_interval_days: Any = 0


def check_value(raw: Any, field: str = "value") -> SecretValue:
    """The secret value of a body as a SecretValue; the messages never quote it."""
    if raw is None or raw == "":
        raise InvalidInput(field, "is required (a non-empty string)")
    if not isinstance(raw, str):
        raise InvalidInput(field, "must be a string")
    if len(raw.encode()) > MAX_VALUE_BYTES:
        raise TooLarge(f"{field}: larger than the limit of {MAX_VALUE_BYTES} bytes")
    if len(raw) < MIN_VALUE_CHARS:
        raise InvalidInput(field, f"must be at least {MIN_VALUE_CHARS} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise InvalidInput(field, "must not contain control characters (line breaks, NUL)")
    if raw == PLACEHOLDER:
        raise InvalidInput(field, "must not be the vault placeholder itself")
    return SecretValue(raw)


class VaultService:
    def __init__(
        self, store: Store, key_path: Path, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._records = VaultRecords.of(store)
        self._key_path = key_path
        self._key: MasterKey | None = None
        self._clock = clock

    @property
    def records(self) -> VaultRecords:
        return self._records

    def _master_key(self) -> MasterKey:
        if self._key is None:
            self._key = MasterKey.load_or_create(self._key_path)
        return self._key

    # Environments -----------------------------------------------------------------------
    def environments(self, team_id: str) -> list[EnvironmentRecord]:
        return self._records.environments(team_id)

    def ensure_environment(self, team_id: str, name: Any) -> tuple[EnvironmentRecord, bool]:
        return self._records.ensure_environment(team_id, check_name(name, "name"))

    # Secrets ----------------------------------------------------------------------------
    def list_secrets(self, team_id: str) -> list[SecretRecord]:
        return self._records.secrets_of(team_id)

    def create_secret(self, team_id: str, req: NewSecret) -> SecretRecord:
        environment = check_name(req.environment, "environment")
        if self._records.environment(team_id, environment) is None:
            raise InvalidInput(
                "environment",
                f"no environment {environment!r} in this team (create it with"
                " POST /teams/{team}/environments)",
            )
        value = check_value(req.value)
        provider: str | None = None
        scopes: tuple[VaultScope, ...]
        if req.provider is not None:
            if not isinstance(req.provider, str) or not req.provider:
                raise InvalidInput("provider", "must be a preset key (GET /vault/presets)")
            found = preset(req.provider)
            provider = found.key
            scopes = found.scopes
        if req.scopes is not None:
            scopes = parse_scopes(req.scopes)  # explicit scopes win over the preset's
        elif provider is None:
            raise InvalidInput("scopes", "is required when no provider is given")
        secret_id = new_id("vsec")
        name = (provider or secret_id) if req.name is None else check_name(req.name, "name")
        days = _rotation_days(req.rotation_interval_days)
        now = self._clock()
        rec = SecretRecord(
            secret_id=secret_id,
            team_id=team_id,
            environment=environment,
            name=name,
            provider=provider,
            scopes=scopes,
            version=1,
            rotation_interval_days=days,
            created_at=now,
            updated_at=now,
        )
        sealed = self._master_key().encrypt(value, secret_id)
        try:
            self._records.insert_secret(rec, sealed)
        except Duplicate:
            raise Conflict(
                f"secret {name!r} already exists in environment {environment!r}"
            ) from None
        return rec

    def find(self, team_id: str, key: str) -> SecretRecord:
        """A secret of the team by id or, failing that, by name (unique across its
        environments); NotFound for anything else, another team's secret included."""
        rec = self._records.secret(key, team_id)
        if rec is not None:
            return rec
        named = self._records.secrets_named(team_id, key)
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            envs = ", ".join(r.environment for r in named)
            raise Conflict(
                f"secret name {key!r} is in several environments ({envs}): use its secret_id"
            )
        raise NotFound(f"secret {key} not found")

    def rotate(self, team_id: str, key: str, raw_value: Any) -> SecretRecord:
        """A new value under the next version: running sandboxes use it on their next
        request (the gateway reads the row per request), so nothing needs refreshing."""
        rec = self.find(team_id, key)
        value = check_value(raw_value)
        sealed = self._master_key().encrypt(value, rec.secret_id)
        rotated = self._records.rotate_secret(rec.secret_id, sealed)
        if rotated is None:
            raise NotFound(f"secret {key} not found")
        return rotated

    def update_scopes(self, team_id: str, key: str, raw: Any) -> tuple[SecretRecord, list[str]]:
        """New scopes, and the live sandboxes bound to the secret (to refresh)."""
        rec = self.find(team_id, key)
        scopes = parse_scopes(raw)
        updated = self._records.set_scopes(rec.secret_id, scopes)
        if updated is None:
            raise NotFound(f"secret {key} not found")
        return updated, self._records.sandboxes_using([rec.secret_id])

    def delete(self, team_id: str, key: str) -> tuple[SecretRecord, list[str]]:
        """Drop the secret (value and refs), and the live sandboxes that had it bound."""
        rec = self.find(team_id, key)
        users = self._records.delete_secret(rec.secret_id)
        if users is None:
            raise NotFound(f"secret {key} not found")
        return rec, users

    def value(self, team_id: str, key: str) -> SecretValue:
        """The plaintext, for code on this node only (tests, a future CLI): no route calls it."""
        rec = self.find(team_id, key)
        blob = self._records.ciphertext(rec.secret_id)
        if blob is None:
            raise NotFound(f"secret {key} not found")
        return self._master_key().decrypt(blob, rec.secret_id)

    # Sandboxes --------------------------------------------------------------------------
    def resolve_refs(self, team_id: str, refs: Mapping[str, Any]) -> tuple[VaultBinding, ...]:
        return resolve(self._records, team_id, refs)


def _rotation_days(raw: Any) -> int:
    if raw is None:
        return 0
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise InvalidInput("rotation_interval_days", "must be an integer")
    if not 0 <= raw <= MAX_ROTATION_DAYS:
        raise InvalidInput("rotation_interval_days", f"must be between 0 and {MAX_ROTATION_DAYS}")
    return raw
