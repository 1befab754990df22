"""The vault routes through the official SDK's VaultClient against the session server.

Create, list, rotate, scopes, delete and presets; another team's secret is a 404; bad input
is a 400 naming the field; no response ever carries a value. Injection itself (what leaves
the node) is tests/e2e/test_vault_inject.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from declaw import (
    InvalidArgumentException,
    NotEnoughSpaceException,
    NotFoundException,
    VaultClient,
    VaultScope,
)

from tests.e2e.conftest import new_team_key

pytestmark = pytest.mark.e2e


def _name(prefix: str) -> str:
    return f"{prefix}-{time.time_ns() % 10**12}"


def _value(tag: str) -> str:
    return f"sk-e2e-{tag}-{time.time_ns()}"


@pytest.fixture
def vault(server: dict[str, str]) -> Iterator[VaultClient]:
    with VaultClient(api_key=server["key"], domain=server["domain"]) as v:
        yield v


def test_secret_lifecycle_by_name(vault: VaultClient, api: httpx.Client) -> None:
    name, value = _name("api"), _value("life")
    created = vault.create_secret(
        value, name=name, scopes=[VaultScope(r"api\.example\.com")], rotation_interval_days=30
    )
    try:
        assert created.name == name and created.secret_id
        assert [(s.domain_regex, s.injection_type) for s in created.scopes] == [
            (r"api\.example\.com", "bearer")
        ]
        assert created.rotation_interval_days == 30 and created.rotation_due is False
        listed = {s.name: s for s in vault.list_secrets()}
        assert listed[name].secret_id == created.secret_id

        rotated_value = _value("rotated")
        vault.rotate_secret(name, rotated_value)
        assert {s.name: s for s in vault.list_secrets()}[name].rotated_at

        vault.update_scopes(
            name, [VaultScope(r"api\.example\.org", injection_type="header", header_name="X-Key")]
        )
        (scope,) = {s.name: s for s in vault.list_secrets()}[name].scopes
        assert (scope.domain_regex, scope.injection_type, scope.header_name) == (
            r"api\.example\.org",
            "header",
            "X-Key",
        )
        team_id = vault._resolve_default_team(create=False)
        raw = api.get(f"/teams/{team_id}/vault/secrets").text
        assert value not in raw and rotated_value not in raw
    finally:
        vault.delete_secret(name)
    assert name not in {s.name for s in vault.list_secrets()}
    with pytest.raises(ValueError, match="not found"):
        vault.delete_secret(name)


def test_a_provider_preset_fills_scopes_and_name(vault: VaultClient) -> None:
    presets = {p.key: p for p in vault.list_presets()}
    assert {"openai", "anthropic", "github"} <= set(presets)
    assert presets["anthropic"].scopes[0].header_name == "x-api-key"
    name = _name("openai")
    secret = vault.create_secret(_value("preset"), provider="openai", name=name)
    try:
        assert [(s.domain_regex, s.injection_type) for s in secret.scopes] == [
            (r"api\.openai\.com", "bearer")
        ]
    finally:
        vault.delete_secret(name)


def test_teams_and_environments_are_idempotent(api: httpx.Client) -> None:
    teams = api.get("/teams").json()["teams"]
    assert [t["name"] for t in teams] == ["default"]
    team_id = teams[0]["team_id"]
    again = api.post("/teams", json={"name": "default"})
    assert again.status_code == 200 and again.json()["team_id"] == team_id
    other = api.post("/teams", json={"name": "research"})
    assert other.status_code == 400 and other.json()["message"].startswith("name: ")
    for _ in range(2):
        r = api.post(f"/teams/{team_id}/environments", json={"name": "prod"})
        assert r.status_code in (200, 201)
    names = [e["name"] for e in api.get(f"/teams/{team_id}/environments").json()["environments"]]
    assert names.count("prod") == 1


def test_another_teams_secret_is_404(vault: VaultClient, server: dict[str, str]) -> None:
    name = _name("mine")
    mine = vault.create_secret(_value("mine"), name=name, provider="github")
    try:
        team_id = vault._resolve_default_team(create=False)
        other_key = new_team_key("vault-b")
        with VaultClient(api_key=other_key, domain=server["domain"]) as theirs:
            assert name not in {s.name for s in theirs.list_secrets()}
            with httpx.Client(
                base_url=server["url"], headers={"X-API-Key": other_key}, timeout=30
            ) as h:
                for method, path in [
                    ("GET", f"/teams/{team_id}/vault/secrets"),
                    ("DELETE", f"/teams/{team_id}/vault/secrets/{mine.secret_id}"),
                ]:
                    assert h.request(method, path).status_code == 404
                h.post("/teams/default/environments", json={"name": "prod"})
                r = h.post(
                    f"/teams/default/vault/secrets/{mine.secret_id}/rotate",
                    json={"value": _value("theirs")},
                )
                assert r.status_code == 404
                with pytest.raises(NotFoundException):
                    theirs._client.delete(f"/teams/default/vault/secrets/{mine.secret_id}")
        assert name in {s.name for s in vault.list_secrets()}
    finally:
        vault.delete_secret(name)


def test_a_bad_injection_type_is_a_400_naming_the_field(vault: VaultClient) -> None:
    with pytest.raises(InvalidArgumentException) as info:
        vault.create_secret(
            _value("bad"), name=_name("bad"), scopes=[VaultScope("x", injection_type="sigv4")]
        )
    assert "scopes[0].injection_type: unsupported injection type 'sigv4'" in str(info.value)


def test_an_invalid_regex_and_an_oversize_value_name_their_fields(vault: VaultClient) -> None:
    with pytest.raises(InvalidArgumentException) as info:
        vault.create_secret(
            _value("re"), name=_name("re"), scopes=[VaultScope(r"(?<=x)api\.example\.com")]
        )
    assert "scopes[0].domain_regex: invalid regular expression" in str(info.value)
    with pytest.raises(NotEnoughSpaceException) as big:
        vault.create_secret("x" * 70000, name=_name("big"), provider="openai")
    assert "value: larger than the limit of 65536 bytes" in str(big.value)
