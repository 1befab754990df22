"""Operations routes (/health, /metrics) and the documented routes we have not built (501)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse

from declawd.api.app import Team, current_team, services
from declawd.errors import NotSupported

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> Any:
    svc = services(request)
    gateway = await svc.node.gateway_healthy()
    return {"ok": True, "gateway": gateway, "uptime_s": round(time.time() - svc.started_at, 1)}


@router.get("/metrics")
async def metrics(request: Request, team: Team = Depends(current_team)) -> Any:
    svc = services(request)
    live = await asyncio.to_thread(svc.store.list_live_sandboxes)
    by_runtime: dict[str, int] = {}
    for rec in live:
        by_runtime[rec.runtime] = by_runtime.get(rec.runtime, 0) + 1
    lines = [
        "# HELP declawd_sandboxes_live Sandboxes creating, running or paused on this node.",
        "# TYPE declawd_sandboxes_live gauge",
    ]
    for rt in ("runc", "runsc"):
        lines.append(f'declawd_sandboxes_live{{runtime="{rt}"}} {by_runtime.get(rt, 0)}')
    lines += [
        "# HELP declawd_gateway_restarts_total Times the gateway daemon was restarted.",
        "# TYPE declawd_gateway_restarts_total counter",
        f"declawd_gateway_restarts_total {svc.node.gateway_restarts}",
        "# HELP declawd_uptime_seconds Seconds since the server started.",
        "# TYPE declawd_uptime_seconds gauge",
        f"declawd_uptime_seconds {time.time() - svc.started_at:.1f}",
    ]
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")


_UNBUILT = [
    ("GET", "/sandboxes/{sandbox_id}/ports/{port}", "port forwarding (/ports/{port})"),
    ("GET", "/accounts/{rest:path}", "accounts"),
]


def _not_implemented(feature: str) -> Any:
    async def handler(team: Team = Depends(current_team)) -> Any:
        raise NotSupported(f"not implemented: {feature}")

    return handler


def _register_unbuilt() -> None:
    for method, path, feature in _UNBUILT:
        router.add_api_route(
            path, _not_implemented(feature), methods=[method], include_in_schema=False
        )


_register_unbuilt()
