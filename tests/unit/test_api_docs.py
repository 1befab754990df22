"""/openapi.json and /docs: every route documented with its models, a valid OpenAPI 3.0
document, a page whose assets are all served by us, the wire unchanged (400 {"message"}, not
422), and the models matching what the views really answer."""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import BaseModel, RootModel
from starlette.routing import Route
from swagger_ui_bundle import swagger_ui_path

from declawd.api import docs, files, keys, schema, snapshots, vault, volumes
from declawd.api.app import create_app
from declawd.api.views import sandbox_view, security_view
from declawd.config import Settings
from declawd.guard.packs import load_packs
from declawd.inspect.model import VaultScope
from declawd.inspect.policy import parse_security
from declawd.store import SandboxRecord, SandboxState
from declawd.store.snapshots import SnapshotRecord, SnapshotSource, SnapshotState
from declawd.store.traffic import TrafficAccess
from declawd.store.volumes import FileStat, Lease, VolumeRecord
from declawd.vault import PRESETS
from declawd.vault.store import EnvironmentRecord, SecretRecord
from declawd.volumes.files import FileInfo

# Routers of issue 13 that app.py may not include yet: the docs must cover them too.
EXTRA_ROUTERS = ("declawd.api.keys", "declawd.api.ports", "declawd.dashboard.routes")
OAS30_ONLY = ("$defs", "const", "prefixItems", "unevaluatedProperties", "dependentSchemas")


class FakeStore:
    def authenticate(self, key: str) -> dict[str, str] | None:
        return {"team_id": "team-1", "key_id": "key-1"} if key == "good" else None


def _with_extra_routers(app: FastAPI) -> FastAPI:
    have = {(type(r).__name__, getattr(r, "path", "")) for r in app.routes}
    for name in EXTRA_ROUTERS:
        router = importlib.import_module(name).router
        if not any((type(r).__name__, getattr(r, "path", "")) in have for r in router.routes):
            app.include_router(router)
    return app


@pytest.fixture(scope="module")
def app() -> FastAPI:
    app = _with_extra_routers(create_app(Settings(), start_node=False))
    docs.install_docs(app)
    app.state.services = SimpleNamespace(store=FakeStore(), settings=Settings())
    return app


@pytest.fixture(scope="module")
def doc(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    # No `with`: the lifespan (which starts a node) does not run.
    yield TestClient(app, raise_server_exceptions=False)


def api_routes(app: FastAPI) -> list[APIRoute]:
    return [r for r in app.routes if isinstance(r, APIRoute) and r.include_in_schema]


# Every route documented ----------------------------------------------------------------
def test_every_route_has_a_table_entry_and_a_documented_answer(
    app: FastAPI, doc: dict[str, Any]
) -> None:
    missing = []
    for route in api_routes(app):
        for method in route.methods:
            op = docs.op_for(method, route.path_format)
            if op is None:
                missing.append(f"{method} {route.path_format}")
                continue
            operation = doc["paths"][route.path_format][method.lower()]
            ok = {k: v for k, v in operation["responses"].items() if k.startswith("2")}
            assert ok, f"{method} {route.path_format}: no success response"
            assert all("content" in v for v in ok.values()), (method, route.path_format)
            # A status the route declares (status_code=...) is one the table documents.
            if route.status_code is not None:
                assert str(route.status_code) in ok, (method, route.path_format, list(ok))
    assert not missing, f"routes missing from docs.ROUTES: {missing}"


def test_no_table_entry_without_a_route(app: FastAPI) -> None:
    present = {docs.route_key(m, r.path_format) for r in api_routes(app) for m in r.methods}
    # Raw ASGI routes (the ports proxy) take any method and are not FastAPI routes.
    raw = {
        docs.route_key(docs.ANY_METHOD, r.path_format)
        for r in app.routes
        if isinstance(r, Route) and not isinstance(r, APIRoute)
    }
    stale = [k for k in (docs.route_key(m, p) for m, p in docs.ROUTES) if k not in present | raw]
    assert not stale, f"ROUTES entries with no route: {stale}"


def test_raw_routes_are_documented_for_every_method(doc: dict[str, Any]) -> None:
    for path in (
        "/sandboxes/{sandbox_id}/ports/{port}",
        "/sandboxes/{sandbox_id}/ports/{port}/{path}",
    ):
        item = doc["paths"][path]
        assert set(item) == {"get", "post", "put", "patch", "delete"}
        port = next(p for p in item["get"]["parameters"] if p["name"] == "port")
        assert port["in"] == "path" and port["schema"] == {"type": "integer"}
        assert {"TrafficToken": []} in item["post"]["security"]
        assert "502" in item["get"]["responses"]


def test_table_keys_are_well_formed() -> None:
    for method, path in docs.ROUTES:
        assert method in {"GET", "POST", "PUT", "PATCH", "DELETE", docs.ANY_METHOD}, method
        assert path.startswith("/") and not path.endswith("/"), path


def test_hidden_routes_stay_out_of_the_document(app: FastAPI, doc: dict[str, Any]) -> None:
    for path in ("/docs", "/docs/assets/{name}", "/openapi.json"):
        assert path not in doc["paths"]


# A valid OpenAPI 3.0 document -----------------------------------------------------------
def _walk(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    yield where, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{where}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{where}/{i}")


def _schemas(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema object in `node` (a schema), following the keywords that hold schemas:
    a property named `type` is a property, not the keyword."""
    if not isinstance(node, dict):
        return
    yield where, node
    for name, sub in node.get("properties", {}).items():
        yield from _schemas(sub, f"{where}/properties/{name}")
    for key in ("items", "additionalProperties", "not"):
        yield from _schemas(node.get(key), f"{where}/{key}")
    for key in ("allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(node.get(key, [])):
            yield from _schemas(sub, f"{where}/{key}/{i}")


def _all_schemas(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, sub in doc["components"]["schemas"].items():
        yield from _schemas(sub, f"#/components/schemas/{name}")
    for where, node in _walk(doc["paths"], "paths"):
        if isinstance(node, dict) and isinstance(node.get("schema"), dict):
            yield from _schemas(node["schema"], f"{where}/schema")
        if isinstance(node, dict) and isinstance(node.get("x-event-data"), dict):
            yield from _schemas(node["x-event-data"], f"{where}/x-event-data")


def test_document_is_openapi_30_with_every_reference_resolved(doc: dict[str, Any]) -> None:
    assert doc["openapi"] == "3.0.3"
    assert doc["info"]["title"] and doc["info"]["version"]
    schemas = doc["components"]["schemas"]
    seen = 0
    for where, node in _all_schemas(doc):
        seen += 1
        ref = node.get("$ref")
        if ref is not None:
            assert ref.startswith("#/components/schemas/"), where
            assert ref.rsplit("/", 1)[1] in schemas, f"{where}: dangling {ref}"
            assert set(node) == {"$ref"}, f"{where}: siblings of $ref are ignored in 3.0"
        for key in OAS30_ONLY:
            assert key not in node, f"{where}: {key} is not OpenAPI 3.0"
        if "type" in node:
            assert node["type"] in {"string", "integer", "number", "boolean", "array", "object"}, (
                f"{where}: type {node['type']!r}"
            )
        if node.get("type") == "array":
            assert "items" in node, f"{where}: 3.0 arrays need items"
        if "nullable" in node:
            assert node["nullable"] is True and ("type" in node or "allOf" in node), where
    assert seen > 300
    refs = {n["$ref"] for _, n in _walk(doc) if isinstance(n, dict) and "$ref" in n}
    assert all(r.rsplit("/", 1)[1] in schemas for r in refs)


def test_operations_are_complete_and_consistent(doc: dict[str, Any]) -> None:
    schemes = set(doc["components"]["securitySchemes"])
    tags = {t["name"] for t in doc["tags"]}
    ids = []
    for path, item in doc["paths"].items():
        declared = set(re.findall(r"\{([^}]+)\}", path))
        for method, op in item.items():
            ids.append(op["operationId"])
            assert op["summary"] and set(op["tags"]) <= tags, (method, path)
            params = {(p["name"], p["in"]) for p in op.get("parameters", [])}
            assert {n for n, where in params if where == "path"} == declared, (method, path)
            for status, response in op["responses"].items():
                assert status == "default" or re.fullmatch(r"[1-5]\d\d", status), status
                assert response["description"], (method, path, status)
                if status.startswith(("4", "5")) or status == "default":
                    schema_ref = response["content"]["application/json"]["schema"]
                    assert schema_ref == {"$ref": "#/components/schemas/ErrorBody"}
            assert "422" not in op["responses"] or (method, path) == ("post", "/sandboxes")
            for requirement in op["security"]:
                assert set(requirement) <= schemes
    assert len(ids) == len(set(ids)), "operationIds must be unique"


def test_public_and_authenticated_operations(doc: dict[str, Any]) -> None:
    assert doc["paths"]["/health"]["get"]["security"] == []
    assert "401" not in doc["paths"]["/health"]["get"]["responses"]
    create = doc["paths"]["/sandboxes"]["post"]
    assert {"ApiKey": []} in create["security"] and {"Bearer": []} in create["security"]
    assert "401" in create["responses"]
    assert any(p["name"] == "Idempotency-Key" for p in create["parameters"])


def test_models_are_attached(doc: dict[str, Any]) -> None:
    create = doc["paths"]["/sandboxes"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/CreateSandboxRequest"}
    answer = create["responses"]["201"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/Sandbox"}
    sandbox = doc["components"]["schemas"]["Sandbox"]
    assert {"sandbox_id", "template_id", "state"} <= set(sandbox["required"])
    error = doc["components"]["schemas"]["ErrorBody"]
    assert error["required"] == ["message"] and "code" in error["properties"]
    upload = doc["paths"]["/sandboxes/{sandbox_id}/files/raw"]["put"]["requestBody"]
    assert upload["content"]["application/octet-stream"]["schema"]["format"] == "binary"
    stream = doc["paths"]["/sandboxes/{sandbox_id}/audit/stream"]["get"]["responses"]["200"]
    assert "text/event-stream" in stream["content"]


def test_nullable_fields_become_30_nullable(doc: dict[str, Any]) -> None:
    props = doc["components"]["schemas"]["Sandbox"]["properties"]
    assert props["end_at"] == {**props["end_at"], "type": "string", "nullable": True}
    assert props["security"]["nullable"] is True
    assert props["security"]["allOf"] == [{"$ref": "#/components/schemas/SecurityPolicy"}]


def test_converter_rewrites_31_forms() -> None:
    out = docs.to_openapi_30(
        {
            "openapi": "3.1.0",
            "x": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
            "y": {"const": "a"},
            "z": {"type": ["string", "null"]},
            "w": {"$ref": "#/components/schemas/A", "description": "d"},
        }
    )
    assert out["openapi"] == "3.0.3"
    assert out["x"] == {"type": "integer", "nullable": True}
    assert out["y"] == {"enum": ["a"]}
    assert out["z"] == {"type": "string", "nullable": True}
    assert out["w"] == {"description": "d", "allOf": [{"$ref": "#/components/schemas/A"}]}


def test_openapi_json_is_served_without_a_key(client: TestClient, doc: dict[str, Any]) -> None:
    answer = client.get("/openapi.json")
    assert answer.status_code == 200
    assert answer.json() == json.loads(json.dumps(doc))


# The page and its assets ---------------------------------------------------------------
def test_docs_page_references_only_local_assets(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    html = page.text
    assert (
        "http://" not in html
        and "https://" not in html
        and "//" not in html.replace("<!doctype", "")
    )
    assert "<script>" not in html, "no inline script (the CSP forbids it)"
    refs = re.findall(r'(?:src|href|data-openapi)="([^"]+)"', html)
    assert refs and all(r.startswith("/") for r in refs), refs
    for ref in refs:
        answer = client.get(ref)
        assert answer.status_code == 200, ref
        assert answer.content, ref


def test_assets_are_the_bundles_files(client: TestClient) -> None:
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
        answer = client.get(f"/docs/assets/{name}")
        assert answer.status_code == 200, name
        assert answer.content == (Path(swagger_ui_path) / name).read_bytes()
    init = client.get(f"/docs/assets/{docs.INIT_SCRIPT}")
    assert init.status_code == 200 and "javascript" in init.headers["content-type"]
    assert "validatorUrl: null" in init.text, "no badge fetched from validator.swagger.io"
    assert "http" not in init.text


@pytest.mark.parametrize(
    "name", ["index.html", "..%2Fswagger-ui.css", "swagger-initializer.js", "nope.js"]
)
def test_other_asset_names_are_404_messages(client: TestClient, name: str) -> None:
    answer = client.get(f"/docs/assets/{name}")
    assert answer.status_code == 404
    assert set(answer.json()) == {"message"}


def test_install_refuses_fastapis_own_docs() -> None:
    with pytest.raises(RuntimeError, match="docs_url"):
        docs.install_docs(FastAPI())


# The wire is unchanged -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("post", "/sandboxes", "[1]", "request body"),
        ("post", "/sandboxes", '{"timeout": "soon"}', "timeout"),
        ("post", "/sandboxes", '{"metadata": {"a": 1}}', "metadata.a"),
        ("post", "/templates/gc", '{"dry_run": "yes"}', "dry_run"),
        ("post", "/teams", '{"name": "other"}', "name"),
    ],
)
def test_bad_bodies_still_answer_400_message(
    client: TestClient, method: str, path: str, body: str, field: str
) -> None:
    answer = client.request(
        method,
        path,
        content=body,
        headers={"X-API-Key": "good", "Content-Type": "application/json"},
    )
    assert answer.status_code == 400, answer.text
    assert "detail" not in answer.json()
    assert answer.json()["message"].startswith(field), answer.json()


def test_missing_key_is_still_401_message(client: TestClient) -> None:
    answer = client.get("/sandboxes")
    assert answer.status_code == 401
    assert set(answer.json()) == {"message"}


# The models match the views --------------------------------------------------------------
def _extras(value: Any, where: str) -> list[str]:
    """Keys of the wire that the model does not declare, anywhere in it."""
    out: list[str] = []
    if isinstance(value, RootModel):
        return _extras(value.root, where)
    if isinstance(value, BaseModel):
        out += [f"{where}.{k}" for k in value.model_extra or {}]
        for name in type(value).model_fields:
            out += _extras(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _extras(v, f"{where}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            out += _extras(v, f"{where}.{k}")
    return out


def documents(model: type[BaseModel], wire: Any) -> None:
    parsed = model.model_validate(json.loads(json.dumps(wire)))
    assert not _extras(parsed, model.__name__), "undocumented keys"


def record(**fields: Any) -> SandboxRecord:
    base: dict[str, Any] = {
        "sandbox_id": "sbx-1",
        "team_id": "team-1",
        "state": SandboxState.RUNNING,
        "template_id": "tpl-1",
        "template_alias": "python",
        "runtime": "runc",
        "created_at": 1.0,
        "timeout": 300,
        "end_at": 301.0,
        "envs": {"A": "1", "OPENAI_API_KEY": "x"},
        "network": {"allow_out": ["api.openai.com"], "deny_out": ["0.0.0.0/0"]},
        "security": parse_security({"transformations": [{"match": "a", "replace": "b"}]}).to_dict(),
    }
    return SandboxRecord(**{**base, **fields})


def test_sandbox_and_security_views_match_their_models() -> None:
    documents(schema.Sandbox, sandbox_view(record()))
    documents(schema.Sandbox, sandbox_view(record(security=None, network={})))
    documents(schema.SecurityPolicy, security_view(record()))
    documents(schema.SandboxList, {"sandboxes": [sandbox_view(record())], "next_token": None})
    traffic = TrafficAccess("sbx-1", None, allow_public_traffic=False, mask_request_host="h")
    connected = sandbox_view(record(), traffic, with_token=True)
    assert "traffic_access_token" in connected
    documents(schema.Sandbox, connected)


def test_key_and_session_views_match_their_models() -> None:
    row = {"key_id": "k1", "name": "ci", "prefix": "dk_ab", "created_at": 1.0, "revoked_at": None}
    documents(schema.ApiKeyList, {"keys": [keys.key_view(row, "k1")]})
    documents(schema.CreatedKey, {**keys.key_view(row, "k2"), "key": "dk_secret"})


def test_snapshot_view_matches_its_model() -> None:
    snap = SnapshotRecord(
        snapshot_id="snap-1",
        team_id="team-1",
        sandbox_id="sbx-1",
        source=SnapshotSource.PAUSE,
        state=SnapshotState.READY,
        created_at=5.0,
        fs_bytes=10,
        pause_duration_ms=0,
    )
    documents(schema.Snapshot, snapshots.snapshot_view(snap))


def test_volume_views_match_their_models() -> None:
    svc = SimpleNamespace(quota_bytes=1024)
    rec = VolumeRecord("vol-1", "team-1", "data", 1.0, 2.0, 3, {"k": "v"})
    documents(schema.Volume, volumes.volume_view(svc, rec))  # type: ignore[arg-type]
    stat = FileStat(is_dir=False, size=3, mode=0o644, mtime_ns=10**9, ctime_ns=10**9, ino=1)
    documents(schema.FileEntry, volumes.entry_view(FileInfo("a", "/a", stat, 7)))
    documents(schema.Lease, volumes.lease_view("/a", Lease("tok", 9.0), 60.0))


def test_file_entry_view_matches_its_model() -> None:
    entry = SimpleNamespace(
        name="a", path="/tmp/a", type="file", size=1, mode=0o644, mtime=1.5, symlink_target=None
    )
    documents(schema.EntryInfo, files.entry_view(entry))


def test_vault_views_match_their_models() -> None:
    scope = VaultScope(domain_regex=r"api\.openai\.com", injection_type="bearer")
    secret = SecretRecord("sec-1", "team-1", "prod", "openai", "openai", (scope,), 1, 0, 1.0, 1.0)
    documents(schema.Secret, vault.secret_view(secret, 2.0))
    documents(schema.Environment, vault.environment_view(EnvironmentRecord("team-1", "prod", 1.0)))
    documents(schema.PresetList, {"presets": [p.to_wire() for p in PRESETS]})


def test_governance_packs_match_their_model() -> None:
    packs = load_packs()
    assert packs
    documents(schema.GovernancePackList, {"packs": [p.to_wire() for p in packs]})
