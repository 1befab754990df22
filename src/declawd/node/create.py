"""Creating a sandbox, and undoing a create that failed halfway.

Steps, in order: record → slot → vault refs, CA → [network → gateway] alongside [rootfs →
trust bundle → spec] → container → envd → start command. Every step that may have made
something is undone when a later one fails (a failing branch first waits for the other), so
a failed create leaves no netns, veth, nft chain, mount, cgroup, CA or process; its record
ends `killed` with the error, and `released` only once the undo removed everything (else
the reconcile sweep finishes it).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from declawd import metrics
from declawd.egress.policy import EgressPolicy
from declawd.errors import Conflict, DeclawdError, Internal, TimedOut
from declawd.inspect.ca import CaRef
from declawd.inspect.model import PLACEHOLDER, VaultBinding
from declawd.node import trust
from declawd.node.envd_client import EnvdClient
from declawd.node.inspection import inspection_of, stored_inspection
from declawd.node.parts import GatewayEntry, NetworkPlan, NodeParts
from declawd.node.release import release
from declawd.node.spec import SpecInputs, sandbox_env, sandbox_spec
from declawd.runtime import Mount
from declawd.store import SandboxRecord, SandboxState
from declawd.store.model import record_to_row
from declawd.templates.model import Template, start_script
from declawd.vault import attach

if TYPE_CHECKING:
    from declawd.volumes.attach import Attachment

log = logging.getLogger(__name__)

ENVD_READY_TIMEOUT = 15.0


@dataclass
class CreateRequest:
    team_id: str
    template: Template  # resolved and ready
    timeout: int
    metadata: dict[str, str] = field(default_factory=dict)
    envs: dict[str, str] = field(default_factory=dict)
    policy: EgressPolicy | None = None
    security: Mapping[str, Any] | None = None
    runtime: str | None = None
    lifecycle: Mapping[str, Any] = field(default_factory=dict)
    # Extra mounts (live volumes), decided by the API layer, opaque here; and the volumes
    # copied in (mode `copy`), as data: whichever host runs the sandbox copies them through
    # envd before the template's start command, from its own blob store path.
    mounts: Sequence[Mount] = ()
    copies: Sequence[Attachment] = ()
    # An id chosen by the caller (one that records things about the sandbox first); for a
    # restore, a killed and released sandbox's own id, which is brought back, its writable
    # layer filled by `prefill(upper_dir)` (blocking) before the overlay is mounted.
    sandbox_id: str | None = None
    prefill: Callable[[Path], None] | None = None
    # Vault secrets (resolved `vault_refs`, or a restored sandbox's own): each `env` holds
    # the placeholder inside, the proxy adds the value in flight.
    vault: tuple[VaultBinding, ...] = ()
    # Work the caller does under the sandbox's id once it is known and before the sandbox is
    # the team's (its ports options, its volume attachments); a cold create chooses the id,
    # a warm one takes a pooled sandbox's.
    prepare: Callable[[str], Awaitable[None]] | None = None
    # A warm pool's own create (node/pool.py): no deadline, no start command (it runs when
    # the sandbox is claimed, with the claimer's envs), not counted as a user's create.
    pooled: bool = False

    @property
    def poolable(self) -> bool:
        """Can a pooled sandbox serve this request? Not with mounts (live volumes are bound
        into the container when it is made), a prefilled layer (restore) or a given id."""
        return not self.mounts and self.prefill is None and self.sandbox_id is None


def new_sandbox_id() -> str:
    return "sbx-" + secrets.token_hex(6)


def new_record(parts: NodeParts, req: CreateRequest, now: float) -> SandboxRecord:
    tpl, settings = req.template, parts.settings
    policy = req.policy or EgressPolicy.parse([], [])
    return SandboxRecord(
        sandbox_id=req.sandbox_id or new_sandbox_id(),
        team_id=req.team_id,
        state=SandboxState.CREATING,
        template_id=tpl.template_id,
        template_alias=tpl.alias or tpl.template_id,
        runtime=req.runtime or tpl.runtime or settings.runtime,
        created_at=now,
        timeout=req.timeout,
        end_at=None if req.pooled else now + req.timeout,
        metadata=dict(req.metadata),
        envs={**(tpl.envs or {}), **req.envs, **{b.env: PLACEHOLDER for b in req.vault}},
        network=policy.to_wire(),
        security=dict(req.security) if req.security is not None else None,
        cpu_count=float(tpl.cpu_count or settings.default_cpu_count),
        memory_mb=int(tpl.memory_mb or settings.default_memory_mb),
        lifecycle=dict(req.lifecycle),
        node_id=settings.node_id,
    )


def _insert_or_revive(parts: NodeParts, rec: SandboxRecord) -> None:
    """A new record, or (restore) the killed record of the same id made `creating` again."""
    existing = parts.store.get_sandbox(rec.sandbox_id)
    if existing is None:
        parts.store.insert_sandbox(rec)
        return
    if existing.team_id != rec.team_id:
        raise Conflict(f"sandbox '{rec.sandbox_id}' belongs to another team")
    if not existing.released and not lost_elsewhere(parts, existing):
        raise Conflict(f"sandbox '{rec.sandbox_id}' is still being torn down; retry")
    fields = {
        k: v for k, v in record_to_row(rec).items() if k not in ("sandbox_id", "team_id", "state")
    }
    # started_at stays the last start until this one succeeds: a restore that fails (or a
    # crash in it) leaves a sandbox that can still be found and restored again.
    fields.update(
        killed_at=None,
        error=None,
        started_at=existing.started_at,
        paused_at=None,
        remaining_s=None,
    )
    if (
        parts.store.transition(
            rec.sandbox_id, [SandboxState.KILLED], SandboxState.CREATING, **fields
        )
        is None
    ):
        raise Conflict(f"sandbox '{rec.sandbox_id}' is running; restore needs a killed sandbox")


def lost_elsewhere(parts: NodeParts, rec: SandboxRecord) -> bool:
    """A killed sandbox of another node that is down (or gone from the registry), blocking:
    its teardown waits for that node's return, where it is swept as debris without a write
    to the record (reconcile), so a restore here need not wait for it."""
    if rec.state is not SandboxState.KILLED or rec.node_id == parts.settings.node_id:
        return False
    node = parts.store.get_node(rec.node_id)
    return node is None or node.state == "down"


def envs_of(parts: NodeParts, rec: SandboxRecord) -> dict[str, str]:
    """Environment every process in the sandbox gets (trust bundle + sandbox + platform)."""
    return sandbox_env(rec.sandbox_id, rec.template_id, rec.envs, trust.trust_env())


async def create(parts: NodeParts, req: CreateRequest) -> SandboxRecord:
    store, faults, tpl = parts.store, parts.faults, req.template
    began = time.monotonic()
    rec = new_record(parts, req, time.time())
    policy = req.policy or EgressPolicy.parse([], [])
    # Before anything exists: a security JSON that does not parse fails the create cleanly.
    inspection = await asyncio.to_thread(
        inspection_of, parts.settings, rec.security, req.vault, rec.envs
    )
    sandbox_id = rec.sandbox_id
    runtime = parts.runtimes[rec.runtime]
    if req.prepare is not None:
        await req.prepare(sandbox_id)
    await asyncio.to_thread(_insert_or_revive, parts, rec)
    plan: NetworkPlan | None = None
    ca: CaRef | None = None
    # The sandbox's CA is made alongside the slot and vault steps: it needs only the id.
    ca_made = asyncio.ensure_future(asyncio.to_thread(trust.create_ca, parts.settings, sandbox_id))

    netns_made = asyncio.Event()

    async def network(planned: NetworkPlan) -> None:
        await parts.networks.create(
            planned, policy, inspect=inspection.active, on_netns=netns_made.set
        )
        faults.point("create.after_network")
        await asyncio.to_thread(
            store.update_sandbox, sandbox_id, slot=planned.slot, address=planned.address
        )
        entry = GatewayEntry(planned.slot, planned.address, policy, inspection, ca)
        await parts.daemon.upsert(sandbox_id, entry)
        faults.point("create.after_gateway")

    async def rootfs(planned: NetworkPlan) -> None:
        # Addresses and netns path follow from the slot alone (no I/O), so the rootfs can
        # be made while the network branch is still creating them.
        host = parts.host
        await asyncio.to_thread(
            host.prepare,
            sandbox_id,
            tpl.layer_paths,
            planned.address,
            planned.gateway_address,
            req.prefill,
        )
        faults.point("create.after_rootfs")
        bundle = parts.upstream.ca_bundle()
        rootfs_dir = host.rootfs_view(sandbox_id)
        # A fresh upper layer (no prefill) over the template's layers: its certifi bundles
        # are the template's, found once.
        layers = tpl.layer_paths if req.prefill is None else None
        trusted = await asyncio.to_thread(
            trust.prepare_trust, parts.settings, sandbox_id, bundle, rootfs_dir, layers
        )
        spec = await asyncio.to_thread(_spec, parts, rec, planned, trusted, req.mounts)
        await asyncio.to_thread(host.write_spec, sandbox_id, spec)

    async def container(planned: NetworkPlan, network_branch: asyncio.Future[None]) -> None:
        await rootfs(planned)
        # The container joins the netns as soon as it exists, while the other branch makes
        # its link and rules: nothing runs inside but envd until both branches are done.
        await _netns_made(netns_made, network_branch)
        res = parts.host.resources(sandbox_id)
        try:
            await runtime.run_detached(
                res.dir,
                sandbox_id,
                planned.netns_path,
                log_path=res.log_path,
                rootfs=parts.host.rootfs_mount(sandbox_id, planned.netns_path),
            )
        finally:
            parts.host.rootfs_started(sandbox_id)
        faults.point("create.after_container")
        await _wait_envd(parts, sandbox_id)
        faults.point("create.after_envd")

    try:
        faults.point("create.after_record")
        slot = await asyncio.to_thread(store.allocate_slot, sandbox_id)
        rec = rec.replace(slot=slot)
        faults.point("create.after_slot")
        # Recorded even when empty: a restore replaces whatever its id had.
        await asyncio.to_thread(attach, store, sandbox_id, req.vault)
        if req.vault:
            # The secrets' scopes as they are now (one may have changed since the refs
            # were resolved); a refresh skips sandboxes still creating.
            inspection = await asyncio.to_thread(stored_inspection, parts, rec)
        ca = await ca_made
        faults.point("create.after_ca")
        plan = parts.networks.plan(sandbox_id, slot)
        rec = rec.replace(address=plan.address)
        network_branch = asyncio.ensure_future(network(plan))
        await _all_settled(network_branch, container(plan, network_branch))
        client = parts.sessions.client(sandbox_id)
        if not req.pooled:
            await run_after_start(parts, rec, req, client)
        faults.point("create.after_start")
    except BaseException as exc:
        # The CA's thread cannot be stopped: let it finish, so the undo removes what it made
        # (its own error, if any, is retrieved: the create's first error is the one reported).
        await asyncio.wait([ca_made])
        if not ca_made.cancelled():
            ca_made.exception()
        if not req.pooled:
            metrics.sandbox_create_failed(rec.runtime, exc)
        await undo(parts, rec, exc)
        if isinstance(exc, DeclawdError):
            raise
        if isinstance(exc, Exception):
            raise Internal(f"sandbox create failed: {exc}") from exc
        raise
    started = time.time()
    done = rec.replace(state=SandboxState.RUNNING, started_at=started)
    await asyncio.to_thread(
        store.update_sandbox, sandbox_id, state=SandboxState.RUNNING, started_at=started
    )
    if not req.pooled:
        metrics.sandbox_created(rec.runtime, template_kind(tpl), time.monotonic() - began)
    return done


def template_kind(tpl: Template) -> str:
    return "builtin" if not tpl.team_id else "custom"


async def run_after_start(
    parts: NodeParts, rec: SandboxRecord, req: CreateRequest, client: EnvdClient
) -> None:
    """The request's own work once envd answers: copied volumes, then the template's start
    command (with the sandbox's envs) until its ready command passes."""
    if req.copies:
        from declawd.volumes.attach import copy_into_sandbox  # volumes builds on node

        for att in req.copies:
            await copy_into_sandbox(client, att, req.template.user or "user")
    if req.template.start_cmd:
        await _start_command(client, envs_of(parts, rec), req.template)


async def undo(parts: NodeParts, rec: SandboxRecord, exc: BaseException) -> None:
    """Undo a failed create; the record ends `killed` with the error either way."""
    error = str(exc)[:2000] or type(exc).__name__
    failures = await release(parts, rec, fault_points=False)
    if failures:
        log.error("create of %s failed (%s); undo left: %s", rec.sandbox_id, error, failures)
        error += "; undo incomplete: " + "; ".join(failures)
    await asyncio.to_thread(
        parts.store.update_sandbox,
        rec.sandbox_id,
        state=SandboxState.KILLED,
        killed_at=time.time(),
        error=error[:4000],
        released=not failures,
    )


def _spec(
    parts: NodeParts,
    rec: SandboxRecord,
    plan: NetworkPlan,
    trusted: trust.SandboxTrust,
    mounts: Sequence[Mount] = (),
) -> dict[str, Any]:
    host, settings = parts.host, parts.settings
    res = host.resources(rec.sandbox_id)
    extra = [*trusted.mounts(), *mounts]
    if rec.runtime == "runc":
        # gVisor cannot use host cgroup files from inside; see docs/security.md
        extra += host.command_cgroup_mounts(
            rec.sandbox_id, rec.memory_mb << 20, settings.default_pids
        )
    return sandbox_spec(
        SpecInputs(
            sandbox_id=rec.sandbox_id,
            runtime=rec.runtime,
            rootfs=res.rootfs,
            netns_path=plan.netns_path,
            cgroups_path=res.cgroups_path,
            envd_binary=host.envd_binary,
            envd_dir=res.envd_dir,
            memory_mb=rec.memory_mb,
            cpu_count=rec.cpu_count,
            pids=settings.default_pids,
            extra_mounts=extra,
            runsc_compat=host.runsc_compat() if rec.runtime == "runsc" else None,
        )
    )


async def _wait_envd(parts: NodeParts, sandbox_id: str) -> None:
    """Until envd listens on its socket. envd opens it last in its start-up, so a connect
    that is accepted (or queued: EAGAIN, a full backlog) means it is up; no request is made.
    Polled every 0.5 ms at first: it listens ~2-5 ms after `run --detach` returns, and an
    HTTP health check on top cost ~1.8 ms of a create."""
    began = time.monotonic()
    while (waited := time.monotonic() - began) < ENVD_READY_TIMEOUT:
        if parts.host.envd_listening(sandbox_id):
            return
        # slow to start (a loaded node, runsc): no need to spin
        await asyncio.sleep(0.0005 if waited < 0.05 else 0.01)
    tail = parts.host.log_tail(sandbox_id)
    raise Internal(f"envd did not come up within {ENVD_READY_TIMEOUT:.0f}s: {tail}")


async def _start_command(client: EnvdClient, envs: dict[str, str], tpl: Template) -> None:
    await client.start(
        start_script(tpl.start_cmd) or "",
        user=tpl.user or "user",
        envs=envs,
        cwd=tpl.workdir,
        tag="start_cmd",
    )
    if not tpl.ready_cmd:
        return
    timeout = float(tpl.ready_timeout or 60)
    deadline = time.monotonic() + timeout
    while True:
        result = await client.run(
            tpl.ready_cmd,
            timeout=max(1.0, deadline - time.monotonic()),
            user=tpl.user or "user",
            envs=envs,
            cwd=tpl.workdir,
        )
        if result.exit_code == 0:
            return
        if time.monotonic() >= deadline:
            raise TimedOut(  # not 5xx: the SDK would retry the whole create
                f"template start command not ready: ready_cmd {tpl.ready_cmd!r} still failing "
                f"after {timeout:.0f}s (exit {result.exit_code})",
                code="start_cmd_not_ready",
            )
        await asyncio.sleep(0.2)


async def _netns_made(made: asyncio.Event, network_branch: asyncio.Future[None]) -> None:
    """Until the network branch made the netns; raises when that branch failed first (its
    own error is the one the create reports: it comes first in `_all_settled`)."""
    waiter: asyncio.Future[Any] = asyncio.ensure_future(made.wait())
    try:
        await asyncio.wait([waiter, network_branch], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    failed = network_branch.done() and (
        network_branch.cancelled() or network_branch.exception() is not None
    )
    if failed or not made.is_set():
        raise Internal("the sandbox network failed: no container started")


async def _all_settled(*branches: Awaitable[None]) -> None:
    """Run create branches concurrently and return once every one has finished (also when
    one fails or the caller is cancelled: blocking steps run in threads that cannot be
    interrupted), so the undo sees everything they made; then raise the first failure."""
    tasks = [asyncio.ensure_future(b) for b in branches]
    try:
        await asyncio.wait(tasks)
    except asyncio.CancelledError:
        await asyncio.wait(tasks)  # not cancelled: let them finish, the undo follows
        raise
    failures = [exc for t in tasks if (exc := t.exception()) is not None]  # all retrieved
    if failures:
        raise failures[0]
