"""The caller's team's API keys (our extension): list, create, revoke.

Invariant: these routes only ever see keys of the caller's team (another team's key id is a
plain 404), and never return key material except the new key, once, in the create answer.
The key a request authenticates with (the key itself, or the one its dashboard session was
signed in with) cannot be revoked through that request: 409, so no one locks themselves
out by mistake; revoke it from another key, or with `declawd keys revoke` on the host.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from declawd.api.app import Team, current_team, services
from declawd.api.body import field, json_body
from declawd.api.views import iso
from declawd.errors import Conflict, InvalidInput, NotFound

router = APIRouter()

MAX_NAME = 64


def key_view(k: dict[str, Any], current_key_id: str) -> dict[str, Any]:
    return {
        "key_id": k["key_id"],
        "name": k["name"],
        "prefix": k["prefix"],
        "created_at": iso(k["created_at"]),
        "revoked_at": iso(k["revoked_at"]),
        "state": "revoked" if k["revoked_at"] is not None else "active",
        "current": k["key_id"] == current_key_id,
    }


@router.get("/keys")
async def list_keys(request: Request, team: Team = Depends(current_team)) -> Any:
    keys = await asyncio.to_thread(services(request).store.list_api_keys, team.team_id)
    return {"keys": [key_view(k, team.key_id) for k in keys]}


@router.post("/keys", status_code=201)
async def create_key(request: Request, team: Team = Depends(current_team)) -> Any:
    """Body `{"name"?}`; the answer holds the key (`key`), shown this once."""
    body = await json_body(request, allow_empty=True)
    name = field(body, "name", str, default="").strip()
    if len(name) > MAX_NAME:
        raise InvalidInput("name", f"at most {MAX_NAME} characters")
    if any(ord(ch) < 32 for ch in name):
        raise InvalidInput("name", "must not contain control characters")
    store = services(request).store
    key_id, plaintext = await asyncio.to_thread(store.create_api_key, team.team_id, name)
    keys = await asyncio.to_thread(store.list_api_keys, team.team_id)
    created = next(k for k in keys if k["key_id"] == key_id)
    out = key_view(created, team.key_id)
    out["key"] = plaintext
    return JSONResponse(out, status_code=201, headers={"Cache-Control": "no-store"})


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    """Revoke a key of the team by its id; effective on its very next request."""
    store = services(request).store
    keys = await asyncio.to_thread(store.list_api_keys, team.team_id)
    found = next((k for k in keys if k["key_id"] == key_id), None)
    if found is None:
        raise NotFound(f"API key '{key_id}' not found")
    if key_id == team.key_id:
        raise Conflict(
            f"API key '{key_id}' is the one this request is signed in with; revoke it with"
            " another key of the team or `declawd keys revoke`",
            code="current_key",
        )
    if found["revoked_at"] is not None:
        return {"key_id": key_id, "revoked": False, "revoked_at": iso(found["revoked_at"])}
    await asyncio.to_thread(store.revoke_api_key, key_id)
    after = next(
        k
        for k in await asyncio.to_thread(store.list_api_keys, team.team_id)
        if k["key_id"] == key_id
    )
    return {"key_id": key_id, "revoked": True, "revoked_at": iso(after["revoked_at"])}
