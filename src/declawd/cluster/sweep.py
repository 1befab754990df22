"""The lost-node sweep: a node silent for longer than the timeout is `down`.

Its live sandboxes are killed in the store with an error that names the node (GET and
connect answer 404 with it) and an audit event each; the node, if it comes back, kills
them on its host when it reconciles before it takes work. The template builds it was
running fail with their templates (logged here: builds have no audit events). Run by every
API server in cluster mode; the store marks each node once however many sweep together.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from declawd.store import Store
from declawd.store.nodes import NodeRecord, lost_message

log = logging.getLogger(__name__)


def sweep_once(store: Store, now: float, down_after_s: float) -> list[NodeRecord]:
    """Mark the silent nodes down and audit the sandboxes lost with them (blocking)."""
    marked = store.mark_stale_nodes_down(now - down_after_s)
    for node, lost, builds in marked:
        log.error(
            "node %s (%s) missed its heartbeats for %.0f s: down; %d sandboxes lost,"
            " %d template builds failed%s",
            node.name,
            node.node_id,
            now - node.last_seen,
            len(lost),
            len(builds),
            f" ({', '.join(builds)})" if builds else "",
        )
        store.insert_audit_events(
            [
                {
                    "time": now,
                    "sandbox_id": sandbox_id,
                    "kind": "lifecycle",
                    "verdict": "deny",
                    "reason": lost_message(node.name),
                    "detail": {"operation": "lost", "node": node.name},
                }
                for sandbox_id in lost
            ]
        )
    return [loss.node for loss in marked]


async def run_sweeps(
    store: Store, interval_s: float, down_after_s: float, clock: Callable[[], float]
) -> None:
    while True:
        try:
            await asyncio.to_thread(sweep_once, store, clock(), down_after_s)
        except Exception:
            log.exception("node sweep")
        await asyncio.sleep(interval_s)
