"""Placement: which node a new sandbox, or a template build, goes to (pure).

Eligible for a sandbox: `up` (not draining, not down), heard from recently, and able to get
the template: with a shared blob store (`shared`) every such node can (it fetches the
layers it lacks); without one a built-in must be in the templates the node reports, and a
team's own template may go anywhere (its layers are each node's business, as with one
`--templates-dir` for all). Among those the least loaded first: fewest live sandboxes (the
store's count, fresher than a heartbeat), then one that has the template (no fetch), then
most free memory, then the id. Having the template breaks ties only: a preference stronger
than the load would send every sandbox of a new template to the node that built it.

A build goes to the least loaded node that is up and fresh (`choose_build_node`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from declawd.errors import Unavailable
from declawd.store.nodes import NodeRecord


def _up(nodes: Sequence[NodeRecord], now: float, fresh_s: float, what: str) -> list[NodeRecord]:
    up = [n for n in nodes if n.state == "up" and now - n.last_seen <= fresh_s]
    if not up:
        raise Unavailable(
            f"no node is up to take the {what} (cluster: every node down or draining)"
        )
    return up


def _free(n: NodeRecord) -> int:
    return int(n.capacity.get("free_memory_bytes") or 0)


def choose_node(
    nodes: Sequence[NodeRecord],
    *,
    template_id: str,
    builtin: bool,
    live_counts: Mapping[str, int],
    now: float,
    fresh_s: float,
    shared: bool = False,
) -> NodeRecord:
    """The node a create of `template_id` goes to; `Unavailable` when none can take it."""
    up = _up(nodes, now, fresh_s, "sandbox")
    eligible = up if shared or not builtin else [n for n in up if template_id in n.templates]
    if not eligible:
        raise Unavailable(f"no node that is up has template '{template_id}' yet")

    def load(n: NodeRecord) -> tuple[int, bool, int, str]:
        lacks = template_id not in n.templates
        return (live_counts.get(n.node_id, 0), lacks, -_free(n), n.node_id)

    return min(eligible, key=load)


def choose_build_node(
    nodes: Sequence[NodeRecord], *, live_counts: Mapping[str, int], now: float, fresh_s: float
) -> NodeRecord:
    """The node a template build goes to: up, fresh, fewest live sandboxes, most free memory."""
    up = _up(nodes, now, fresh_s, "build")
    return min(up, key=lambda n: (live_counts.get(n.node_id, 0), -_free(n), n.node_id))
