"""Template routes (declaw-api.md §11.1 and §11.4): thin HTTP over `TemplateService`."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request

from declawd.api.app import Team, current_team, services
from declawd.api.body import json_body, read_limited

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
    return {"templates": await asyncio.to_thread(services(request).templates.list, team.team_id)}


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
