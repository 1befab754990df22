"""The vault (declaw-api.md §9, §12.2; docs/vault.md): secrets a sandbox can use, never see.

The server keeps each value AES-GCM sealed under the node master key (`crypto`), in rows
only this package reads (`store`); a sandbox created with `vault_refs` holds the placeholder
and a binding (`refs`), and the gateway's proxy asks `reader.VaultReader` for the current
value per request. Invariant: a value never leaves the server process except to the proxy,
and never appears in a response, a log line, an exception, an audit event or a repr.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from declawd.inspect.model import VaultBinding
from declawd.store import Store
from declawd.vault.crypto import MasterKey, SecretValue, master_key_path
from declawd.vault.presets import PRESETS, Preset
from declawd.vault.refs import resolve
from declawd.vault.service import NewSecret, VaultService
from declawd.vault.store import SecretRecord, VaultRecords


class HasTeamId(Protocol):
    @property
    def team_id(self) -> str: ...


def _records(source: Store | VaultService) -> VaultRecords:
    return source.records if isinstance(source, VaultService) else VaultRecords.of(source)


def resolve_vault_refs(
    source: Store | VaultService, team: str | HasTeamId, refs: Mapping[str, Any]
) -> tuple[VaultBinding, ...]:
    """The bindings of a create's `vault_refs` for the caller's team (a team id or anything
    with `.team_id`): InvalidInput("vault_refs.<ENV>", why) for a malformed entry,
    NotFound("vault_refs.<ENV>: no secret <ref>") for an unknown or another team's secret."""
    team_id = team if isinstance(team, str) else team.team_id
    return resolve(_records(source), team_id, refs)


def attach(source: Store | VaultService, sandbox_id: str, bindings: Iterable[VaultBinding]) -> None:
    """Record the sandbox's bindings (replacing any it had: a restore re-attaches)."""
    _records(source).attach(sandbox_id, bindings)


def detach(source: Store | VaultService, sandbox_id: str) -> None:
    _records(source).detach(sandbox_id)


def bindings_for(source: Store | VaultService, sandbox_id: str) -> tuple[VaultBinding, ...]:
    """The sandbox's bindings with the secrets' current scopes; deleted secrets skipped."""
    return _records(source).bindings_for(sandbox_id)


__all__ = [
    "PRESETS",
    "MasterKey",
    "NewSecret",
    "Preset",
    "SecretRecord",
    "SecretValue",
    "VaultRecords",
    "VaultService",
    "attach",
    "bindings_for",
    "detach",
    "master_key_path",
    "resolve_vault_refs",
]
