"""`vault_refs` at sandbox create: `{"ENV": "vault://<team>/<env>/<name>"}` to bindings.

A ref names a secret of the caller's own team, `<team>` being the name GET /teams shows
(`default`) or the team id. Every other team's secret answers exactly like a secret that does
not exist (404 naming the ref), so a ref cannot probe another team's vault.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from declawd.errors import InvalidInput, NotFound
from declawd.inspect.model import VaultBinding
from declawd.vault.store import VaultRecords

SCHEME = "vault://"
DEFAULT_TEAM = "default"
MAX_REFS = 64
_SHAPE = "expected vault://<team>/<env>/<name>"
# Environment and secret names: they are path segments of a ref, so no '/'.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
NAME_RULE = "must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def check_name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(field, "is required")
    if not NAME.fullmatch(value):
        raise InvalidInput(field, NAME_RULE)
    return value


@dataclass(frozen=True)
class VaultRef:
    team: str
    environment: str
    name: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.team}/{self.environment}/{self.name}"


def parse_ref(env: str, raw: Any) -> VaultRef:
    field = f"vault_refs.{env}"
    if not isinstance(raw, str):
        raise InvalidInput(field, f"must be a string ({_SHAPE})")
    if not raw.startswith(SCHEME):
        raise InvalidInput(field, f"must be a vault:// reference ({_SHAPE})")
    parts = raw[len(SCHEME) :].split("/")
    if len(parts) != 3 or not all(parts):
        raise InvalidInput(field, f"malformed reference: {_SHAPE}")
    team, environment, name = parts
    for label, part in (("team", team), ("environment", environment), ("name", name)):
        if not NAME.fullmatch(part):
            raise InvalidInput(field, f"malformed reference: the {label} {NAME_RULE}")
    return VaultRef(team, environment, name)


def resolve(
    records: VaultRecords, team_id: str, refs: Mapping[str, Any]
) -> tuple[VaultBinding, ...]:
    """The bindings for a create's `vault_refs`, in env-name order; raises InvalidInput for a
    malformed entry and NotFound for a secret the caller's team does not have."""
    if not isinstance(refs, Mapping):
        raise InvalidInput("vault_refs", f"must be an object of ENV: ref ({_SHAPE})")
    if len(refs) > MAX_REFS:
        raise InvalidInput("vault_refs", f"at most {MAX_REFS} references")
    out: list[VaultBinding] = []
    for env in sorted(refs):
        if not isinstance(env, str) or not _ENV_VAR.fullmatch(env):
            raise InvalidInput(f"vault_refs.{env}", "not a valid environment variable name")
        ref = parse_ref(env, refs[env])
        rec = None
        if ref.team in (DEFAULT_TEAM, team_id):
            rec = records.secret_at(team_id, ref.environment, ref.name)
        if rec is None:
            raise NotFound(f"vault_refs.{env}: no secret {ref}")
        out.append(VaultBinding(env=env, secret_id=rec.secret_id, ref=str(ref), scopes=rec.scopes))
    return tuple(out)
