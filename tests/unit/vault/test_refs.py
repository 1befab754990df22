"""`vault_refs` at create: parsing, resolution in the caller's team, and the refs table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from declawd.errors import InvalidInput, NotFound
from declawd.inspect.model import VaultBinding, VaultScope
from declawd.store import Store
from declawd.vault import (
    NewSecret,
    VaultService,
    attach,
    bindings_for,
    detach,
    resolve_vault_refs,
)
from tests.unit.vault.conftest import VALUE


@dataclass
class Caller:
    team_id: str


@pytest.fixture
def secret_id(svc: VaultService, team: str) -> str:
    rec = svc.create_secret(
        team, NewSecret(environment="prod", value=VALUE, name="openai", provider="openai")
    )
    return rec.secret_id


def test_default_and_the_team_id_both_name_the_callers_team(
    svc: VaultService, store: Store, team: str, secret_id: str
) -> None:
    refs = {"OPENAI_API_KEY": "vault://default/prod/openai", "B": f"vault://{team}/prod/openai"}
    expected_scopes = (VaultScope(r"api\.openai\.com"),)
    for source in (store, svc):
        for who in (team, Caller(team)):
            assert resolve_vault_refs(source, who, refs) == (
                VaultBinding("B", secret_id, f"vault://{team}/prod/openai", expected_scopes),
                VaultBinding(
                    "OPENAI_API_KEY", secret_id, "vault://default/prod/openai", expected_scopes
                ),
            )
    assert resolve_vault_refs(store, team, {}) == ()


@pytest.mark.parametrize(
    ("refs", "message"),
    [
        (["x"], "vault_refs: must be an object of ENV: ref (expected vault://<team>/<env>/<name>)"),
        ({"K": 5}, "vault_refs.K: must be a string (expected vault://<team>/<env>/<name>)"),
        (
            {"K": "default/prod/openai"},
            "vault_refs.K: must be a vault:// reference (expected vault://<team>/<env>/<name>)",
        ),
        (
            {"K": "sk-real-secret-pasted-here"},
            "vault_refs.K: must be a vault:// reference (expected vault://<team>/<env>/<name>)",
        ),
        (
            {"K": "vault://default/openai"},
            "vault_refs.K: malformed reference: expected vault://<team>/<env>/<name>",
        ),
        (
            {"K": "vault://default/prod/openai/extra"},
            "vault_refs.K: malformed reference: expected vault://<team>/<env>/<name>",
        ),
        (
            {"K": "vault://default//openai"},
            "vault_refs.K: malformed reference: expected vault://<team>/<env>/<name>",
        ),
        (
            {"K": "vault://default/prod/open ai"},
            "vault_refs.K: malformed reference: the name must be 1-63 letters, digits, '.', '_'"
            " or '-', starting with a letter or digit",
        ),
        (
            {"K": "vault://de fault/prod/openai"},
            "vault_refs.K: malformed reference: the team must be 1-63 letters, digits, '.', '_'"
            " or '-', starting with a letter or digit",
        ),
        (
            {"1BAD": "vault://default/prod/openai"},
            "vault_refs.1BAD: not a valid environment variable name",
        ),
        (
            {"A-B": "vault://default/prod/openai"},
            "vault_refs.A-B: not a valid environment variable name",
        ),
        (
            {f"K{i}": "vault://default/prod/openai" for i in range(65)},
            "vault_refs: at most 64 references",
        ),
    ],
)
def test_a_malformed_ref_is_a_400_naming_the_env(
    store: Store, team: str, secret_id: str, refs: Any, message: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        resolve_vault_refs(store, team, refs)
    assert info.value.message == message
    assert "sk-real" not in info.value.message


@pytest.mark.parametrize(
    "ref",
    [
        "vault://default/prod/nope",
        "vault://default/staging/openai",
        "vault://team-000000000000/prod/openai",
        "vault://other/prod/openai",
    ],
)
def test_an_unknown_ref_is_a_404_naming_the_env_and_the_ref(
    store: Store, team: str, secret_id: str, ref: str
) -> None:
    with pytest.raises(NotFound) as info:
        resolve_vault_refs(store, team, {"OPENAI_API_KEY": ref})
    assert info.value.message == f"vault_refs.OPENAI_API_KEY: no secret {ref}"


def test_another_teams_secret_is_a_404_like_a_missing_one(
    svc: VaultService, store: Store, team: str, other_team: str, secret_id: str
) -> None:
    for ref in ("vault://default/prod/openai", f"vault://{team}/prod/openai"):
        with pytest.raises(NotFound) as info:
            resolve_vault_refs(store, other_team, {"K": ref})
        assert info.value.message == f"vault_refs.K: no secret {ref}"


def test_bindings_follow_the_secrets_current_scopes(
    svc: VaultService, store: Store, team: str, secret_id: str
) -> None:
    bindings = resolve_vault_refs(store, team, {"OPENAI_API_KEY": "vault://default/prod/openai"})
    attach(store, "sbx-1", bindings)
    assert bindings_for(store, "sbx-1") == bindings
    svc.update_scopes(
        team, "openai", [{"domain_regex": r"llm\.example", "injection_type": "basic"}]
    )
    (now,) = bindings_for(svc, "sbx-1")
    assert now.scopes == (VaultScope(r"llm\.example", "basic"),)
    assert (now.env, now.secret_id, now.ref) == (
        "OPENAI_API_KEY",
        secret_id,
        "vault://default/prod/openai",
    )


def test_deleted_secrets_are_skipped_and_attach_replaces(
    svc: VaultService, store: Store, team: str, secret_id: str
) -> None:
    other = svc.create_secret(
        team, NewSecret(environment="prod", value=VALUE, name="gh", provider="github")
    )
    attach(
        store,
        "sbx-1",
        resolve_vault_refs(
            store, team, {"A": "vault://default/prod/openai", "B": "vault://default/prod/gh"}
        ),
    )
    svc.delete(team, "openai")
    assert [b.env for b in bindings_for(store, "sbx-1")] == ["B"]
    attach(store, "sbx-1", [])
    assert bindings_for(store, "sbx-1") == ()
    attach(store, "sbx-2", [VaultBinding("B", other.secret_id, "vault://default/prod/gh")])
    detach(store, "sbx-2")
    assert bindings_for(store, "sbx-2") == ()
    detach(store, "sbx-2")  # idempotent
