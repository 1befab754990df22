"""Volume routes (declaw-api.md §9, §12.5): the SDK's `Volumes`, `VolumeFiles`, `VolumeLocks`.

Thin: parse the query and body (400s name the field), call the volumes package, shape the
answer as the SDK's `Volume` and `FileEntry` parse it. Every volume is the caller's team's
(another team's is a plain 404) and `file-granular`, so the files and locks routes work on
all of them. Snapshot and commit reach the sandbox only through its envd.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from declawd.api.access import envd_errors
from declawd.api.app import Team, current_team, services
from declawd.api.body import json_body
from declawd.api.views import iso
from declawd.errors import InvalidInput
from declawd.node.node import Need
from declawd.store.volumes import Lease, VolumeRecord
from declawd.volumes import BACKEND, FileInfo, VolumeFiles, VolumeService, capture
from declawd.volumes.archives import ArchiveReport
from declawd.volumes.service import CONTENT_TYPE, volume_name

router = APIRouter()


def volume_service(request: Request) -> VolumeService:
    """The server's one VolumeService (made on first use; its start runs on first call)."""
    state = request.app.state
    svc: VolumeService | None = getattr(state, "volumes", None)
    if svc is None:
        base = services(request)
        svc = VolumeService(base.settings, base.store)
        state.volumes = svc
    return svc


def _files(request: Request) -> VolumeFiles:
    return VolumeFiles(volume_service(request))


# Views --------------------------------------------------------------------------------
def volume_view(
    svc: VolumeService, rec: VolumeRecord, report: ArchiveReport | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "volume_id": rec.volume_id,
        "owner_id": rec.team_id,
        "name": rec.name,
        "blob_key": "",  # file-granular: no single blob behind the volume
        "size_bytes": rec.size_bytes,
        "content_type": CONTENT_TYPE,
        "created_at": iso(rec.created_at),
        "updated_at": iso(rec.updated_at),
        "metadata": dict(rec.metadata),
        "backend": BACKEND,
        "quota_bytes": svc.quota_bytes,
    }
    if report is not None:
        # Not in the SDK's Volume (it ignores them): what the archive filter kept and dropped.
        out["files"] = report.files
        out["dropped_entries"] = report.dropped_total
        out["dropped"] = dict(report.dropped)
    return out


def entry_view(f: FileInfo) -> dict[str, Any]:
    return {
        "name": f.name,
        "path": f.path,
        "is_dir": f.stat.is_dir,
        "size": f.stat.size,
        "mod_time": datetime.fromtimestamp(f.stat.mtime_ns / 1e9, UTC).isoformat(),
        "mode": f.stat.mode,
        "version": str(f.version),
    }


def lease_view(path: str, lease: Lease, ttl_s: float) -> dict[str, Any]:
    return {
        "path": path,
        "token": lease.token,
        "ttl_seconds": int(ttl_s) if float(ttl_s).is_integer() else ttl_s,
        "expires_at": iso(lease.expires_at),
    }


# Request helpers ----------------------------------------------------------------------
def _declared(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    return int(raw) if raw and raw.isdigit() else None


def _body(request: Request) -> AsyncIterator[bytes] | None:
    """The request body as a stream, or None when the request says it has none."""
    if _declared(request) == 0 or (
        "content-length" not in request.headers and "transfer-encoding" not in request.headers
    ):
        return None
    return request.stream()


def _flag(value: str | None, label: str) -> bool:
    if value in (None, "", "false", "0"):
        return False
    if value in ("true", "1"):
        return True
    raise InvalidInput(label, "must be true or false")


def _name(request: Request, default: str | None = None) -> str | None:
    raw = request.query_params.get("name")
    if raw is None or raw == "":
        return default
    return volume_name(raw)


# Volumes ------------------------------------------------------------------------------
async def _create(request: Request, team: Team, *, require_archive: bool) -> Any:
    svc = volume_service(request)
    rec, report = await svc.create(
        team.team_id,
        request.query_params.get("name") or "",
        _body(request),
        declared=_declared(request),
        require_archive=require_archive,
    )
    return volume_view(svc, rec, report)


@router.post("/volumes", status_code=201)
async def create_volume(request: Request, team: Team = Depends(current_team)) -> Any:
    return await _create(request, team, require_archive=False)


@router.post("/volumes/empty", status_code=201)
async def create_empty(request: Request, team: Team = Depends(current_team)) -> Any:
    svc = volume_service(request)
    rec, _ = await svc.create(team.team_id, request.query_params.get("name") or "", None)
    return volume_view(svc, rec)


@router.post("/volumes/ingest", status_code=201)
async def ingest(request: Request, team: Team = Depends(current_team)) -> Any:
    return await _create(request, team, require_archive=True)


@router.get("/volumes")
async def list_volumes(request: Request, team: Team = Depends(current_team)) -> Any:
    svc = volume_service(request)
    return {"volumes": [volume_view(svc, r) for r in await svc.list(team.team_id)]}


@router.get("/volumes/{volume_id}")
async def get_volume(volume_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    svc = volume_service(request)
    return volume_view(svc, await svc.get(team.team_id, volume_id))


@router.delete("/volumes/{volume_id}")
async def delete_volume(
    volume_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    await volume_service(request).delete(team.team_id, volume_id)
    return {"deleted": True, "volume_id": volume_id}


@router.get("/volumes/{volume_id}/download")
async def download(volume_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    chunks = await volume_service(request).download(team.team_id, volume_id)
    return StreamingResponse(
        chunks,
        media_type=CONTENT_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{volume_id}.tar.gz"'},
    )


# Files --------------------------------------------------------------------------------
@router.put("/volumes/{volume_id}/files/raw")
async def write_file(volume_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    q = request.query_params
    info = await _files(request).write(
        team.team_id,
        volume_id,
        q.get("path"),
        request.stream(),
        if_version=q.get("if_version"),
        declared=_declared(request),
    )
    return {"path": info.path, "size": info.stat.size, "version": str(info.version)}


@router.get("/volumes/{volume_id}/files/raw")
async def read_file(volume_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    info, chunks = await _files(request).read(
        team.team_id, volume_id, request.query_params.get("path")
    )
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={"ETag": f'"{info.version}"', "X-Declawd-Version": str(info.version)},
    )


@router.get("/volumes/{volume_id}/files/list")
async def list_files(volume_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    found = await _files(request).list(team.team_id, volume_id, request.query_params.get("path"))
    return {"entries": [entry_view(f) for f in found]}


@router.get("/volumes/{volume_id}/files/info")
async def file_info(volume_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    info = await _files(request).info(team.team_id, volume_id, request.query_params.get("path"))
    return entry_view(info)


@router.get("/volumes/{volume_id}/files/exists")
async def file_exists(volume_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    found = await _files(request).exists(team.team_id, volume_id, request.query_params.get("path"))
    return {"exists": found}


@router.delete("/volumes/{volume_id}/files")
async def remove_file(volume_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    q = request.query_params
    recursive = _flag(q.get("recursive"), "recursive")
    await _files(request).remove(team.team_id, volume_id, q.get("path"), recursive=recursive)
    return {"removed": True}


@router.patch("/volumes/{volume_id}/files")
async def rename_file(volume_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    body = await json_body(request)
    old, new = body.get("old_path"), body.get("new_path")
    for label, value in (("old_path", old), ("new_path", new)):
        if not isinstance(value, str):
            raise InvalidInput(label, "is required")
    info = await _files(request).rename(team.team_id, volume_id, old, new)
    return {"old_path": old, "new_path": info.path, "version": str(info.version)}


@router.post("/volumes/{volume_id}/files/mkdir")
async def make_dir(volume_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    body = await json_body(request)
    raw = body.get("path")
    if not isinstance(raw, str):
        raise InvalidInput("path", "is required")
    return {"path": await _files(request).mkdir(team.team_id, volume_id, raw)}


# Locks --------------------------------------------------------------------------------
@router.post("/volumes/{volume_id}/locks")
async def acquire_lock(volume_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    body = await json_body(request)
    files = _files(request)
    ttl = files.ttl(body.get("ttl_seconds"))
    path, lease = await files.acquire(team.team_id, volume_id, body.get("path"), ttl)
    return lease_view(path, lease, ttl)


@router.post("/volumes/{volume_id}/locks/renew")
async def renew_lock(volume_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    body = await json_body(request)
    files = _files(request)
    ttl = files.ttl(body.get("ttl_seconds"))
    path, lease = await files.renew(
        team.team_id, volume_id, body.get("path"), body.get("token"), ttl
    )
    return lease_view(path, lease, ttl)


@router.delete("/volumes/{volume_id}/locks")
async def release_lock(volume_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    body = await json_body(request)
    await _files(request).release(team.team_id, volume_id, body.get("path"), body.get("token"))
    return {"released": True}


@router.get("/volumes/{volume_id}/locks")
async def lock_status(volume_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    lease = await _files(request).status(team.team_id, volume_id, request.query_params.get("path"))
    if lease is None:
        return {"held": False, "expires_in_ms": 0}
    left_ms = max(0, int((lease.expires_at - datetime.now(UTC).timestamp()) * 1000))
    return {"held": True, "expires_in_ms": left_ms, "expires_at": iso(lease.expires_at)}


# From a sandbox -----------------------------------------------------------------------
@router.post("/sandboxes/{sandbox_id}/volumes/snapshot", status_code=201)
async def snapshot_path(
    sandbox_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    node = services(request).node
    rec = await node.lookup(team.team_id, sandbox_id, Need.RUNNING)
    svc = volume_service(request)
    with envd_errors(request.query_params.get("path") or ""):
        vol, report = await capture.snapshot(
            svc, team.team_id, node.envd(rec), request.query_params.get("path"), _name(request)
        )
    return volume_view(svc, vol, report)


@router.post("/sandboxes/{sandbox_id}/volumes/{volume_id}/commit", status_code=201)
async def commit_volume(
    sandbox_id: str, volume_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    node = services(request).node
    rec = await node.lookup(team.team_id, sandbox_id, Need.RUNNING)
    svc = volume_service(request)
    with envd_errors(volume_id):
        vol, report = await capture.commit(
            svc, team.team_id, sandbox_id, node.envd(rec), volume_id, _name(request)
        )
    return volume_view(svc, vol, report)
