"""Vault routes (declaw-api.md §9): teams, environments, secrets and presets for `VaultClient`.

Thin: parse the body, call `VaultService`, shape the answer as the SDK's `VaultSecret` and
`VaultPreset` parse it. The caller's team is listed under the name `default` (what the SDK
looks for); `{team}` in a path is that name or the team id, anything else is a 404. No answer
carries a secret value, not even a hint of it. After a scope change or a delete, the live
sandboxes holding the secret get fresh inspection policies before the call returns.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from declawd.api.app import Team, current_team, services
from declawd.api.body import json_body
from declawd.api.views import iso
from declawd.errors import InvalidInput, NotFound
from declawd.vault import PRESETS, NewSecret, SecretRecord, VaultService, master_key_path
from declawd.vault.refs import DEFAULT_TEAM
from declawd.vault.store import EnvironmentRecord

router = APIRouter()


def vault_service(request: Request) -> VaultService:
    """The server's one VaultService (made on first use; the master key on first secret)."""
    state = request.app.state
    svc: VaultService | None = getattr(state, "vault", None)
    if svc is None:
        base = services(request)
        svc = VaultService(base.store, master_key_path(base.settings.keys_dir))
        state.vault = svc
    return svc


def _team_of(team: Team, path_team: str) -> str:
    if path_team not in (DEFAULT_TEAM, team.team_id):
        raise NotFound(f"team {path_team} not found")
    return team.team_id


# Views --------------------------------------------------------------------------------
async def _team_view(request: Request, team: Team) -> dict[str, Any]:
    row = await asyncio.to_thread(services(request).store.get_team, team.team_id)
    created = float(row["created_at"]) if row else 0.0
    return {"team_id": team.team_id, "name": DEFAULT_TEAM, "created_at": iso(created)}


def environment_view(env: EnvironmentRecord) -> dict[str, Any]:
    return {
        "env_id": env.name,
        "name": env.name,
        "team_id": env.team_id,
        "created_at": iso(env.created_at),
    }


def secret_view(rec: SecretRecord, now: float) -> dict[str, Any]:
    return {
        "secret_id": rec.secret_id,
        "name": rec.name,
        "team_id": rec.team_id,
        "env_id": rec.environment,
        "environment": rec.environment,
        "provider": rec.provider,
        "scopes": [s.to_wire() for s in rec.scopes],
        "version": rec.version,
        "created_at": iso(rec.created_at),
        "updated_at": iso(rec.updated_at),
        "rotated_at": iso(rec.rotated_at),
        "rotation_interval_days": rec.rotation_interval_days,
        "rotation_due": rec.rotation_due(now),
    }


async def _refresh(request: Request, sandbox_ids: list[str]) -> None:
    # The gateway holds each sandbox's scopes in its policy: without this a narrowed scope
    # would keep injecting into the hosts it no longer names.
    if sandbox_ids:
        await services(request).node.refresh_inspection(sandbox_ids)


# Teams --------------------------------------------------------------------------------
@router.get("/teams")
async def list_teams(request: Request, team: Team = Depends(current_team)) -> Any:
    return {"teams": [await _team_view(request, team)]}


@router.post("/teams")
async def create_team(request: Request, team: Team = Depends(current_team)) -> Any:
    body = await json_body(request)
    name = body.get("name")
    if name != DEFAULT_TEAM:
        # One team per API key: the only team a key can "create" is the one it has.
        raise InvalidInput("name", f"must be {DEFAULT_TEAM!r} (an API key has exactly one team)")
    return await _team_view(request, team)


@router.get("/teams/{team_ref}")
async def get_team(team_ref: str, request: Request, team: Team = Depends(current_team)) -> Any:
    _team_of(team, team_ref)
    return await _team_view(request, team)


# Environments -------------------------------------------------------------------------
@router.get("/teams/{team_ref}/environments")
async def list_environments(
    team_ref: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    envs = await asyncio.to_thread(vault_service(request).environments, _team_of(team, team_ref))
    return {"environments": [environment_view(e) for e in envs]}


@router.post("/teams/{team_ref}/environments")
async def create_environment(
    team_ref: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    team_id = _team_of(team, team_ref)
    body = await json_body(request)
    env, created = await asyncio.to_thread(
        vault_service(request).ensure_environment, team_id, body.get("name")
    )
    return JSONResponse(environment_view(env), status_code=201 if created else 200)


# Secrets ------------------------------------------------------------------------------
@router.get("/teams/{team_ref}/vault/secrets")
async def list_secrets(team_ref: str, request: Request, team: Team = Depends(current_team)) -> Any:
    recs = await asyncio.to_thread(vault_service(request).list_secrets, _team_of(team, team_ref))
    now = time.time()
    return {"secrets": [secret_view(r, now) for r in recs]}


@router.post("/teams/{team_ref}/vault/secrets")
async def create_secret(team_ref: str, request: Request, team: Team = Depends(current_team)) -> Any:
    team_id = _team_of(team, team_ref)
    body = await json_body(request)
    req = NewSecret(
        environment=body.get("environment"),
        value=body.get("value"),
        name=body.get("name"),
        provider=body.get("provider"),
        scopes=body.get("scopes"),
        rotation_interval_days=body.get("rotation_interval_days", 0),
    )
    rec = await asyncio.to_thread(vault_service(request).create_secret, team_id, req)
    return JSONResponse(secret_view(rec, time.time()), status_code=201)


@router.get("/teams/{team_ref}/vault/secrets/{secret}")
async def get_secret(
    team_ref: str, secret: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    rec = await asyncio.to_thread(vault_service(request).find, _team_of(team, team_ref), secret)
    return secret_view(rec, time.time())


@router.post("/teams/{team_ref}/vault/secrets/{secret}/rotate")
async def rotate_secret(
    team_ref: str, secret: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    team_id = _team_of(team, team_ref)
    body = await json_body(request)
    rec = await asyncio.to_thread(vault_service(request).rotate, team_id, secret, body.get("value"))
    return secret_view(rec, time.time())


@router.post("/teams/{team_ref}/vault/secrets/{secret}/scopes")
async def update_scopes(
    team_ref: str, secret: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    team_id = _team_of(team, team_ref)
    body = await json_body(request)
    rec, users = await asyncio.to_thread(
        vault_service(request).update_scopes, team_id, secret, body.get("scopes")
    )
    await _refresh(request, users)
    return secret_view(rec, time.time())


@router.delete("/teams/{team_ref}/vault/secrets/{secret}")
async def delete_secret(
    team_ref: str, secret: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    rec, users = await asyncio.to_thread(
        vault_service(request).delete, _team_of(team, team_ref), secret
    )
    await _refresh(request, users)
    return {"deleted": True, "secret_id": rec.secret_id}


# Presets ------------------------------------------------------------------------------
@router.get("/vault/presets")
async def list_presets(team: Team = Depends(current_team)) -> Any:
    return {"presets": [p.to_wire() for p in PRESETS]}
