"""Cookie authentication for the dashboard: the session cookie, its CSRF token, its team.

`session_team` is what `api.app.current_team` falls back to when a request carries no API
key. Invariant: a state-changing call (any method but GET, HEAD, OPTIONS) authenticated by
the cookie is refused unless its `X-CSRF-Token` header equals the token bound to that
session server-side; the cookie is HttpOnly and SameSite=Strict, so another site can
neither read it nor make the browser send it, and a page cannot learn the token without
reading this origin's responses.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import TYPE_CHECKING, Any

from fastapi import Request, Response

from declawd.errors import Forbidden, Internal, Unauthorized
from declawd.store.sessions import MAX_AGE_S, Sessions

if TYPE_CHECKING:
    from declawd.api.app import Team

COOKIE = "declawd_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def session_store(request: Request) -> Sessions:
    store: Any = request.app.state.services.store
    if not isinstance(store, Sessions):
        raise Internal("the store has no dashboard sessions (schema v6 not wired)")
    return store


def cookie_of(request: Request) -> str | None:
    return request.cookies.get(COOKIE) or None


async def current_session(request: Request) -> dict[str, Any] | None:
    """The request's live session (memoised on the request), None without a cookie;
    Unauthorized when the cookie names no live session."""
    cached = getattr(request.state, "dashboard_session", None)
    if cached is not None:
        return dict(cached)
    sid = cookie_of(request)
    if sid is None:
        return None
    found = await asyncio.to_thread(session_store(request).get_session, sid)
    if found is None:
        raise Unauthorized("session expired or signed out: sign in again", code="session_expired")
    request.state.dashboard_session = found
    return dict(found)


def check_csrf(request: Request, session: dict[str, Any]) -> None:
    """Refuse a state-changing call whose X-CSRF-Token is not this session's token."""
    if request.method.upper() in SAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent or not hmac.compare_digest(sent.encode(), str(session["csrf_token"]).encode()):
        raise Forbidden(
            "X-CSRF-Token: missing or not this session's token (a state-changing call made"
            " with the dashboard cookie must send the token from GET /dashboard/session)",
            code="csrf",
        )


async def session_team(request: Request) -> Team | None:
    """The team of the request's dashboard session; None when there is no session cookie.

    Raises Unauthorized for a cookie of no live session, Forbidden for a state-changing
    call without this session's CSRF token.
    """
    from declawd.api.app import Team

    session = await current_session(request)
    if session is None:
        return None
    check_csrf(request, session)
    return Team(session["team_id"], session["key_id"])


def set_cookie(request: Request, response: Response, session_id: str) -> None:
    # Secure whenever the browser reached us over https (directly or through a proxy that
    # says so); plain http is only sensible on localhost, where browsers accept the cookie.
    secure = (
        request.url.scheme == "https"
        or request.headers.get("x-forwarded-proto", "").lower() == "https"
    )
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=int(MAX_AGE_S),
        path="/",
        httponly=True,
        samesite="strict",
        secure=secure,
    )


def clear_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
