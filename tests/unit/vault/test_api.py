"""The vault routes driven by the SDK's own VaultClient, in process (no server, no node)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from declaw import InvalidArgumentException, NotFoundException, VaultClient, VaultScope
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from declawd.api import vault as vault_routes
from declawd.api.app import Services
from declawd.api.errors import body_of, status_of
from declawd.config import Settings
from declawd.errors import DeclawdError
from declawd.inspect.model import VaultBinding
from declawd.store import Store
from declawd.vault import attach
from tests.unit.vault.conftest import VALUE, insert_sandbox

# The SDK passes `timeout=` per request, which Starlette's TestClient only warns about.
pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")


class FakeNode:
    def __init__(self) -> None:
        self.refreshed: list[list[str]] = []

    async def refresh_inspection(self, sandbox_ids: list[str]) -> None:
        self.refreshed.append(list(sandbox_ids))


class Recorder:
    """Every response body the routes sent: none may contain a secret value."""

    def __init__(self) -> None:
        self.bodies: list[str] = []

    def __call__(self, response: httpx.Response) -> None:
        response.read()
        self.bodies.append(response.text)


@pytest.fixture
def node() -> FakeNode:
    return FakeNode()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DeclawdError)
    return JSONResponse(body_of(exc), status_code=status_of(exc))


@pytest.fixture
def app(tmp_path: Path, store: Store, node: FakeNode) -> FastAPI:
    # Only the vault router and the domain-error mapping of api/app.py: no node, no lifespan.
    settings = Settings(state_dir=tmp_path / "state")
    app = FastAPI()
    app.add_exception_handler(DeclawdError, _domain_error)
    app.include_router(vault_routes.router)
    app.state.services = Services(settings, store, cast(Any, node), cast(Any, None), 0.0)
    return app


def _client(app: FastAPI, recorder: Recorder) -> TestClient:
    client = TestClient(app)
    client.event_hooks = {"request": [], "response": [recorder]}
    return client


@pytest.fixture
def http(app: FastAPI, recorder: Recorder) -> TestClient:
    return _client(app, recorder)


def _key(store: Store, team_id: str) -> str:
    return store.create_api_key(team_id)[1]


@pytest.fixture
def key(store: Store, team: str) -> str:
    return _key(store, team)


def _sdk(app: FastAPI, recorder: Recorder, key: str) -> VaultClient:
    """The SDK's VaultClient with its HTTP client swapped for one that calls the app."""
    vc = VaultClient(api_key=key, domain="testserver:80")
    api = vc._client
    client = _client(app, recorder)
    client.headers.update(api._base_headers())
    api._client = client
    return vc


@pytest.fixture
def sdk(app: FastAPI, recorder: Recorder, key: str) -> Iterator[VaultClient]:
    yield _sdk(app, recorder, key)


def test_the_sdk_provisions_team_and_env_and_creates_a_secret(
    sdk: VaultClient, http: TestClient, key: str, team: str, recorder: Recorder
) -> None:
    secret = sdk.create_secret(VALUE, provider="openai")
    assert secret.name == "openai" and secret.secret_id.startswith("vsec-")
    assert [(s.domain_regex, s.injection_type) for s in secret.scopes] == [
        (r"api\.openai\.com", "bearer")
    ]
    assert secret._team_id == team and secret._env_id == "prod"
    assert secret.rotated_at is None and secret.rotation_due is False
    http.headers["X-API-Key"] = key
    teams = http.get("/teams").json()["teams"]
    assert [(t["team_id"], t["name"]) for t in teams] == [(team, "default")]
    assert teams[0]["created_at"].endswith("+00:00")
    envs = http.get(f"/teams/{team}/environments").json()["environments"]
    assert [e["name"] for e in envs] == ["prod"]
    assert all(VALUE not in body for body in recorder.bodies)


def test_list_rotate_scopes_delete_by_name(
    sdk: VaultClient, store: Store, team: str, node: FakeNode, recorder: Recorder
) -> None:
    created = sdk.create_secret(VALUE, name="api", scopes=[VaultScope(r"api\.example\.com")])
    insert_sandbox(store, "sbx-a", team)
    attach(store, "sbx-a", [VaultBinding("K", created.secret_id, "vault://default/prod/api")])
    assert [s.name for s in sdk.list_secrets()] == ["api"]
    sdk.rotate_secret("api", "sk-rotated-value-01")
    (listed,) = sdk.list_secrets()
    assert listed.rotated_at is not None
    assert node.refreshed == []  # a rotation needs no refresh: the proxy reads per request
    sdk.update_scopes(
        "api", [VaultScope(r"api\.example\.com", injection_type="header", header_name="X-Key")]
    )
    assert node.refreshed == [["sbx-a"]]
    (listed,) = sdk.list_secrets()
    assert (listed.scopes[0].injection_type, listed.scopes[0].header_name) == ("header", "X-Key")
    sdk.delete_secret("api")
    assert node.refreshed == [["sbx-a"], ["sbx-a"]]
    assert sdk.list_secrets() == []
    assert all(VALUE not in b and "sk-rotated-value-01" not in b for b in recorder.bodies)


def test_presets_list_the_required_providers(sdk: VaultClient) -> None:
    presets = {p.key: p for p in sdk.list_presets()}
    assert {"openai", "anthropic", "github"} <= set(presets)
    assert presets["anthropic"].scopes[0].header_name == "x-api-key"
    assert presets["openai"].key_hint == "sk-..."


def test_a_bad_injection_type_is_a_400_naming_the_field(sdk: VaultClient) -> None:
    with pytest.raises(InvalidArgumentException) as info:
        sdk.create_secret(VALUE, name="x", scopes=[VaultScope("a", injection_type="sigv4")])
    assert str(info.value) == (
        "HTTP 400: scopes[0].injection_type: unsupported injection type 'sigv4'"
        " (supported: bearer, header, basic, query)"
    )


def test_another_teams_secret_is_404(
    sdk: VaultClient,
    app: FastAPI,
    recorder: Recorder,
    http: TestClient,
    store: Store,
    team: str,
    other_team: str,
) -> None:
    mine = sdk.create_secret(VALUE, name="mine", provider="github")
    other_key = _key(store, other_team)
    headers = {"Authorization": f"Bearer {other_key}"}
    base = f"/teams/{team}/vault/secrets"
    for method, path, body in [
        ("GET", base, None),
        ("POST", base, {"environment": "prod", "value": VALUE, "provider": "openai"}),
        ("POST", f"{base}/{mine.secret_id}/rotate", {"value": "sk-theirs-000000"}),
        ("POST", f"{base}/{mine.secret_id}/scopes", {"scopes": [{"domain_regex": "x"}]}),
        ("DELETE", f"{base}/{mine.secret_id}", None),
        ("GET", f"/teams/{team}/environments", None),
    ]:
        r = http.request(method, path, json=body, headers=headers)
        assert (r.status_code, r.json()) == (404, {"message": f"team {team} not found"}), path
    theirs = f"/teams/{other_team}/vault/secrets/{mine.secret_id}"
    http.post(f"/teams/{other_team}/environments", json={"name": "prod"}, headers=headers)
    r = http.post(f"{theirs}/rotate", json={"value": "sk-theirs-000000"}, headers=headers)
    assert (r.status_code, r.json()) == (404, {"message": f"secret {mine.secret_id} not found"})
    theirs_sdk = _sdk(app, recorder, other_key)
    assert theirs_sdk.list_secrets() == []
    with pytest.raises(ValueError, match="vault secret 'mine' not found"):
        theirs_sdk.rotate_secret("mine", "sk-theirs-000000")
    with pytest.raises(NotFoundException):
        theirs_sdk._client.delete(f"/teams/{other_team}/vault/secrets/{mine.secret_id}")
    assert [s.name for s in sdk.list_secrets()] == ["mine"]


def test_teams_post_is_idempotent_for_default_only(http: TestClient, key: str, team: str) -> None:
    h = {"X-API-Key": key}
    first = http.post("/teams", json={"name": "default"}, headers=h)
    again = http.post("/teams", json={"name": "default"}, headers=h)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json() and first.json()["team_id"] == team
    r = http.post("/teams", json={"name": "research"}, headers=h)
    assert (r.status_code, r.json()["message"]) == (
        400,
        "name: must be 'default' (an API key has exactly one team)",
    )
    assert http.get("/teams/default", headers=h).json()["team_id"] == team


def test_environment_post_is_idempotent_201_then_200(http: TestClient, key: str) -> None:
    h = {"X-API-Key": key}
    first = http.post("/teams/default/environments", json={"name": "staging"}, headers=h)
    again = http.post("/teams/default/environments", json={"name": "staging"}, headers=h)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json() == again.json()
    bad = http.post("/teams/default/environments", json={"name": "a/b"}, headers=h)
    assert bad.status_code == 400 and bad.json()["message"].startswith("name: must be 1-63")


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {"environment": "prod", "provider": "openai"},
            400,
            "value: is required (a non-empty string)",
        ),
        (
            {"environment": "prod", "provider": "openai", "value": "x" * 70000},
            413,
            "value: larger than the limit of 65536 bytes",
        ),
        (
            {"environment": "prod", "value": VALUE, "scopes": [{"domain_regex": "(?!x)"}]},
            400,
            "scopes[0].domain_regex: invalid regular expression (invalid perl operator: (?!)",
        ),
        ({"environment": "prod", "value": VALUE, "provider": "aws"}, 400, None),
    ],
)
def test_bad_secret_bodies_name_the_field(
    http: TestClient, key: str, body: dict[str, Any], status: int, message: str | None
) -> None:
    h = {"X-API-Key": key}
    http.post("/teams/default/environments", json={"name": "prod"}, headers=h)
    r = http.post("/teams/default/vault/secrets", json=body, headers=h)
    assert r.status_code == status
    if message is not None:
        assert r.json() == {"message": message}
    else:
        assert r.json()["message"].startswith("provider: unknown provider 'aws'")
    assert VALUE not in r.text


def test_a_secret_view_has_what_the_sdk_parses_and_no_value(
    http: TestClient, key: str, recorder: Recorder
) -> None:
    h = {"X-API-Key": key}
    http.post("/teams/default/environments", json={"name": "prod"}, headers=h)
    r = http.post(
        "/teams/default/vault/secrets",
        json={"environment": "prod", "value": VALUE, "provider": "anthropic"},
        headers=h,
    )
    assert r.status_code == 201
    view = r.json()
    assert set(view) == {
        "secret_id",
        "name",
        "team_id",
        "env_id",
        "environment",
        "provider",
        "scopes",
        "version",
        "created_at",
        "updated_at",
        "rotated_at",
        "rotation_interval_days",
        "rotation_due",
    }
    assert VALUE not in json.dumps(view) and VALUE[-4:] not in json.dumps(view)
    by_id = http.get(f"/teams/default/vault/secrets/{view['secret_id']}", headers=h).json()
    assert by_id == view


def test_routes_need_a_key(http: TestClient) -> None:
    for path in ("/teams", "/vault/presets", "/teams/default/vault/secrets"):
        assert http.get(path).status_code == 401
