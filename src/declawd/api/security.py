"""A sandbox's SecurityPolicy, read and changed live (our extension, declaw-api.md §12.1).

`GET /sandboxes/{id}/security` answers the policy in the SDK's `SecurityPolicy.to_dict()`
shape (defaults filled, `network` = the egress policy in force); `PUT` takes that shape and
replaces the sections it carries, validated whole before anything changes. Without `network`
the egress policy stays; with it, it changes exactly as `PUT /sandboxes/{id}/network` would.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from declawd.api.app import Team, current_team, services
from declawd.api.body import json_body
from declawd.api.sandboxes import policy_from
from declawd.errors import DeclawdError
from declawd.inspect.policy import parse_security
from declawd.node.node import Need
from declawd.store import SandboxRecord

router = APIRouter()


def security_view(rec: SandboxRecord) -> dict[str, Any]:
    """The record's policy as `SecurityPolicy.to_dict()` would write it (pure)."""
    stored = {k: v for k, v in (rec.security or {}).items() if k != "network"}
    try:
        policy = parse_security(stored).to_dict()
    except DeclawdError:
        # A record from before this policy was validated on create: shown as it was sent.
        policy = stored
    # The SDK's NetworkPolicy.to_dict(): empty lists left out, no key for an open policy.
    network = {k: list(v) for k, v in rec.network.items() if v}
    if network:
        policy["network"] = network
    return policy


@router.get("/sandboxes/{sandbox_id}/security")
async def get_security(
    sandbox_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    rec = await services(request).node.lookup(team.team_id, sandbox_id, Need.LIVE)
    return security_view(rec)


@router.put("/sandboxes/{sandbox_id}/security")
async def put_security(
    sandbox_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    node = services(request).node
    await node.lookup(team.team_id, sandbox_id, Need.RUNNING)
    body = await json_body(request)
    spec = parse_security(body, "")
    # `"network": {}` is a section too: the open policy, as PUT /network with {} makes it.
    network = None if spec.network is None else policy_from(dict(spec.network), "network.")
    rec = await node.update_security(
        team.team_id, sandbox_id, spec.carried_sections(), network=network
    )
    return security_view(rec)
