"""Template routes (declaw-api.md §11.1 and §11.4): thin HTTP over `TemplateService`.

Besides the SDK's build/status/rebuild routes: list (with the layer cache's disk use),
inspect, delete, build-context upload and `POST /templates/gc`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request

from declawd.api.app import Team, current_team, services
from declawd.api.body import json_body, read_limited
from declawd.errors import InvalidInput

router = APIRouter()

MAX_CONTEXT = 512 * 2**20


@router.post("/templates/build", status_code=202)
async def build(request: Request, team: Team = Depends(current_team)) -> Any:
    body = await json_body(request)
    return await services(request).templates.build(team.team_id, body)


@router.get("/templates/builds/{build_id}")
async def build_status(build_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    return await asyncio.to_thread(services(request).templates.build_status, team.team_id, build_id)


@router.post("/templates/{template_id}/rebuild", status_code=202)
async def rebuild(template_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    return await services(request).templates.rebuild(team.team_id, template_id)


@router.put("/templates/contexts")
async def upload_context(request: Request, team: Team = Depends(current_team)) -> Any:
    data = await read_limited(request, MAX_CONTEXT)
    return await asyncio.to_thread(services(request).templates.upload_context, team.team_id, data)


@router.get("/templates")
async def list_templates(request: Request, team: Team = Depends(current_team)) -> Any:
    svc = services(request).templates
    templates = await asyncio.to_thread(svc.list, team.team_id)
    return {"templates": templates, "disk": await asyncio.to_thread(svc.disk_usage)}


@router.post("/templates/gc")
async def gc(request: Request, team: Team = Depends(current_team)) -> Any:
    body = await json_body(request, allow_empty=True)
    only = body.get("layers")
    if only is not None and (
        not isinstance(only, list) or not all(isinstance(k, str) for k in only)
    ):
        raise InvalidInput("layers", "must be a list of layer keys")
    min_age = body.get("min_age_s", 0)
    if isinstance(min_age, bool) or not isinstance(min_age, int | float) or min_age < 0:
        raise InvalidInput("min_age_s", "must be a non-negative number")
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise InvalidInput("dry_run", "must be a boolean")
    return await asyncio.to_thread(services(request).templates.gc, float(min_age), only, dry_run)


@router.get("/templates/{template_id}")
async def get_template(
    template_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    return await asyncio.to_thread(services(request).templates.get, team.team_id, template_id)


@router.delete("/templates/{template_id}")
async def delete_template(
    template_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    await asyncio.to_thread(services(request).templates.delete, team.team_id, template_id)
    return {"deleted": True}
