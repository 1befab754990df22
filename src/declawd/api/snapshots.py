"""Snapshot routes (declaw-api.md §2.1, §12.4): take, list, page through and delete snapshots.

One answer shape satisfies both the SDK's `Snapshot` and `SnapshotInfo`. Snapshots outlive
their sandbox, so listing and deleting find the sandbox with `Need.RECORD` (a killed one
too); every lookup is team-scoped, so another team's sandbox or snapshot is a plain 404
(delete: nothing of that id to delete).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request

from declawd.api.app import Team, current_team, services
from declawd.api.body import int_query, json_body
from declawd.api.views import iso
from declawd.node.node import Need
from declawd.store.snapshots import MAX_LIST_LIMIT, SnapshotRecord

router = APIRouter()

DEFAULT_PAGE = 50


def snapshot_view(snap: SnapshotRecord) -> dict[str, Any]:
    """The wire form: `Snapshot.from_dict` and `SnapshotInfo.from_dict` both parse it.

    No memory is captured on this node: the blob keys are empty and `mem_size_bytes` is
    null (not 0, which would claim an empty memory image)."""
    return {
        "snapshot_id": snap.snapshot_id,
        "sandbox_id": snap.sandbox_id,
        "source": snap.source.value,
        "mem_blob_key": "",
        "vmstate_blob_key": "",
        "mem_size_bytes": snap.mem_bytes,
        "pause_duration_ms": snap.pause_duration_ms,
        "created_at": iso(snap.created_at),
        "template_id": snap.template_id,
        "fs_size_bytes": snap.fs_bytes,
    }


@router.post("/sandboxes/{sandbox_id}/snapshot", status_code=201)
async def take_snapshot(
    sandbox_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    # `create_snapshot()` sends no body and `snapshot()` sends {}; neither has options.
    await json_body(request, allow_empty=True)
    node = services(request).node
    rec = await node.lookup(team.team_id, sandbox_id, Need.LIVE)
    return snapshot_view(await node.snapshot(rec))


@router.get("/sandboxes/{sandbox_id}/snapshots")
async def list_sandbox_snapshots(
    sandbox_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    svc = services(request)
    rec = await svc.node.lookup(team.team_id, sandbox_id, Need.RECORD)
    snaps = await asyncio.to_thread(svc.store.list_sandbox_snapshots, rec.team_id, rec.sandbox_id)
    return {"snapshots": [snapshot_view(s) for s in snaps]}


@router.delete("/sandboxes/{sandbox_id}/snapshots/{snapshot_id}")
async def delete_snapshot(
    sandbox_id: str, snapshot_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    node = services(request).node
    rec = await node.lookup(team.team_id, sandbox_id, Need.RECORD)
    return {"deleted": await node.delete_snapshot(rec, snapshot_id)}


@router.get("/snapshots")
async def list_snapshots(request: Request, team: Team = Depends(current_team)) -> Any:
    svc = services(request)
    q = request.query_params
    limit = int_query(q.get("limit"), "limit", minimum=1, maximum=MAX_LIST_LIMIT)
    page, token = await asyncio.to_thread(
        svc.store.list_snapshots,
        team.team_id,
        sandbox_id=q.get("sandbox_id") or None,
        limit=limit or DEFAULT_PAGE,
        next_token=q.get("next_token") or None,
    )
    return {"snapshots": [snapshot_view(s) for s in page], "next_token": token}
