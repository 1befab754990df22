"""Egress policy and audit routes (declaw-api.md §11.4): replace/read policy, query/stream audit.

A policy replacement is validated completely before anything changes, then applied as one
atomic datapath transaction; connections to destinations no longer allowed are cut.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request

from declawd.api.access import sse
from declawd.api.app import Team, current_team, services
from declawd.api.body import int_query, json_body
from declawd.api.sandboxes import change_traffic, policy_from
from declawd.errors import InvalidInput
from declawd.node.node import Need

router = APIRouter()
AUDIT_KINDS = ("dns", "connection", "http", "command", "file")


@router.get("/sandboxes/{sandbox_id}/network")
async def get_policy(sandbox_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    rec = await services(request).node.lookup(team.team_id, sandbox_id, Need.LIVE)
    return dict(rec.network) or {"allow_out": [], "deny_out": []}


@router.put("/sandboxes/{sandbox_id}/network")
async def put_policy(sandbox_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    node = services(request).node
    rec = await node.lookup(team.team_id, sandbox_id, Need.RUNNING)
    body = await json_body(request)
    policy = policy_from(body, prefix="")
    await node.update_policy(rec, policy)
    await change_traffic(request, rec.sandbox_id, body, "")
    return policy.to_wire()


def _time(value: str | None, label: str) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        # Events carry ISO times rounded to the microsecond; widen by half a microsecond so
        # an event's own time used as `since` still includes it.
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() - 5e-7
    except ValueError as exc:
        raise InvalidInput(label, "must be an ISO-8601 time or a unix timestamp") from exc


@router.get("/sandboxes/{sandbox_id}/audit")
async def audit(sandbox_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    svc = services(request)
    await svc.node.lookup(team.team_id, sandbox_id, Need.RECORD)
    q = request.query_params
    verdict, kind = q.get("verdict") or None, q.get("kind") or None
    if verdict not in (None, "allow", "deny"):
        raise InvalidInput("verdict", "must be 'allow' or 'deny'")
    if kind not in (None, *AUDIT_KINDS):
        raise InvalidInput("kind", "must be one of " + ", ".join(map(repr, AUDIT_KINDS)))
    events, token = await asyncio.to_thread(
        svc.store.query_audit,
        sandbox_id,
        since=_time(q.get("since"), "since"),
        until=_time(q.get("until"), "until"),
        verdict=verdict,
        kind=kind,
        limit=int_query(q.get("limit"), "limit", minimum=1, maximum=1000) or 100,
        next_token=q.get("next_token") or None,
    )
    return {"events": events, "next_token": token}


@router.get("/sandboxes/{sandbox_id}/audit/stream")
async def audit_stream(
    sandbox_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    svc = services(request)
    await svc.node.lookup(team.team_id, sandbox_id, Need.RECORD)
    from_start = request.query_params.get("from_start", "").lower() in ("1", "true")

    async def events() -> AsyncIterator[tuple[str | None, dict[str, Any]]]:
        last = 0
        if not from_start:
            last = await asyncio.to_thread(svc.store.last_audit_id, sandbox_id)
        while True:
            rows = await asyncio.to_thread(svc.store.audit_after, sandbox_id, last, 500)
            for row_id, event in rows:
                last = row_id
                yield ("audit", event)
            if not rows:
                rec = await asyncio.to_thread(svc.store.get_sandbox, sandbox_id)
                if rec is None or not rec.is_live:
                    return
                await asyncio.sleep(0.25)

    return sse(events())
