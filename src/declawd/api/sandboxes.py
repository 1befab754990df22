"""Sandbox lifecycle routes (declaw-api.md §2): create, connect, list, kill, timeout, metrics.

Create validates the whole request before anything is allocated (template, timeout,
network and security policy, vault refs, unbuilt features → 4xx/501), and honours
`Idempotency-Key` so the SDK's retries never create a second sandbox. The network options
of the ports route (`allow_public_traffic`, `mask_request_host`) are recorded under the
sandbox's id before it is created, and create and connect answer its
`traffic_access_token` (docs/ports.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from declawd.api.app import Team, current_team, services
from declawd.api.body import field, int_query, json_body, str_list, str_map
from declawd.api.views import iso, sandbox_view
from declawd.api.volumes import volume_service
from declawd.egress.policy import EgressPolicy, PolicyError
from declawd.errors import (
    Busy,
    Conflict,
    DeclawdError,
    InvalidInput,
    Mismatch,
    NotFound,
)
from declawd.inspect.model import PLACEHOLDER, VaultBinding
from declawd.inspect.policy import SecuritySpec, parse_security
from declawd.node.create import CreateRequest
from declawd.node.metrics import parse_range, series
from declawd.node.node import Need
from declawd.node.pausing import AUTO_RESUME_MIN_S
from declawd.ports.headers import validate_mask
from declawd.store import SandboxState, TrafficAccess, parse_metadata_query
from declawd.vault import resolve_vault_refs
from declawd.volumes.attach import (
    Attachment,
    attachment_mounts,
    record_attachments,
    resolve_attachments,
)

router = APIRouter()

RUNTIME_KEY = "declaw.runtime"


def parse_timeout(value: Any, settings: Any, label: str = "timeout") -> int:
    if value is None:
        return int(settings.default_timeout)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(label, "must be an integer number of seconds")
    if value < 0:
        raise InvalidInput(label, "must not be negative")
    if value == 0:
        return int(settings.default_timeout)
    if value > settings.max_timeout:
        raise InvalidInput(label, f"at most {settings.max_timeout} seconds")
    return int(value)


def parse_lifecycle(body: dict[str, Any]) -> dict[str, Any]:
    """`{"on_timeout": "kill"|"pause", "auto_resume": bool}` (SandboxLifecycle.to_dict)."""
    lifecycle = field(body, "lifecycle", dict)
    if not lifecycle:
        return {}
    on_timeout = field(lifecycle, "on_timeout", str, default="kill", prefix="lifecycle.")
    if on_timeout not in ("kill", "pause"):
        raise InvalidInput("lifecycle.on_timeout", "must be 'kill' or 'pause'")
    auto_resume = field(lifecycle, "auto_resume", bool, default=False, prefix="lifecycle.")
    return {"on_timeout": on_timeout, "auto_resume": auto_resume}


@dataclass(frozen=True)
class TrafficOptions:
    """The create's network options for the ports route (SandboxNetworkOpts)."""

    allow_public_traffic: bool = True
    mask_request_host: str | None = None


def parse_traffic(network: dict[str, Any], prefix: str = "network.") -> TrafficOptions:
    allow = field(network, "allow_public_traffic", bool, default=True, prefix=prefix)
    mask = network.get("mask_request_host")
    if mask is not None:
        mask = validate_mask(mask, prefix + "mask_request_host")
    return TrafficOptions(allow, mask)


def parse_policy(body: dict[str, Any]) -> tuple[EgressPolicy, SecuritySpec | None]:
    """Top-level `network` wins; else the `network` inside security.policy_json (§11.3).
    The security policy is validated whole (parse_security); None when none was sent."""
    policy, spec, _ = parse_create_network(body)
    return policy, spec


def parse_create_network(
    body: dict[str, Any],
) -> tuple[EgressPolicy, SecuritySpec | None, TrafficOptions]:
    """`parse_policy`, plus the ports options of the same `network` section."""
    security = field(body, "security", dict)
    spec: SecuritySpec | None = None
    if security is not None:
        raw = field(security, "policy_json", (str, dict), prefix="security.")
        sec_policy: Any = raw
        if isinstance(raw, str):
            try:
                sec_policy = json.loads(raw) if raw.strip() else {}
            except ValueError as exc:
                raise InvalidInput("security.policy_json", f"malformed JSON ({exc})") from exc
        if sec_policy is not None and not isinstance(sec_policy, dict):
            raise InvalidInput("security.policy_json", "must be a JSON object")
        if sec_policy is not None:
            spec = parse_security(sec_policy, "security.policy_json")
    network = field(body, "network", dict)
    prefix = "network."
    if network is None and spec is not None and spec.network is not None:
        network, prefix = dict(spec.network), "security.policy_json.network."
    if network is None:
        return EgressPolicy.parse([], []), spec, TrafficOptions()
    traffic = parse_traffic(network, prefix)
    egress = {k: v for k, v in network.items() if k != "mask_request_host"}
    return policy_from(egress, prefix), spec, traffic


async def parse_vault_refs(
    request: Request, team: Team, body: dict[str, Any], envs: dict[str, str]
) -> tuple[VaultBinding, ...]:
    """`vault_refs: {"ENV": "vault://<team>/<env>/<name>"}` resolved to the team's secrets;
    each ENV then holds the placeholder inside the sandbox (declaw-api.md §12.2)."""
    refs = field(body, "vault_refs", dict)
    if not refs:
        return ()
    for env in refs:
        if env in envs:
            raise InvalidInput(f"vault_refs.{env}", "also set in envs")
    store = services(request).store
    bindings: tuple[VaultBinding, ...] = await asyncio.to_thread(
        resolve_vault_refs, store, team.team_id, refs
    )
    envs.update({b.env: PLACEHOLDER for b in bindings})
    return bindings


async def change_traffic(
    request: Request, sandbox_id: str, network: dict[str, Any], prefix: str
) -> None:
    """A live `network` section's ports options (`allow_public_traffic`,
    `mask_request_host`: null clears it), applied when the section carries them."""
    if "allow_public_traffic" not in network and "mask_request_host" not in network:
        return
    allow = field(network, "allow_public_traffic", bool, prefix=prefix)
    mask = network.get("mask_request_host")
    if mask is not None:
        mask = validate_mask(mask, prefix + "mask_request_host")
    await asyncio.to_thread(
        services(request).store.change_traffic,
        sandbox_id,
        allow_public_traffic=allow,
        mask_request_host=mask,
        clear_mask="mask_request_host" in network and mask is None,
    )


def policy_from(network: dict[str, Any], prefix: str = "network.") -> EgressPolicy:
    """The egress policy of a `network` section (its ports options are validated here and
    applied by `change_traffic` or the create)."""
    field(network, "allow_public_traffic", bool, prefix=prefix)
    if network.get("mask_request_host") is not None:
        validate_mask(network["mask_request_host"], prefix + "mask_request_host")
    network = {k: v for k, v in network.items() if k != "mask_request_host"}
    allow = str_list(network, "allow_out", prefix=prefix)
    deny = str_list(network, "deny_out", prefix=prefix)
    try:
        return EgressPolicy.parse(allow, deny)
    except PolicyError as exc:
        # The parser names fields as they sit in a create body (`network.allow_out[0]`);
        # say where they sit in this request instead.
        raise exc.renamed(prefix + exc.field.removeprefix("network.")) from exc


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
    lifecycle = parse_lifecycle(body)
    policy, spec, traffic = parse_create_network(body)
    runtime = metadata.get(RUNTIME_KEY)
    if runtime is not None and runtime not in ("runc", "runsc"):
        raise InvalidInput(f"metadata.{RUNTIME_KEY}", "must be 'runc' or 'runsc'")
    tpl = await _resolve_template(request, team, template)
    vault = await parse_vault_refs(request, team, body, envs)
    attachments: list[Attachment] = []
    if field(body, "volumes", list):
        volumes = volume_service(request)
        await volumes.start()
        attachments = await resolve_attachments(volumes, team.team_id, body["volumes"])

    idem_key = request.headers.get("idempotency-key")
    if idem_key:
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        state, existing = await asyncio.to_thread(
            svc.store.idempotency_begin, team.team_id, idem_key, digest
        )
        if state == "in_progress":
            raise Busy(
                "a create with this Idempotency-Key is still running",
                code="idempotency_in_progress",
            )
        if state == "mismatch":
            raise Mismatch(
                "Idempotency-Key: already used with different parameters",
                code="idempotency_key_reused",
            )
        if state == "done" and existing:
            done = await asyncio.to_thread(svc.store.get_sandbox, existing, team.team_id)
            if done is not None:
                earlier = await asyncio.to_thread(svc.store.ensure_traffic, existing)
                return JSONResponse(sandbox_view(done, earlier, with_token=True), status_code=201)
    # The node chooses the id (a new one, or a warm pool's sandbox); the ports options and
    # the attachments are recorded under it before the sandbox is the team's.
    chosen: list[str] = []
    access: TrafficAccess | None = None

    async def prepare(sandbox_id: str) -> None:
        nonlocal access
        chosen.append(sandbox_id)
        access = await asyncio.to_thread(
            svc.store.set_traffic,
            sandbox_id,
            allow_public_traffic=traffic.allow_public_traffic,
            mask_request_host=traffic.mask_request_host,
        )
        if attachments:
            # Recorded before the container mounts them, so a delete of a volume that races
            # this create is refused (a failed create's record is released: no longer counts).
            await record_attachments(volume_service(request), sandbox_id, attachments)

    req = CreateRequest(
        team_id=team.team_id,
        template=tpl,
        timeout=timeout,
        metadata=metadata,
        envs=envs,
        policy=policy,
        security=spec.to_dict() if spec is not None else None,
        runtime=runtime,
        lifecycle=lifecycle,
        mounts=attachment_mounts(attachments),
        copies=[a for a in attachments if not a.live],
        vault=vault,
        prepare=prepare,
    )
    try:
        rec = await svc.node.create(req)
    except BaseException:
        for sandbox_id in chosen:
            await asyncio.to_thread(svc.store.delete_traffic, sandbox_id)
        if idem_key:
            await asyncio.to_thread(svc.store.idempotency_finish, team.team_id, idem_key, None)
        raise
    if idem_key:
        await asyncio.to_thread(
            svc.store.idempotency_finish, team.team_id, idem_key, rec.sandbox_id
        )
    return JSONResponse(sandbox_view(rec, access, with_token=True), status_code=201)


_LIST_STATES = {
    "live": (SandboxState.CREATING, SandboxState.RUNNING, SandboxState.PAUSED),
    "running": (SandboxState.RUNNING,),
    "creating": (SandboxState.CREATING,),
    "paused": (SandboxState.PAUSED,),
    "killed": (SandboxState.KILLED,),
}


@router.get("/sandboxes")
async def list_sandboxes(request: Request, team: Team = Depends(current_team)) -> Any:
    svc = services(request)
    q = request.query_params
    states: set[SandboxState] = set()
    for s in q.getlist("state"):
        if s not in _LIST_STATES:
            raise InvalidInput("state", f"unknown state {s!r}")
        states.update(_LIST_STATES[s])
    metadata = parse_metadata_query(q["metadata"]) if q.get("metadata") else None
    limit = int_query(q.get("limit"), "limit", minimum=1, maximum=1000) or 50
    items, token = await asyncio.to_thread(
        svc.store.list_sandboxes,
        team.team_id,
        states=sorted(states) if states else None,
        metadata=metadata,
        limit=limit,
        next_token=q.get("next_token") or None,
    )
    # The ports options (and the token) are in GET/connect answers, not in each list entry.
    return {"sandboxes": [sandbox_view(r) for r in items], "next_token": token}


def _wait(request: Request) -> bool:
    return request.query_params.get("async", "").lower() not in ("true", "1")


@router.post("/sandboxes/kill-many")
async def kill_many(request: Request, team: Team = Depends(current_team)) -> Any:
    node = services(request).node
    body = await json_body(request)
    ids = str_list(body, "sandbox_ids")
    wait = _wait(request)
    results: dict[str, Any] = {}
    for sid in ids:
        try:
            await node.lookup(team.team_id, sid, Need.LIVE)
        except DeclawdError as exc:
            results[sid] = {"error": exc.message}
            continue
        killed = await node.kill(sid, wait=wait)
        results[sid] = {"killed": killed} if wait else {"queued": killed}
    return {"results": results}


@router.get("/sandboxes/{sandbox_id}")
async def get_sandbox(sandbox_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    svc = services(request)
    rec = await svc.node.lookup(team.team_id, sandbox_id, Need.LIVE)
    timeout = request.query_params.get("timeout")
    seconds = None
    if timeout is not None:
        seconds = int_query(timeout, "timeout", minimum=0, maximum=svc.settings.max_timeout)
    # `connect(id, timeout)` sends a timeout and means to use the sandbox: a paused one is
    # resumed, as is one created with auto_resume on any connect. A plain GET (`get_info`,
    # which the SDK cannot tell apart from `connect(id)`) never changes its state otherwise.
    if rec.state is SandboxState.PAUSED and (timeout is not None or rec.auto_resume):
        rec = await svc.node.resume(rec, at_least_s=AUTO_RESUME_MIN_S if rec.auto_resume else 0)
    if seconds:
        rec = rec.replace(end_at=await svc.node.set_timeout(rec, seconds))
    access = await asyncio.to_thread(svc.store.ensure_traffic, sandbox_id)
    return sandbox_view(rec, access, with_token=True)


@router.post("/sandboxes/{sandbox_id}/pause")
async def pause_sandbox(
    sandbox_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    node = services(request).node
    rec = await node.lookup(team.team_id, sandbox_id, Need.LIVE)
    rec = await node.pause(rec)
    return {"sandbox_id": sandbox_id, "state": rec.state.value}


@router.post("/sandboxes/{sandbox_id}/restore")
async def restore_sandbox(
    sandbox_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    """Bring a killed sandbox back under its id (the SDK connects to the same id next)."""
    svc = services(request)
    rec = await svc.node.lookup(team.team_id, sandbox_id, Need.RECORD)
    if rec.is_live:
        raise Conflict(
            f"sandbox '{sandbox_id}' is {rec.state.value}; restore needs a killed sandbox"
        )
    wanted = request.query_params.get("snapshot_id")
    if wanted:
        snap = await asyncio.to_thread(svc.store.get_snapshot, wanted, team.team_id)
        if snap is None or snap.sandbox_id != sandbox_id or not snap.is_ready:
            raise NotFound(f"snapshot '{wanted}' not found for sandbox '{sandbox_id}'")
    else:
        snap = await asyncio.to_thread(svc.store.latest_snapshot, team.team_id, sandbox_id)
        if snap is None:
            raise NotFound(f"sandbox '{sandbox_id}' has no snapshot to restore")
    tpl = await _resolve_template(request, team, snap.template_id)
    # Volumes are not part of a snapshot: the restored sandbox attaches none.
    await record_attachments(volume_service(request), sandbox_id, [])
    restored = await svc.node.restore(rec, snap, tpl)
    return {
        "sandbox_id": restored.sandbox_id,
        "snapshot_id": snap.snapshot_id,
        "node_id": svc.settings.instance,
        "state": restored.state.value,
    }


@router.post("/sandboxes/{sandbox_id}/resume")
async def resume_sandbox(
    sandbox_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    node = services(request).node
    rec = await node.lookup(team.team_id, sandbox_id, Need.LIVE)
    rec = await node.resume(rec)
    return {"sandbox_id": sandbox_id, "state": rec.state.value, "end_at": iso(rec.end_at)}


@router.delete("/sandboxes/{sandbox_id}")
async def kill_sandbox(
    sandbox_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    node = services(request).node
    rec = await node.lookup(team.team_id, sandbox_id, Need.LIVE)
    if rec.state is SandboxState.CREATING:
        raise Busy(f"sandbox '{sandbox_id}' is still being created")
    wait = _wait(request)
    killed = await node.kill(sandbox_id, wait=wait)
    if not wait:
        # Accepted: from here on the sandbox is gone for every route; teardown continues.
        return JSONResponse({"queued": killed}, status_code=202)
    return {"killed": killed}


@router.get("/sandboxes/{sandbox_id}/status")
async def sandbox_status(
    sandbox_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    node = services(request).node
    rec = await node.lookup(team.team_id, sandbox_id, Need.RECORD)
    return {"is_running": await node.is_running(rec), "state": rec.state.value}


@router.patch("/sandboxes/{sandbox_id}/timeout")
async def set_timeout(sandbox_id: str, request: Request, team: Team = Depends(current_team)) -> Any:
    svc = services(request)
    rec = await svc.node.lookup(team.team_id, sandbox_id, Need.LIVE)
    body = await json_body(request)
    if "timeout" not in body:
        raise InvalidInput("timeout", "is required")
    seconds = parse_timeout(body["timeout"], svc.settings)
    end_at = await svc.node.set_timeout(rec, seconds)
    return {"ok": True, "end_at": iso(end_at)}


@router.get("/sandboxes/{sandbox_id}/metrics")
async def sandbox_metrics(
    sandbox_id: str, request: Request, team: Team = Depends(current_team)
) -> Any:
    """The series in [start, end] (ISO; naive is UTC), oldest first, plus a sample taken now
    when the range includes now. Paused sandboxes read CPU 0; killed ones are 404."""
    svc = services(request)
    rec = await svc.node.lookup(team.team_id, sandbox_id, Need.LIVE)
    start, end = parse_range(request.query_params.get("start"), request.query_params.get("end"))
    now = datetime.now(UTC).timestamp()
    samples = await asyncio.to_thread(series, svc.store, svc.node.metrics, rec, start, end, now)
    return [
        {
            "timestamp": iso(s.ts),
            "cpu_usage_percent": s.cpu_usage_percent,
            "memory_usage_mb": s.memory_usage_mb,
            "disk_usage_mb": s.disk_usage_mb,
        }
        for s in samples
    ]
