"""Shared plumbing for routes that talk to a sandbox's envd: lookup, error mapping, SSE.

Lookups go through the node's one `lookup` (another team's sandbox is a 404, a sandbox still
being created a 409), and every envd error becomes the domain error whose status the SDK
expects (§11.2): missing file 404, permission problems 400 `permission denied: <path>`, an
unreachable agent 502.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from declawd.api.app import Team, services
from declawd.errors import (
    Conflict,
    DeclawdError,
    Internal,
    InvalidInput,
    NotFound,
    TooLarge,
    Unreachable,
)
from declawd.node.envd_client import (
    EnvdClient,
    EnvdError,
    EnvdNotFound,
    EnvdPermissionDenied,
    EnvdUnavailable,
)
from declawd.node.node import Need
from declawd.store import SandboxRecord


async def sandbox_client(
    request: Request, team: Team, sandbox_id: str
) -> tuple[SandboxRecord, EnvdClient]:
    """The team's running sandbox and its envd client (404, or 409 while creating/paused)."""
    node = services(request).node
    rec = await node.lookup(team.team_id, sandbox_id, Need.RUNNING)
    return rec, node.envd(rec)


_BY_STATUS: dict[int, type[DeclawdError]] = {404: NotFound, 409: Conflict, 413: TooLarge}


@contextmanager
def envd_errors(what: str = "") -> Iterator[None]:
    try:
        yield
    except EnvdNotFound as exc:
        raise NotFound(exc.message or f"not found: {what}") from exc
    except EnvdPermissionDenied as exc:
        raise InvalidInput(
            "", exc.message or f"permission denied: {what}", code="permission_denied"
        ) from exc
    except EnvdUnavailable as exc:
        raise Unreachable(f"sandbox agent unreachable: {exc}") from exc
    except EnvdError as exc:
        if exc.status == 400:
            raise InvalidInput("", exc.message, code=exc.code or "") from exc
        cls = _BY_STATUS.get(exc.status, Internal)
        raise cls(exc.message, code=exc.code or "") from exc


def sse(
    events: AsyncIterator[tuple[str | None, dict[str, Any]]], status: int = 200
) -> StreamingResponse:
    """Server-sent events: each item is (event name or None, JSON-able data)."""

    async def body() -> AsyncIterator[bytes]:
        async for name, data in events:
            chunk = f"event: {name}\n" if name else ""
            chunk += f"data: {json.dumps(data, separators=(',', ':'))}\n\n"
            yield chunk.encode()

    return StreamingResponse(
        body(),
        status_code=status,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
