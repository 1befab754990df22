"""Releasing what a sandbox holds on the node: session, container, mounts, CA, gateway entry,
network.

One function for the undo of a failed create, a kill and the reconcile sweep. Every step
runs even when an earlier one failed (each is idempotent and independent), the network goes
last, and what could not be removed comes back as a list of lines rather than being
swallowed: the caller records it and leaves the sandbox `released = false` for the sweep.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from declawd import metrics
from declawd.node.parts import NodeParts
from declawd.node.trust import remove_trust
from declawd.store import SandboxRecord

log = logging.getLogger(__name__)


async def release(parts: NodeParts, rec: SandboxRecord, *, fault_points: bool = True) -> list[str]:
    """Remove everything `rec` holds; returns what failed (empty: all gone)."""
    sandbox_id = rec.sandbox_id
    failed: list[str] = []

    def point(name: str) -> None:
        if fault_points:
            try:
                parts.faults.point(name)
            except Exception as exc:
                failed.append(str(exc))

    async def step(what: str, action: Callable[[], Awaitable[object]]) -> None:
        try:
            result = await action()
        except Exception as exc:
            failed.append(f"{what}: {exc}")
            return
        if isinstance(result, list):  # steps that report their own partial failures
            failed.extend(f"{what}: {line}" for line in result)

    await parts.sessions.drop(sandbox_id)
    point("kill.before_runtime")
    runtime = parts.runtimes.get(rec.runtime)
    await step("host", lambda: parts.host.release(sandbox_id, runtime))
    point("kill.after_runtime")
    # Also when the host step left the sandbox's directory behind: its CA key goes now.
    # Vault refs stay with the record: a restore of this id gets the same secrets.
    await step("trust", lambda: asyncio.to_thread(remove_trust, parts.settings, sandbox_id))
    await step("gateway", lambda: parts.daemon.remove(sandbox_id))
    point("kill.after_gateway")
    if rec.slot is not None:
        slot = rec.slot
        await step("network", lambda: parts.networks.destroy(sandbox_id, slot))
    point("kill.after_network")
    return failed


async def release_and_record(parts: NodeParts, rec: SandboxRecord) -> bool:
    """Release a killed sandbox and record the outcome; True when nothing is left. The
    outcome is recorded only while the store places the sandbox on this node: one restored
    on another node meanwhile is that node's now (what was released here was debris)."""
    failed = await release(parts, rec)
    node_id = parts.settings.node_id
    if failed:
        metrics.sandbox_teardown_failed(rec.runtime)
        log.error("sandbox %s: teardown incomplete, left for the sweep: %s", rec.sandbox_id, failed)
        error = (rec.error + "; " if rec.error else "") + "teardown: " + "; ".join(failed)
        await asyncio.to_thread(
            parts.store.update_sandbox_on_node,
            rec.sandbox_id,
            node_id,
            error=error[:4000],
            released=False,
        )
        return False
    recorded = await asyncio.to_thread(
        parts.store.update_sandbox_on_node,
        rec.sandbox_id,
        node_id,
        released=True,
        killed_at=rec.killed_at or time.time(),
    )
    if not recorded:
        log.info("sandbox %s: released here, its record is another node's now", rec.sandbox_id)
    return True
