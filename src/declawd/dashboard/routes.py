"""The dashboard's own routes: its page and static assets, sign-in/out, template build logs.

Everything else the UI shows comes from the ordinary API routes, called with the session
cookie instead of a key. Invariant: the page and its assets are files of this package only
(no CDN, no inline script) and leave with a `default-src 'self'` CSP, so a script can run
here only if this package shipped it.
"""

from __future__ import annotations

import asyncio
import mimetypes
from functools import cache
from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from declawd.api.app import Team, current_team, services
from declawd.api.body import json_body
from declawd.api.views import iso
from declawd.dashboard.session import (
    check_csrf,
    clear_cookie,
    cookie_of,
    current_session,
    session_store,
    set_cookie,
)
from declawd.errors import InvalidInput, Unauthorized

router = APIRouter(include_in_schema=False)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self';"
    " frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


@cache
def asset(name: str) -> tuple[bytes, str] | None:
    """(content, media type) of a file shipped in dashboard/static, or None."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    entry = resources.files("declawd.dashboard").joinpath("static", name)
    if not entry.is_file():
        return None
    suffix = name[name.rfind(".") :]
    media = TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
    return entry.read_bytes(), media


def _file(name: str) -> Response:
    found = asset(name)
    if found is None:
        return JSONResponse({"message": f"no dashboard asset {name!r}"}, status_code=404)
    body, media = found
    return Response(body, media_type=media, headers=PAGE_HEADERS)


@router.get("/")
async def index() -> Response:
    return _file("index.html")


@router.get("/dashboard/assets/{name}")
async def static_asset(name: str) -> Response:
    return _file(name)


@router.get("/favicon.ico")
async def favicon() -> Response:
    return _file("favicon.svg")


async def _view(request: Request, session: dict[str, Any]) -> dict[str, Any]:
    store = services(request).store
    team = await asyncio.to_thread(store.get_team, session["team_id"])
    keys = await asyncio.to_thread(store.list_api_keys, session["team_id"])
    key = next((k for k in keys if k["key_id"] == session["key_id"]), None)
    return {
        "team_id": session["team_id"],
        "team_name": team["name"] if team else None,
        "key_id": session["key_id"],
        "key_prefix": key["prefix"] if key else None,
        "csrf_token": session["csrf_token"],
        "expires_at": iso(session["expires_at"]),
    }


@router.post("/dashboard/session")
async def sign_in(request: Request) -> Response:
    """Exchange an API key (JSON `{"api_key"}`) for a session cookie and its CSRF token."""
    # A form of another site cannot send application/json without a CORS preflight we never
    # grant, so no one can sign a browser in to their own team behind its user's back.
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise InvalidInput("Content-Type", "must be application/json")
    body = await json_body(request)
    key = body.get("api_key")
    if not isinstance(key, str) or not key.strip():
        raise InvalidInput("api_key", "is required (a string)")
    store = services(request).store
    found = await asyncio.to_thread(store.authenticate, key.strip())
    if found is None:
        raise Unauthorized("api_key: invalid or revoked API key")
    sessions = session_store(request)
    old = cookie_of(request)
    if old:
        await asyncio.to_thread(sessions.delete_session, old)
    sid, _ = await asyncio.to_thread(sessions.create_session, found["team_id"], found["key_id"])
    session = await asyncio.to_thread(sessions.get_session, sid)
    assert session is not None
    response = JSONResponse(await _view(request, session), status_code=201)
    set_cookie(request, response, sid)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/dashboard/session")
async def get_session(request: Request) -> Response:
    """Who the cookie signs in (team, key prefix) and the session's CSRF token."""
    session = await current_session(request)
    if session is None:
        raise Unauthorized("not signed in", code="no_session")
    response = JSONResponse(await _view(request, session))
    response.headers["Cache-Control"] = "no-store"
    return response


@router.delete("/dashboard/session")
async def sign_out(request: Request) -> Response:
    """End the session (CSRF token required); the cookie is cleared either way."""
    response = JSONResponse({"signed_out": True})
    sid = cookie_of(request)
    try:
        session = await current_session(request)
    except Unauthorized:
        session = None  # already expired: nothing to end but the cookie
    if session is not None and sid is not None:
        check_csrf(request, session)
        await asyncio.to_thread(session_store(request).delete_session, sid)
    clear_cookie(response)
    return response


@router.get("/dashboard/templates/{template_id}/builds")
async def template_builds(
    template_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    """The team's builds of a template, newest first, each with its whole log so far."""
    svc = services(request)
    tpl = await asyncio.to_thread(svc.templates.get, team.team_id, template_id)
    builds = await asyncio.to_thread(
        session_store(request).list_builds, team.team_id, tpl["template_id"]
    )
    out = []
    for b in builds:
        status = await asyncio.to_thread(svc.templates.build_status, team.team_id, b["build_id"])
        out.append(
            {
                "build_id": b["build_id"],
                "status": status["status"],
                "created_at": iso(b["created_at"]),
                "finished_at": iso(b["finished_at"]),
                "logs": status["logs"],
            }
        )
    return {"template_id": tpl["template_id"], "builtin": tpl["builtin"], "builds": out}
