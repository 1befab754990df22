"""The vault's rules: environments, write-only secrets, lookup, rotation, scopes, delete."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from declawd.errors import Conflict, DeclawdError, InvalidInput, NotFound, TooLarge
from declawd.inspect.model import PLACEHOLDER, VaultBinding, VaultScope
from declawd.store import Store
from declawd.vault import NewSecret, VaultService, attach
from tests.unit.vault.conftest import VALUE, Clock, insert_sandbox

SCOPE = {"domain_regex": r"api\.example\.com"}


def _create(svc: VaultService, team: str, **kw: Any) -> Any:
    fields: dict[str, Any] = {"environment": "prod", "value": VALUE, "scopes": [SCOPE]}
    fields.update(kw)
    return svc.create_secret(team, NewSecret(**fields))


# Environments --------------------------------------------------------------------------
def test_environment_create_is_idempotent(svc: VaultService, team: str) -> None:
    env, created = svc.ensure_environment(team, "staging")
    again, created_again = svc.ensure_environment(team, "staging")
    assert (created, created_again) == (True, False)
    assert again == env
    assert [e.name for e in svc.environments(team)] == ["prod", "staging"]


def test_environments_are_per_team(svc: VaultService, team: str, other_team: str) -> None:
    assert svc.environments(other_team) == []
    assert svc.ensure_environment(other_team, "prod")[1] is True


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (None, "name: is required"),
        ("", "name: is required"),
        (3, "name: is required"),
        (
            "a/b",
            "name: must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
        ),
        (
            "-x",
            "name: must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
        ),
        (
            "x" * 64,
            "name: must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
        ),
    ],
)
def test_environment_names_are_validated(
    svc: VaultService, team: str, name: Any, message: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        svc.ensure_environment(team, name)
    assert info.value.message == message


# Create --------------------------------------------------------------------------------
def test_create_stores_only_ciphertext(svc: VaultService, store: Store, team: str) -> None:
    rec = _create(svc, team, name="example", rotation_interval_days=30)
    assert rec.secret_id.startswith("vsec-")
    assert (rec.name, rec.environment, rec.version, rec.provider) == ("example", "prod", 1, None)
    assert rec.scopes == (VaultScope(r"api\.example\.com"),)
    assert rec.rotation_interval_days == 30
    with sqlite3.connect(store.db_path) as c:
        dump = "\n".join(c.iterdump())
        blob = c.execute("SELECT ciphertext FROM vault_secrets").fetchone()[0]
    assert VALUE not in dump and VALUE.encode() not in blob
    assert svc.value(team, "example").reveal() == VALUE


def test_a_provider_fills_the_scopes_and_the_name(svc: VaultService, team: str) -> None:
    rec = _create(svc, team, provider="openai", scopes=None)
    assert (rec.name, rec.provider) == ("openai", "openai")
    assert rec.scopes == (VaultScope(r"api\.openai\.com", "bearer"),)


def test_explicit_scopes_win_over_the_preset(svc: VaultService, team: str) -> None:
    rec = _create(svc, team, provider="openai", name="proxy", scopes=[{"domain_regex": "llm"}])
    assert rec.scopes == (VaultScope("llm"),) and rec.provider == "openai"


def test_without_name_or_provider_the_name_is_the_id(svc: VaultService, team: str) -> None:
    rec = _create(svc, team)
    assert rec.name == rec.secret_id


def test_a_name_is_unique_within_an_environment(svc: VaultService, team: str) -> None:
    _create(svc, team, name="dup")
    with pytest.raises(Conflict) as info:
        _create(svc, team, name="dup")
    assert info.value.message == "secret 'dup' already exists in environment 'prod'"
    svc.ensure_environment(team, "staging")
    assert _create(svc, team, name="dup", environment="staging").environment == "staging"


@pytest.mark.parametrize(
    ("kw", "exc", "message"),
    [
        ({"value": None}, InvalidInput, "value: is required (a non-empty string)"),
        ({"value": ""}, InvalidInput, "value: is required (a non-empty string)"),
        ({"value": 12345678}, InvalidInput, "value: must be a string"),
        ({"value": "short"}, InvalidInput, "value: must be at least 8 characters"),
        ({"value": "x" * 65537}, TooLarge, "value: larger than the limit of 65536 bytes"),
        ({"value": "é" * 32769}, TooLarge, "value: larger than the limit of 65536 bytes"),
        (
            {"value": "sk-1234567\r\nX: y"},
            InvalidInput,
            "value: must not contain control characters (line breaks, NUL)",
        ),
        ({"value": PLACEHOLDER}, InvalidInput, "value: must not be the vault placeholder itself"),
        ({"environment": None}, InvalidInput, "environment: is required"),
        (
            {"environment": "dev"},
            InvalidInput,
            "environment: no environment 'dev' in this team (create it with"
            " POST /teams/{team}/environments)",
        ),
        ({"scopes": None}, InvalidInput, "scopes: is required when no provider is given"),
        ({"scopes": []}, InvalidInput, "scopes: at least one scope is required"),
        (
            {"scopes": [{"domain_regex": "a", "injection_type": "oidc"}]},
            InvalidInput,
            "scopes[0].injection_type: unsupported injection type 'oidc'"
            " (supported: bearer, header, basic, query)",
        ),
        ({"provider": ""}, InvalidInput, "provider: must be a preset key (GET /vault/presets)"),
        (
            {"name": "a b"},
            InvalidInput,
            "name: must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
        ),
        (
            {"rotation_interval_days": "7"},
            InvalidInput,
            "rotation_interval_days: must be an integer",
        ),
        (
            {"rotation_interval_days": True},
            InvalidInput,
            "rotation_interval_days: must be an integer",
        ),
        (
            {"rotation_interval_days": -1},
            InvalidInput,
            "rotation_interval_days: must be between 0 and 3650",
        ),
    ],
)
def test_bad_create_input_names_the_field_and_never_the_value(
    svc: VaultService,
    team: str,
    store: Store,
    kw: dict[str, Any],
    exc: type[DeclawdError],
    message: str,
) -> None:
    with pytest.raises(exc) as info:
        _create(svc, team, **kw)
    assert info.value.message == message
    assert VALUE not in info.value.message and "sk-1234567" not in info.value.message
    assert svc.list_secrets(team) == []


def test_no_key_file_until_the_first_secret(svc: VaultService, team: str, key_path: Path) -> None:
    assert not key_path.exists()
    _create(svc, team)
    assert key_path.exists()


# Lookup --------------------------------------------------------------------------------
def test_find_by_id_or_by_name(svc: VaultService, team: str) -> None:
    rec = _create(svc, team, name="gh")
    assert svc.find(team, rec.secret_id) == rec
    assert svc.find(team, "gh") == rec


def test_a_name_in_two_environments_needs_the_id(svc: VaultService, team: str) -> None:
    svc.ensure_environment(team, "staging")
    _create(svc, team, name="gh")
    _create(svc, team, name="gh", environment="staging")
    with pytest.raises(Conflict) as info:
        svc.find(team, "gh")
    assert info.value.message == (
        "secret name 'gh' is in several environments (prod, staging): use its secret_id"
    )


def test_another_teams_secret_is_not_found(svc: VaultService, team: str, other_team: str) -> None:
    rec = _create(svc, team, name="mine")
    for key in (rec.secret_id, "mine"):
        with pytest.raises(NotFound) as info:
            svc.find(other_team, key)
        assert info.value.message == f"secret {key} not found"
        with pytest.raises(NotFound):
            svc.rotate(other_team, key, "sk-other-value-000")
        with pytest.raises(NotFound):
            svc.update_scopes(other_team, key, [SCOPE])
        with pytest.raises(NotFound):
            svc.delete(other_team, key)
    assert svc.list_secrets(other_team) == []
    assert svc.value(team, "mine").reveal() == VALUE


# Rotation, scopes, delete --------------------------------------------------------------
def test_rotation_bumps_the_version_and_keeps_the_scopes(
    svc: VaultService, team: str, clock: Clock
) -> None:
    rec = _create(svc, team, name="k", rotation_interval_days=1)
    assert not rec.rotation_due(clock.now)
    clock.now += 86400
    assert svc.find(team, "k").rotation_due(clock.now)
    rotated = svc.rotate(team, "k", "sk-rotated-value-0001")
    assert (rotated.version, rotated.scopes, rotated.rotated_at) == (2, rec.scopes, clock.now)
    assert not rotated.rotation_due(clock.now)
    assert svc.value(team, "k").reveal() == "sk-rotated-value-0001"


def test_a_bad_rotation_value_changes_nothing(svc: VaultService, team: str) -> None:
    _create(svc, team, name="k")
    with pytest.raises(InvalidInput, match=r"^value: is required"):
        svc.rotate(team, "k", None)
    assert svc.find(team, "k").version == 1
    assert svc.value(team, "k").reveal() == VALUE


def test_scope_update_reports_the_live_sandboxes_holding_it(
    svc: VaultService, store: Store, team: str
) -> None:
    rec = _create(svc, team, name="k")
    other = _create(svc, team, name="other")
    for sid, released in (("sbx-a", False), ("sbx-b", False), ("sbx-gone", True)):
        insert_sandbox(store, sid, team, released=released)
        attach(store, sid, [VaultBinding("K", rec.secret_id, "vault://default/prod/k")])
    insert_sandbox(store, "sbx-c", team)
    attach(store, "sbx-c", [VaultBinding("O", other.secret_id, "vault://default/prod/other")])
    updated, users = svc.update_scopes(
        team, "k", [{"domain_regex": "new", "injection_type": "header", "header_name": "X-K"}]
    )
    assert users == ["sbx-a", "sbx-b"]
    assert updated.scopes == (VaultScope("new", "header", header_name="X-K"),)
    assert updated.version == 1  # the value did not change


def test_a_bad_scope_update_changes_nothing(svc: VaultService, team: str) -> None:
    rec = _create(svc, team, name="k")
    with pytest.raises(InvalidInput) as info:
        svc.update_scopes(team, "k", [{"domain_regex": "(?<=x)"}])
    assert info.value.field == "scopes[0].domain_regex"
    assert svc.find(team, "k").scopes == rec.scopes


def test_delete_drops_value_and_refs_and_reports_users(
    svc: VaultService, store: Store, team: str
) -> None:
    rec = _create(svc, team, name="k")
    insert_sandbox(store, "sbx-a", team)
    attach(store, "sbx-a", [VaultBinding("K", rec.secret_id, "vault://default/prod/k")])
    gone, users = svc.delete(team, "k")
    assert (gone.secret_id, users) == (rec.secret_id, ["sbx-a"])
    with pytest.raises(NotFound):
        svc.find(team, rec.secret_id)
    with sqlite3.connect(store.db_path) as c:
        assert c.execute("SELECT COUNT(*) FROM sandbox_vault_refs").fetchone()[0] == 0
        assert c.execute("SELECT COUNT(*) FROM vault_secrets").fetchone()[0] == 0
    with pytest.raises(NotFound):
        svc.delete(team, "k")
