"""GET/PUT /sandboxes/{id}/security and the create-time security parsing, against a fake node:
the SDK's shape out, sections replaced by what the PUT carries, errors naming the field."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import pytest
from declaw import SecurityPolicy, TransformationRule
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from declawd.api import security, views
from declawd.api.errors import body_of, status_of
from declawd.api.sandboxes import parse_policy
from declawd.egress.policy import EgressPolicy
from declawd.errors import DeclawdError, InvalidInput, NotFound, NotSupported
from declawd.inspect.policy import UNBUILT_REASONS, parse_security
from declawd.store import SandboxRecord, SandboxState

TOXICITY_501 = UNBUILT_REASONS["toxicity"]

LINEAR = "(patterns run in linear time)"


class FakeNode:
    def __init__(self, rec: SandboxRecord) -> None:
        self.rec = rec
        self.updates: list[tuple[dict[str, Any], EgressPolicy | None]] = []

    async def lookup(self, team_id: str, sandbox_id: str, need: Any = None) -> SandboxRecord:
        if (team_id, sandbox_id) != (self.rec.team_id, self.rec.sandbox_id):
            raise NotFound(f"sandbox '{sandbox_id}' not found")
        return self.rec

    async def update_security(
        self,
        team_id: str,
        sandbox_id: str,
        sections: Mapping[str, Any],
        *,
        network: EgressPolicy | None = None,
    ) -> SandboxRecord:
        self.updates.append((dict(sections), network))
        fields: dict[str, Any] = {"security": {**(self.rec.security or {}), **sections}}
        if network is not None:
            fields["network"] = network.to_wire()
        self.rec = self.rec.replace(**fields)
        return self.rec


class FakeStore:
    def authenticate(self, key: str) -> dict[str, str] | None:
        return {"team_id": "team-1", "key_id": "key-1"} if key == "good" else None


def record(**fields: Any) -> SandboxRecord:
    return SandboxRecord(
        sandbox_id="sbx-1",
        team_id="team-1",
        state=SandboxState.RUNNING,
        template_id="tpl-1",
        template_alias="base",
        runtime="runc",
        created_at=1.0,
        timeout=300,
        **fields,
    )


@pytest.fixture
def node() -> FakeNode:
    stored = parse_security({"transformations": [{"match": "a", "replace": "b"}]}).to_dict()
    return FakeNode(record(security=stored, network={"allow_out": ["1.2.3.4"], "deny_out": []}))


@pytest.fixture
def client(node: FakeNode) -> Iterator[TestClient]:
    app = FastAPI()
    app.state.services = SimpleNamespace(node=node, store=FakeStore())

    @app.exception_handler(DeclawdError)
    async def _error(request: Request, exc: DeclawdError) -> JSONResponse:
        return JSONResponse(body_of(exc), status_code=status_of(exc))

    app.include_router(security.router)
    with TestClient(app, headers={"X-API-Key": "good"}) as c:
        yield c


def test_get_answers_the_sdks_shape_with_the_network_in_force(client: TestClient) -> None:
    expected = SecurityPolicy(transformations=[TransformationRule("a", "b")]).to_dict()
    expected["network"] = {"allow_out": ["1.2.3.4"]}
    answer = client.get("/sandboxes/sbx-1/security")
    assert answer.status_code == 200
    assert answer.json() == expected


def test_get_of_a_sandbox_created_without_a_policy_is_the_defaults() -> None:
    view = views.security_view(record(security=None))
    assert view == SecurityPolicy().to_dict()


def test_put_replaces_only_the_sections_it_carries(client: TestClient, node: FakeNode) -> None:
    answer = client.put("/sandboxes/sbx-1/security", json={"audit": {"enabled": False}})
    assert answer.status_code == 200, answer.text
    assert node.updates == [({"audit": {"enabled": False}}, None)]
    assert answer.json()["audit"] == {"enabled": False}
    assert answer.json()["transformations"] == [
        {"match": "a", "replace": "b", "direction": "outbound"}
    ]
    assert answer.json()["network"] == {"allow_out": ["1.2.3.4"]}


def test_put_with_network_changes_the_egress_policy_as_put_network_does(
    client: TestClient, node: FakeNode
) -> None:
    body = {"network": {"allow_out": ["api.openai.com"], "deny_out": ["0.0.0.0/0"]}}
    answer = client.put("/sandboxes/sbx-1/security", json=body)
    assert answer.status_code == 200, answer.text
    sections, network = node.updates[0]
    assert sections == {}
    assert network is not None and network.to_wire() == body["network"]
    assert answer.json()["network"] == body["network"]


def test_put_an_sdk_policy_whole(client: TestClient, node: FakeNode) -> None:
    policy = SecurityPolicy(transformations=[TransformationRule("x", "y", "inbound")], audit=False)
    answer = client.put("/sandboxes/sbx-1/security", json=policy.to_dict())
    assert answer.status_code == 200, answer.text
    assert {k: v for k, v in answer.json().items() if k != "network"} == policy.to_dict()


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {"transformations": [{"match": "(?<=a)b", "replace": "x"}]},
            400,
            f"transformations[0].match: lookbehind is not supported {LINEAR}",
        ),
        (
            {"network": {"allow_out": ["example.com"]}},
            400,
            "network.allow_out[0]: a domain allow-list needs ALL_TRAFFIC ('0.0.0.0/0') or"
            " '::/0' in deny_out",
        ),
        (
            {"pii": {"enabled": True, "types": ["dna"]}},
            400,
            "pii.types[0]: unknown PII type 'dna': must be one of ssn, credit_card, email, "
            "phone, person_name, api_key, address, ip_address",
        ),
        ({"toxicity": {"enabled": True}}, 501, "security.toxicity: " + TOXICITY_501),
        (
            {"network": {"mask_request_host": 5}},
            400,
            "network.mask_request_host: must be a string",
        ),
    ],
)
def test_a_bad_put_changes_nothing_and_names_the_field(
    client: TestClient, node: FakeNode, body: dict[str, Any], status: int, message: str
) -> None:
    answer = client.put("/sandboxes/sbx-1/security", json=body)
    assert (answer.status_code, answer.json()) == (status, {"message": message})
    assert node.updates == []


def test_another_teams_or_an_unknown_sandbox_is_404(client: TestClient, node: FakeNode) -> None:
    assert client.get("/sandboxes/sbx-2/security").status_code == 404
    assert client.put("/sandboxes/sbx-2/security", json={"audit": True}).status_code == 404
    assert node.updates == []


# --- create --------------------------------------------------------------------------------


def test_create_parses_policy_json_and_takes_its_network_when_no_top_level_one() -> None:
    policy = SecurityPolicy(transformations=[TransformationRule("a", "b")]).to_dict()
    policy["network"] = {"deny_out": ["10.0.0.0/8"]}
    egress, spec = parse_policy({"security": {"policy_json": json.dumps(policy)}})
    assert spec is not None and spec.transformations[0].match == "a"
    assert egress.to_wire() == {"allow_out": [], "deny_out": ["10.0.0.0/8"]}
    egress, _ = parse_policy(
        {"security": {"policy_json": json.dumps(policy)}, "network": {"deny_out": ["1.1.1.1"]}}
    )
    assert egress.to_wire()["deny_out"] == ["1.1.1.1"]


def test_create_names_fields_inside_policy_json() -> None:
    body = {"security": {"policy_json": {"transformations": [{"match": "(a)\\1", "replace": ""}]}}}
    with pytest.raises(InvalidInput) as err:
        parse_policy(body)
    assert err.value.message == (
        f"security.policy_json.transformations[0].match: backreferences are not supported {LINEAR}"
    )
    with pytest.raises(NotSupported):
        parse_policy({"security": {"policy_json": {"toxicity": True}}})
