"""The node's side of content inspection: what the gateway is told about each sandbox.

Every path that hands a sandbox to the gateway (create, a network or security change, a
vault scope change, the start-up resync) builds its `GatewayEntry` here, from the store
alone: the record's security JSON and envs, its vault bindings with their secrets' current
scopes, and its CA on disk. Invariants: an entry never holds a secret value; the datapath
never redirects a sandbox's TCP to the proxy before the proxy has the entry that expects it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from declawd.config import Settings
from declawd.egress.policy import EgressPolicy
from declawd.errors import Conflict, DeclawdError, Unreachable
from declawd.inspect.model import InspectionPolicy, VaultBinding
from declawd.inspect.policy import inspection_policy, parse_security
from declawd.node.parts import GatewayEntry, NodeParts
from declawd.node.trust import current_ca
from declawd.store import SandboxRecord
from declawd.vault import bindings_for

log = logging.getLogger(__name__)


def inspection_of(
    settings: Settings,
    security: Mapping[str, Any] | None,
    bindings: Sequence[VaultBinding],
    envs: Mapping[str, str],
) -> InspectionPolicy:
    """The InspectionPolicy of a sandbox with this security JSON, vault and envs (pure)."""
    spec = parse_security(security) if security is not None else None
    return inspection_policy(spec, bindings, envs, settings)


def stored_inspection(
    parts: NodeParts, rec: SandboxRecord, security: Mapping[str, Any] | None = None
) -> InspectionPolicy:
    """The record's policy (or `security` instead of its own) with its vault bindings as
    they are now in the store; blocking."""
    bindings = bindings_for(parts.store, rec.sandbox_id)
    return inspection_of(
        parts.settings, rec.security if security is None else security, bindings, rec.envs
    )


def gateway_active(parts: NodeParts, sandbox_id: str) -> bool | None:
    """Whether the gateway's entry for the sandbox has inspection active (and so its nft
    rules do); None when there is no readable entry."""
    item = parts.daemon.entry(sandbox_id)
    if item is None:
        return None
    try:
        return InspectionPolicy.from_wire(item.get("inspection")).active
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


async def apply(
    parts: NodeParts,
    rec: SandboxRecord,
    policy: EgressPolicy,
    inspection: InspectionPolicy,
    *,
    network_changed: bool,
    had_no_egress: bool = False,
) -> None:
    """Make the datapath and the gateway match `policy` and `inspection`.

    The nft rules are rewritten when the network changed or inspection turned on or off.
    Turning it on, the gateway learns first (then the redirect of all TCP); turning it
    off, the redirect goes first: in between, the proxy always expects what it gets.
    `had_no_egress`: the sandbox could reach nothing until now (a warm pool's), so it has
    no flow to cut.
    """
    sandbox_id = rec.sandbox_id
    if rec.slot is None or rec.address is None:
        raise Conflict(f"sandbox '{sandbox_id}' has no network yet")
    slot = rec.slot
    ca = await asyncio.to_thread(current_ca, parts.settings, sandbox_id)
    if inspection.active and ca is None:
        raise Conflict(
            f"sandbox '{sandbox_id}' has no CA of its own (created before content inspection);"
            " create a new sandbox to inspect its traffic"
        )
    entry = GatewayEntry(slot, rec.address, policy, inspection, ca)
    was = gateway_active(parts, sandbox_id)
    rules = network_changed or was != inspection.active

    async def datapath() -> None:
        if rules:
            await parts.networks.update_policy(
                sandbox_id, slot, policy, inspect=inspection.active, cut=not had_no_egress
            )

    if inspection.active and not was:
        await parts.daemon.upsert(sandbox_id, entry)
        await datapath()
    else:
        await datapath()
        await parts.daemon.upsert(sandbox_id, entry)


async def resync(parts: NodeParts, keep: set[str]) -> None:
    """At start, after reconcile: rebuild every kept sandbox's entry from the store (a
    crash may have fallen between a store update and the gateway's), fixing its nft rules
    where inspection's state differs from what the gateway had; one state.json write,
    ordered as `apply` orders one sandbox."""
    entries: dict[str, GatewayEntry] = {}
    turn_off: list[tuple[str, int, EgressPolicy]] = []
    turn_on: list[tuple[str, int, EgressPolicy]] = []
    for sandbox_id in sorted(keep):
        rec = await asyncio.to_thread(parts.store.get_sandbox, sandbox_id)
        if rec is None or rec.slot is None or rec.address is None:
            continue
        try:
            inspection = await asyncio.to_thread(stored_inspection, parts, rec)
            policy = EgressPolicy.from_wire(dict(rec.network))
        except DeclawdError as exc:
            # Its last entry stays as it was: the store cannot say anything better.
            log.error("resync: %s keeps its gateway entry: %s", sandbox_id, exc.message)
            continue
        if gateway_active(parts, sandbox_id) != inspection.active:
            (turn_on if inspection.active else turn_off).append((sandbox_id, rec.slot, policy))
        ca = await asyncio.to_thread(current_ca, parts.settings, sandbox_id)
        entries[sandbox_id] = GatewayEntry(rec.slot, rec.address, policy, inspection, ca)
    await _rules(parts, turn_off, inspect=False)
    if entries:
        try:
            await parts.daemon.sync(entries)
        except (Unreachable, OSError) as exc:
            # state.json is written: the supervisor's restart of the daemon reads it.
            log.error("resync: the running gateway daemon did not reload: %s", exc)
    await _rules(parts, turn_on, inspect=True)


async def _rules(
    parts: NodeParts, todo: Sequence[tuple[str, int, EgressPolicy]], *, inspect: bool
) -> None:
    for sandbox_id, slot, policy in todo:
        try:
            await parts.networks.update_policy(sandbox_id, slot, policy, inspect=inspect)
        except Exception:
            # The node still starts: the other sandboxes must not wait on this one.
            log.exception("resync: nft rules of %s (inspect=%s) not rewritten", sandbox_id, inspect)
