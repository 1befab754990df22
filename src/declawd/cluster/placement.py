"""Placement: which node a new sandbox goes to (pure).

Eligible: `up` (not draining, not down), heard from recently, and with the template (a
built-in one must be in the templates the node reports; a team's own template is on every
node for now, docs/cluster.md). Among those the least loaded first: fewest live sandboxes
(the store's count, fresher than a heartbeat), then most free memory, then the id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from declawd.errors import Unavailable
from declawd.store.nodes import NodeRecord


def choose_node(
    nodes: Sequence[NodeRecord],
    *,
    template_id: str,
    builtin: bool,
    live_counts: Mapping[str, int],
    now: float,
    fresh_s: float,
) -> NodeRecord:
    """The node a create of `template_id` goes to; `Unavailable` when none can take it."""
    up = [n for n in nodes if n.state == "up" and now - n.last_seen <= fresh_s]
    if not up:
        raise Unavailable(
            "no node is up to take the sandbox (cluster: every node down or draining)"
        )
    eligible = [n for n in up if not builtin or template_id in n.templates]
    if not eligible:
        raise Unavailable(f"no node that is up has template '{template_id}' yet")

    def load(n: NodeRecord) -> tuple[int, int, str]:
        free = int(n.capacity.get("free_memory_bytes") or 0)
        return (live_counts.get(n.node_id, 0), -free, n.node_id)

    return min(eligible, key=load)
