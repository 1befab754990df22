"""Shared plumbing for routes that talk to a sandbox's envd: lookup, error mapping, SSE.

Lookups are always scoped to the caller's team (another team's sandbox is a 404), and every
envd error becomes the status the SDK expects (§11.2): missing file 404, permission problems
400 `permission denied: <path>`, an unreachable agent 502.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from declawd.api.app import Team, services
from declawd.errors import ApiError, BadRequest, NotFound
from declawd.node.envd_client import (
    EnvdClient,
    EnvdError,
    EnvdNotFound,
    EnvdPermissionDenied,
    EnvdUnavailable,
)
from declawd.node.node import LIVE


class AgentUnavailable(ApiError):
    status = 502


async def sandbox_client(
    request: Request, team: Team, sandbox_id: str
) -> tuple[dict[str, Any], EnvdClient]:
    svc = services(request)
    rec = await asyncio.to_thread(svc.store.get_sandbox, sandbox_id, team.team_id)
    if rec is None or rec["state"] not in LIVE:
        raise NotFound(f"sandbox '{sandbox_id}' not found")
    if rec["state"] != "running":
        raise ApiError(f"sandbox '{sandbox_id}' is still being created", status=409)
    return rec, svc.node.client(sandbox_id)


@contextmanager
def envd_errors(what: str = "") -> Iterator[None]:
    try:
        yield
    except EnvdNotFound as exc:
        raise NotFound(exc.message or f"not found: {what}") from exc
    except EnvdPermissionDenied as exc:
        raise BadRequest(
            exc.message or f"permission denied: {what}", code="permission_denied"
        ) from exc
    except EnvdUnavailable as exc:
        raise AgentUnavailable(f"sandbox agent unreachable: {exc}") from exc
    except EnvdError as exc:
        status = exc.status if 400 <= exc.status < 500 else 500
        raise ApiError(exc.message, status=status, code=exc.code or "") from exc


def sse(events: AsyncIterator[tuple[str | None, dict[str, Any]]]) -> StreamingResponse:
    """Server-sent events: each item is (event name or None, JSON-able data)."""

    async def body() -> AsyncIterator[bytes]:
        async for name, data in events:
            chunk = f"event: {name}\n" if name else ""
            chunk += f"data: {json.dumps(data, separators=(',', ':'))}\n\n"
            yield chunk.encode()

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
