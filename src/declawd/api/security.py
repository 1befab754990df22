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
from declawd.api.sandboxes import change_traffic, policy_from
from declawd.api.views import security_view
from declawd.inspect.policy import parse_security
from declawd.node.node import Need

router = APIRouter()


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
    if spec.network is not None:
        await change_traffic(request, sandbox_id, dict(spec.network), "network.")
    return security_view(rec)
