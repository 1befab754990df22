"""Governance pack routes: GET /governance/packs and /governance/packs/{name} (name or name@vN).

The packs are data shipped with the server (`declawd.guard.packs`), the same for every team;
the routes still need an API key like every route but /health. The answer is the SDK's
`GovernancePack` shape, plus our `guardrails` and `packages` extensions.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from declawd.api.app import Team, current_team
from declawd.guard.packs import find_pack, load_packs

router = APIRouter()


@router.get("/governance/packs")
async def list_packs(team: Team = Depends(current_team)) -> Any:
    return {"packs": [pack.to_wire() for pack in load_packs()]}


@router.get("/governance/packs/{name}")
async def get_pack(name: str, team: Team = Depends(current_team)) -> Any:
    return find_pack(name).to_wire()
