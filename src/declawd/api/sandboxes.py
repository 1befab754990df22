"""Sandbox lifecycle routes (declaw-api.md §2): create, connect, list, kill, timeout, metrics.

Create validates the whole request before anything is allocated (template, timeout,
network policy, unbuilt features → 4xx/501), and honours `Idempotency-Key` so the SDK's
retries never create a second sandbox.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from declawd.api.app import Team, current_team, services
from declawd.api.body import field, int_query, json_body, str_list, str_map
from declawd.egress.policy import EgressPolicy, PolicyError
from declawd.errors import ApiError, BadRequest, NotFound, NotImplementedYet
from declawd.node.node import LIVE, CreateRequest
from declawd.store import parse_metadata_query

router = APIRouter()

RUNTIME_KEY = "declaw.runtime"
UNBUILT_FEATURES = (
    "pii",
    "injection_defense",
    "toxicity",
    "code_security",
    "invisible_text",
    "content_gate",
    "custom_policy",
)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat()


def sandbox_view(rec: dict[str, Any]) -> dict[str, Any]:
    state = rec["state"] if rec["state"] in ("running", "creating") else "killed"
    return {
        "sandbox_id": rec["sandbox_id"],
        "template_id": rec["template_id"],
        "name": rec.get("template_alias") or "",
        "alias": rec.get("template_alias") or "",
        "metadata": rec.get("metadata") or {},
        "started_at": iso(rec.get("started_at") or rec.get("created_at")),
        "end_at": iso(rec.get("end_at")),
        "state": state,
        "cpu_count": rec.get("cpu_count"),
        "memory_mb": rec.get("memory_mb"),
        "runtime": rec.get("runtime"),
        "network": rec.get("network"),
    }


def parse_timeout(value: Any, settings: Any, label: str = "timeout") -> int:
    if value is None:
        return int(settings.default_timeout)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{label}: must be an integer number of seconds")
    if value < 0:
        raise BadRequest(f"{label}: must not be negative")
    if value == 0:
        return int(settings.default_timeout)
    if value > settings.max_timeout:
        raise BadRequest(f"{label}: at most {settings.max_timeout} seconds")
    return int(value)


def parse_policy(body: dict[str, Any]) -> tuple[EgressPolicy, dict[str, Any] | None]:
    """Top-level `network` wins; else the `network` inside security.policy_json (§11.3)."""
    security = field(body, "security", dict)
    sec_policy: dict[str, Any] | None = None
    if security is not None:
        raw = field(security, "policy_json", (str, dict), prefix="security.")
        if isinstance(raw, str):
            try:
                sec_policy = json.loads(raw) if raw.strip() else {}
            except ValueError as exc:
                raise BadRequest(f"security.policy_json: malformed JSON ({exc})") from exc
        else:
            sec_policy = raw
        if sec_policy is not None and not isinstance(sec_policy, dict):
            raise BadRequest("security.policy_json: must be a JSON object")
        if sec_policy:
            check_unbuilt_features(sec_policy)
    network = field(body, "network", dict)
    prefix = "network."
    if network is None and sec_policy and isinstance(sec_policy.get("network"), dict):
        network, prefix = sec_policy["network"], "security.policy_json.network."
    if network is None:
        return EgressPolicy.parse([], []), sec_policy
    return policy_from(network, prefix), sec_policy


def policy_from(network: dict[str, Any], prefix: str = "network.") -> EgressPolicy:
    if network.get("mask_request_host") is not None:
        raise NotImplementedYet(f"{prefix}mask_request_host: not implemented yet")
    field(network, "allow_public_traffic", bool, prefix=prefix)
    allow = str_list(network, "allow_out", prefix=prefix)
    deny = str_list(network, "deny_out", prefix=prefix)
    try:
        return EgressPolicy.parse(allow, deny)
    except PolicyError as exc:
        name = (
            exc.field
            if exc.field.startswith(prefix)
            else prefix + exc.field.removeprefix("network.")
        )
        raise BadRequest(f"{name}: {exc.message}") from exc


def check_unbuilt_features(policy: dict[str, Any]) -> None:
    for name in UNBUILT_FEATURES:
        value = policy.get(name)
        enabled = (
            value
            if isinstance(value, bool)
            else isinstance(value, dict) and bool(value.get("enabled"))
        )
        if enabled:
            raise NotImplementedYet(f"security.{name}: not implemented yet")
    if policy.get("transformations"):
        raise NotImplementedYet("security.transformations: not implemented yet")


async def _resolve_template(request: Request, team: Team, name: str) -> Any:
    svc = services(request)
    return await asyncio.to_thread(svc.templates.resolve, team.team_id, name)


@router.post("/sandboxes", status_code=201)
async def create_sandbox(request: Request, team: Team = Depends(current_team)) -> Any:
    svc = services(request)
    body = await json_body(request)
    template = field(body, "template", str, default="base") or "base"
    timeout = parse_timeout(body.get("timeout"), svc.settings)
    field(body, "secure", bool)
    metadata = str_map(body, "metadata")
    envs = str_map(body, "envs")
    if field(body, "vault_refs", dict):
        raise NotImplementedYet("vault_refs: not implemented yet")
    if field(body, "volumes", list):
        raise NotImplementedYet("volumes: not implemented yet")
    lifecycle = field(body, "lifecycle", dict)
    if lifecycle:
        on_timeout = field(lifecycle, "on_timeout", str, default="kill", prefix="lifecycle.")
        if on_timeout not in ("kill", "pause"):
            raise BadRequest("lifecycle.on_timeout: must be 'kill' or 'pause'")
        if on_timeout == "pause":
            raise NotImplementedYet("lifecycle.on_timeout: 'pause' is not implemented yet")
        if field(lifecycle, "auto_resume", bool, prefix="lifecycle."):
            raise NotImplementedYet("lifecycle.auto_resume: not implemented yet")
    policy, sec_policy = parse_policy(body)
    runtime = metadata.get(RUNTIME_KEY)
    if runtime is not None and runtime not in ("runc", "runsc"):
        raise BadRequest(f"metadata.{RUNTIME_KEY}: must be 'runc' or 'runsc'")
    tpl = await _resolve_template(request, team, template)

    idem_key = request.headers.get("idempotency-key")
    if idem_key:
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        state, existing = await asyncio.to_thread(
            svc.store.idempotency_begin, team.team_id, idem_key, digest
        )
        if state == "in_progress":
            return JSONResponse(
                {
                    "message": "a create with this Idempotency-Key is still running",
                    "code": "idempotency_in_progress",
                },
                status_code=409,
                headers={"Retry-After": "1"},
            )
        if state == "mismatch":
            raise ApiError(
                "Idempotency-Key: already used with different parameters",
                status=422,
                code="idempotency_key_reused",
            )
        if state == "done" and existing:
            done = await asyncio.to_thread(svc.store.get_sandbox, existing, team.team_id)
            if done is not None:
                return JSONResponse(sandbox_view(done), status_code=201)
    req = CreateRequest(
        team_id=team.team_id,
        template=tpl,
        timeout=timeout,
        metadata=metadata,
        envs=envs,
        policy=policy,
        security=sec_policy,
        runtime=runtime,
    )
    try:
        rec = await svc.node.create(req)
    except BaseException:
        if idem_key:
            await asyncio.to_thread(svc.store.idempotency_finish, team.team_id, idem_key, None)
        raise
    if idem_key:
        await asyncio.to_thread(
            svc.store.idempotency_finish, team.team_id, idem_key, rec["sandbox_id"]
        )
    return JSONResponse(sandbox_view(rec), status_code=201)


async def _team_sandbox(
    request: Request, team: Team, sandbox_id: str, *, live: bool = True
) -> dict[str, Any]:
    rec = await asyncio.to_thread(services(request).store.get_sandbox, sandbox_id, team.team_id)
    if rec is None or rec["state"] == "failed" or (live and rec["state"] not in LIVE):
        raise NotFound(f"sandbox '{sandbox_id}' not found")
    return rec


@router.get("/sandboxes")
async def list_sandboxes(request: Request, team: Team = Depends(current_team)) -> Any:
    svc = services(request)
    q = request.query_params
    states = q.getlist("state") or None
    valid = {"running", "creating", "killed", "paused", "live"}
    for s in states or []:
        if s not in valid:
            raise BadRequest(f"state: unknown state {s!r}")
    if states:
        wanted = set()
        for s in states:
            wanted |= {"running"} if s in ("running", "live") else {s}
        store_states = sorted(wanted - {"paused"})
    else:
        store_states = ["running", "creating"]
    metadata = parse_metadata_query(q["metadata"]) if q.get("metadata") else None
    limit = int_query(q.get("limit"), "limit", minimum=1, maximum=1000) or 50
    items, token = await asyncio.to_thread(
        svc.store.list_sandboxes,
        team.team_id,
        states=store_states,
        metadata=metadata,
        limit=limit,
        next_token=q.get("next_token") or None,
    )
    return {"sandboxes": [sandbox_view(r) for r in items], "next_token": token}


@router.post("/sandboxes/kill-many")
async def kill_many(request: Request, team: Team = Depends(current_team)) -> Any:
    svc = services(request)
    body = await json_body(request)
    ids = str_list(body, "sandbox_ids")
    wait = request.query_params.get("async", "").lower() not in ("true", "1")
    results: dict[str, Any] = {}
    for sid in ids:
        rec = await asyncio.to_thread(svc.store.get_sandbox, sid, team.team_id)
        if rec is None or rec["state"] not in LIVE:
            results[sid] = {"error": f"sandbox '{sid}' not found"}
            continue
        if wait:
            results[sid] = {"killed": await svc.node.kill(sid)}
        else:
            svc.node.spawn(svc.node.kill(sid))
            results[sid] = {"queued": True}
    return {"results": results}


@router.get("/sandboxes/{sandbox_id}")
async def get_sandbox(sandbox_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    svc = services(request)
    rec = await _team_sandbox(request, team, sandbox_id)
    timeout = request.query_params.get("timeout")
    if timeout is not None:
        seconds = int_query(timeout, "timeout", minimum=0, maximum=svc.settings.max_timeout)
        if seconds:
            rec["end_at"] = time.time() + seconds
            await asyncio.to_thread(svc.store.update_sandbox, sandbox_id, end_at=rec["end_at"])
    return sandbox_view(rec)


@router.delete("/sandboxes/{sandbox_id}")
async def kill_sandbox(
    sandbox_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    svc = services(request)
    await _team_sandbox(request, team, sandbox_id)
    if request.query_params.get("async", "").lower() in ("true", "1"):
        svc.node.spawn(svc.node.kill(sandbox_id))
        return JSONResponse({"queued": True}, status_code=202)
    return {"killed": await svc.node.kill(sandbox_id)}


@router.get("/sandboxes/{sandbox_id}/status")
async def sandbox_status(
    sandbox_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    svc = services(request)
    rec = await _team_sandbox(request, team, sandbox_id, live=False)
    running = rec["state"] == "running"
    if running:
        state = await svc.node.runtimes[rec.get("runtime") or "runc"].state(sandbox_id)
        running = state == "running"
    return {"is_running": running, "state": rec["state"] if rec["state"] in LIVE else "killed"}


@router.patch("/sandboxes/{sandbox_id}/timeout")
async def set_timeout(sandbox_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    svc = services(request)
    await _team_sandbox(request, team, sandbox_id)
    body = await json_body(request)
    if "timeout" not in body:
        raise BadRequest("timeout: is required")
    seconds = parse_timeout(body["timeout"], svc.settings)
    end_at = time.time() + seconds
    await asyncio.to_thread(svc.store.update_sandbox, sandbox_id, end_at=end_at)
    return {"ok": True, "end_at": iso(end_at)}


@router.get("/sandboxes/{sandbox_id}/metrics")
async def sandbox_metrics(
    sandbox_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    svc = services(request)
    rec = await _team_sandbox(request, team, sandbox_id)
    m = await asyncio.to_thread(svc.node.metrics, rec)
    return [{"timestamp": datetime.now(UTC).isoformat(), **m}]
