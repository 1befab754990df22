"""Reconcile: make the store, the runtimes, the mounts and the network agree.

Runs at start, before any traffic (the reaper retries failed teardowns in between). The store is the source of truth for what should exist: a live sandbox whose
container, rootfs or envd socket is gone is killed with an error saying so; anything on the
host that no unreleased record of this node accounts for (containers, sandbox directories,
networks, gateway entries) is removed.

A node judges by `node_id` alone: a container or netns here for a sandbox the store places
on another node now (restored there while this node was away) is this node's debris,
removed here, and that sandbox's record is never written (every write below is
conditional on the record still naming this node).
"""

from __future__ import annotations

import asyncio
import logging
import time

from declawd.node.parts import NodeParts
from declawd.node.pausing import align_container
from declawd.node.release import release_and_record
from declawd.store import SandboxRecord, SandboxState

log = logging.getLogger(__name__)

LOST = "lost during a server restart"


async def is_whole(parts: NodeParts, rec: SandboxRecord) -> bool:
    """A running or paused sandbox whose container is there (running or frozen as its record
    says, made so if a crash left it otherwise), rootfs mounted and envd socket present."""
    if rec.state not in (SandboxState.RUNNING, SandboxState.PAUSED):
        return False
    runtime = parts.runtimes.get(rec.runtime)
    if runtime is None:
        return False
    if not await align_container(parts, rec, await runtime.state(rec.sandbox_id)):
        return False
    return await asyncio.to_thread(parts.host.is_ready, rec.sandbox_id)


async def reconcile(parts: NodeParts) -> set[str]:
    """Sweep everything; returns the ids of the sandboxes kept."""
    store = parts.store
    keep: set[str] = set()
    for rec in await asyncio.to_thread(store.list_unreleased_sandboxes, parts.settings.node_id):
        if rec.is_live and await is_whole(parts, rec):
            keep.add(rec.sandbox_id)
            continue
        if rec.is_live:
            log.warning(
                "reconcile: %s is %s in the store but not whole on the host; killing it",
                rec.sandbox_id,
                rec.state,
            )
            rec = rec.replace(state=SandboxState.KILLED, killed_at=time.time(), error=LOST)
            await asyncio.to_thread(
                store.update_sandbox_on_node,
                rec.sandbox_id,
                parts.settings.node_id,
                state=SandboxState.KILLED,
                killed_at=rec.killed_at,
                error=LOST,
            )
        await release_and_record(parts, rec)
    await sweep_strays(parts, keep)
    return keep


async def sweep_strays(parts: NodeParts, keep: set[str]) -> list[str]:
    """Remove host resources of sandboxes not in `keep`; returns what failed."""
    failed: list[str] = []
    for name, runtime in parts.runtimes.items():
        try:
            ids = await runtime.list()
        except Exception as exc:
            failed.append(f"{name} list: {exc}")
            continue
        for cid in ids:
            if cid not in keep:
                log.warning("reconcile: removing stray %s container %s", name, cid)
                try:
                    await runtime.kill(cid)
                except Exception as exc:
                    failed.append(f"{name} container {cid}: {exc}")
    for sandbox_id in await asyncio.to_thread(parts.host.present):
        if sandbox_id not in keep:
            # A live agent reconciles too (told it was down): drop its envd session first.
            await parts.sessions.drop(sandbox_id)
            failed += await parts.host.release(sandbox_id, None)
    try:
        await parts.networks.sweep(keep)
    except Exception as exc:
        failed.append(f"networks: {exc}")
    await parts.daemon.retain(keep)
    if failed:
        log.error("reconcile: could not remove: %s", failed)
    return failed
