"""Operations routes (/health, /pools, /metrics) and the documented routes we have not built (501).

/metrics is Prometheus text from `declawd.metrics`: the process's event counters plus what
the store and the gateway daemon say at scrape time; it needs an API key like every route
but /health (docs/operations.md § Metrics).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from declawd import metrics as prom
from declawd.api.app import Services, Team, current_team, services
from declawd.errors import NotSupported

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> Any:
    svc = services(request)
    gateway = await svc.node.gateway_healthy()
    return {"ok": True, "gateway": gateway, "uptime_s": round(time.time() - svc.started_at, 1)}


@router.get("/pools")
async def pools(request: Request, team: Team = Depends(current_team)) -> Any:
    """The node's warm pools (declaw-api.md §11): per template and runtime, how many
    sandboxes are kept ready and how many are; their memory against the budget."""
    svc = services(request)
    return await asyncio.to_thread(svc.node.pool_summary)  # reads the pools' cgroups


@router.get("/metrics")
async def metrics(request: Request, team: Team = Depends(current_team)) -> Any:
    svc = services(request)
    # The collectors read SQLite and the gateway's socket: the scrape runs off the loop.
    body = await asyncio.to_thread(prom.current().render, *scrape_collectors(svc))
    return Response(body, media_type=prom.CONTENT_TYPE_LATEST)


def scrape_collectors(svc: Services) -> tuple[prom.NodeCollector, prom.GatewayCollector]:
    """What a scrape reads besides the event counters: the store and the gateway daemon."""
    store, node = svc.store, svc.node
    pool = ipaddress.IPv4Network(svc.settings.pool)
    total_slots = pool.num_addresses // 4 - 1  # slot 0's /30 is never handed out

    def live() -> list[tuple[str, str]]:
        return [
            (rec.runtime, rec.state.value)
            for rec in store.list_live_sandboxes()
            if not rec.pooled  # counted by the warm pool gauges
        ]

    def slots() -> tuple[int, int]:
        held = [rec for rec in store.list_unreleased_sandboxes() if rec.slot is not None]
        return len(held), total_slots

    return (
        prom.NodeCollector(
            live=live,
            slots=slots,
            gateway_restarts=lambda: node.gateway_restarts,
            started_at=svc.started_at,
            pools=node.pool_summary,
        ),
        prom.GatewayCollector(node.gateway_stats),
    )


_UNBUILT = [
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
