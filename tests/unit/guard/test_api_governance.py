"""GET /governance/packs[/{name}]: the SDK's shape, name with or without @vN, 404 for an
unknown pack, an API key needed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from declaw.governance import GovernancePack as SdkPack
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from declawd.api import governance
from declawd.api.app import create_app
from declawd.api.errors import body_of, status_of
from declawd.config import Settings
from declawd.errors import DeclawdError


class FakeStore:
    def authenticate(self, key: str) -> dict[str, str] | None:
        return {"team_id": "team-1", "key_id": "key-1"} if key == "good" else None


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = FastAPI()
    app.state.services = SimpleNamespace(store=FakeStore())

    @app.exception_handler(DeclawdError)
    async def _error(request: Request, exc: DeclawdError) -> JSONResponse:
        return JSONResponse(body_of(exc), status_code=status_of(exc))

    app.include_router(governance.router)
    with TestClient(app, headers={"X-API-Key": "good"}) as c:
        yield c


def test_list_answers_every_pack_in_the_sdks_shape(client: TestClient) -> None:
    answer = client.get("/governance/packs")
    assert answer.status_code == 200
    packs = [SdkPack.from_dict(p) for p in answer.json()["packs"]]
    refs = {p.policy_ref for p in packs}
    assert {"baseline-hardening@v1", "owasp-llm-top10@v1", "owasp-agentic@v1"} <= refs
    assert "prompt-injection@v3" in refs
    assert all(p.enforces and p.gates for p in packs)


def test_get_by_name_or_by_ref_answers_the_same_pack(client: TestClient) -> None:
    by_name = client.get("/governance/packs/prompt-injection")
    by_ref = client.get("/governance/packs/prompt-injection@v3")
    assert by_name.status_code == by_ref.status_code == 200
    assert by_name.json() == by_ref.json()
    pack = SdkPack.from_dict(by_ref.json())
    assert (pack.name, pack.version, pack.policy_ref) == (
        "prompt-injection",
        "v3",
        "prompt-injection@v3",
    )
    assert by_ref.json()["guardrails"]["injection_defense"]["enabled"] is True
    assert "declaw.platform.content" in by_ref.json()["packages"]


@pytest.mark.parametrize("name", ["no-such-pack", "baseline-hardening@v7"])
def test_an_unknown_pack_is_404_with_a_message(client: TestClient, name: str) -> None:
    answer = client.get(f"/governance/packs/{name}")
    assert answer.status_code == 404
    assert name in answer.json()["message"]


def test_the_routes_need_an_api_key(client: TestClient) -> None:
    assert client.get("/governance/packs", headers={"X-API-Key": "bad"}).status_code == 401


def test_the_app_serves_the_packs_and_no_longer_a_501(tmp_path: Path) -> None:
    app = create_app(Settings(state_dir=tmp_path), start_node=False)
    handlers = {(r.path, r.endpoint.__name__) for r in app.routes if isinstance(r, APIRoute)}
    assert ("/governance/packs", "list_packs") in handlers
    assert ("/governance/packs/{name}", "get_pack") in handlers
    assert not any(p.startswith("/governance") and n == "handler" for p, n in handlers)
