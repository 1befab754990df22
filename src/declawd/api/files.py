"""Filesystem routes (declaw-api.md §4), performed by envd inside the sandbox as the user.

The server never touches a sandbox path on the host: every read, write and listing is done
by the in-sandbox agent with the requested user's identity, so symlinks and `..` resolve
inside the sandbox's own root and the kernel enforces permissions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from declawd.api.access import envd_errors, sandbox_client, sse
from declawd.api.activity import file_event
from declawd.api.app import Team, current_team
from declawd.api.body import abs_path, field, int_query, json_body
from declawd.errors import InvalidInput, TooLarge

router = APIRouter()

MAX_UPLOAD = 500 * 2**20


def _user(value: Any, label: str = "username") -> str:
    if value is None or value == "":
        return "user"
    if not isinstance(value, str):
        raise InvalidInput(label, "must be a string")
    return value


def entry_view(e: Any) -> dict[str, Any]:
    out = {
        "name": e.name,
        "path": e.path,
        "type": "dir" if e.type == "dir" else "file",
        "size": e.size,
    }
    if getattr(e, "mode", None) is not None:
        out["mode"] = e.mode
    if getattr(e, "mtime", None) is not None:
        out["mtime"] = e.mtime
    if getattr(e, "symlink_target", None):
        out["symlink_target"] = e.symlink_target
    return out


def _q(request: Request) -> tuple[str, str]:
    q = request.query_params
    return abs_path(q.get("path"), "path"), _user(q.get("username"))


@router.get("/sandboxes/{sandbox_id}/files")
@router.get("/sandboxes/{sandbox_id}/files/raw")
async def read_file(sandbox_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    _, client = await sandbox_client(request, team, sandbox_id)
    path, user = _q(request)
    with envd_errors(path):
        entry = await client.stat(path, user)
    if entry.type == "dir":
        raise InvalidInput("path", f"is a directory: {path}", code="is_directory")
    stream = client.read_file_stream(path, user)
    with envd_errors(path):
        first = await anext(stream, b"")

    async def body() -> AsyncIterator[bytes]:
        if first:
            yield first
        async for chunk in stream:
            yield chunk

    # No Content-Length from the earlier stat: a file that grows (or shrinks) between the
    # stat and the read would break the response mid-body. Chunked encoding sends what is read.
    return StreamingResponse(body(), media_type="application/octet-stream")


@router.post("/sandboxes/{sandbox_id}/files")
async def write_text(sandbox_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    rec, client = await sandbox_client(request, team, sandbox_id)
    body = await json_body(request)
    path = abs_path(body.get("path"), "path")
    user = _user(body.get("username"))
    data = field(body, "data", str, default="")
    with envd_errors(path):
        size = await client.write_file(path, data.encode(), user)
    await file_event(request, rec, "write", path, size, user=user)
    return {"path": path, "size": size}


@router.put("/sandboxes/{sandbox_id}/files/raw")
async def write_raw(sandbox_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    rec, client = await sandbox_client(request, team, sandbox_id)
    path, user = _q(request)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_UPLOAD:
        raise TooLarge(f"body: larger than the upload limit of {MAX_UPLOAD} bytes")

    async def chunks() -> AsyncIterator[bytes]:
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > MAX_UPLOAD:
                raise TooLarge(f"body: larger than the upload limit of {MAX_UPLOAD} bytes")
            if chunk:
                yield chunk

    with envd_errors(path):
        size = await client.write_file(path, chunks(), user)
    await file_event(request, rec, "write", path, size, user=user)
    return {"path": path, "size": size}


@router.post("/sandboxes/{sandbox_id}/files/batch")
async def write_batch(sandbox_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    rec, client = await sandbox_client(request, team, sandbox_id)
    body = await json_body(request)
    user = _user(body.get("username"))
    files = field(body, "files", list, required=True)
    parsed = []
    for i, item in enumerate(files):
        if not isinstance(item, dict):
            raise InvalidInput(f"files[{i}]", "must be an object")
        parsed.append(
            (
                abs_path(item.get("path"), f"files[{i}].path"),
                field(item, "data", str, default="", prefix=f"files[{i}]."),
            )
        )
    out = []
    for path, data in parsed:
        with envd_errors(path):
            size = await client.write_file(path, data.encode(), user)
        await file_event(request, rec, "write", path, size, user=user)
        out.append({"path": path, "size": size})
    return out


@router.get("/sandboxes/{sandbox_id}/files/list")
async def list_dir(sandbox_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    _, client = await sandbox_client(request, team, sandbox_id)
    path, user = _q(request)
    depth = int_query(request.query_params.get("depth"), "depth", minimum=1, maximum=100) or 1
    with envd_errors(path):
        entries = await client.list_dir(path, user, depth)
    return [entry_view(e) for e in entries]


@router.get("/sandboxes/{sandbox_id}/files/exists")
async def exists(sandbox_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    _, client = await sandbox_client(request, team, sandbox_id)
    path, user = _q(request)
    with envd_errors(path):
        return {"exists": await client.exists(path, user)}


@router.get("/sandboxes/{sandbox_id}/files/info")
async def info(sandbox_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    _, client = await sandbox_client(request, team, sandbox_id)
    path, user = _q(request)
    with envd_errors(path):
        return entry_view(await client.stat(path, user))


@router.delete("/sandboxes/{sandbox_id}/files")
async def remove(sandbox_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    rec, client = await sandbox_client(request, team, sandbox_id)
    path, user = _q(request)
    with envd_errors(path):
        await client.remove(path, user)
    await file_event(request, rec, "remove", path, user=user)
    return {"ok": True}


@router.patch("/sandboxes/{sandbox_id}/files")
async def rename(sandbox_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    rec, client = await sandbox_client(request, team, sandbox_id)
    body = await json_body(request)
    old = abs_path(body.get("old_path"), "old_path")
    new = abs_path(body.get("new_path"), "new_path")
    user = _user(body.get("username"))
    with envd_errors(old):
        entry = await client.rename(old, new, user)
    await file_event(request, rec, "rename", old, new_path=new, user=user)
    return entry_view(entry)


@router.post("/sandboxes/{sandbox_id}/files/mkdir")
async def mkdir(sandbox_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    rec, client = await sandbox_client(request, team, sandbox_id)
    body = await json_body(request)
    path = abs_path(body.get("path"), "path")
    user = _user(body.get("username"))
    with envd_errors(path):
        created = await client.make_dir(path, user)
    if created:
        await file_event(request, rec, "mkdir", path, user=user)
    return {"created": created}


@router.post("/sandboxes/{sandbox_id}/files/watch")
async def watch(sandbox_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    _, client = await sandbox_client(request, team, sandbox_id)
    body = await json_body(request)
    path = abs_path(body.get("path"), "path")
    user = _user(body.get("username"))
    recursive = field(body, "recursive", bool, default=False)
    with envd_errors(path):
        return {"watch_id": await client.watch(path, user, recursive)}


@router.get("/sandboxes/{sandbox_id}/files/watch/{watch_id}/events")
async def watch_events(
    sandbox_id: str, watch_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    _, client = await sandbox_client(request, team, sandbox_id)

    async def events() -> AsyncIterator[tuple[str | None, dict[str, Any]]]:
        async for ev in client.watch_events(watch_id):
            yield ("event", ev)

    return sse(events())


@router.delete("/sandboxes/{sandbox_id}/files/watch/{watch_id}")
async def unwatch(
    sandbox_id: str, watch_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    _, client = await sandbox_client(request, team, sandbox_id)
    with envd_errors(watch_id):
        await client.unwatch(watch_id)
    return {"ok": True}
