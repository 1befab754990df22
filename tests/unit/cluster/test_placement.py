"""Placement: up, fresh, with the template, least loaded first."""

from __future__ import annotations

from typing import Any

import pytest

from declawd.cluster.placement import choose_node
from declawd.errors import Unavailable
from declawd.store.nodes import NodeRecord


def _node(node_id: str, state: str = "up", seen: float = 100.0, **capacity: Any) -> NodeRecord:
    capacity.setdefault("templates", ["tpl-base"])
    return NodeRecord(node_id, node_id, f"https://{node_id}", state, 0.0, seen, capacity)


def _choose(nodes: list[NodeRecord], counts: dict[str, int], builtin: bool = True) -> str:
    return choose_node(
        nodes, template_id="tpl-base", builtin=builtin, live_counts=counts, now=105.0, fresh_s=10
    ).node_id


def test_least_loaded_then_most_free_memory() -> None:
    nodes = [_node("a", free_memory_bytes=1), _node("b", free_memory_bytes=5), _node("c")]
    assert _choose(nodes, {"a": 2, "b": 2, "c": 3}) == "b"
    assert _choose(nodes, {"a": 1, "b": 2}) == "c"


def test_skips_down_draining_stale_and_template_less_nodes() -> None:
    nodes = [
        _node("a", state="down"),
        _node("b", state="draining"),
        _node("c", seen=90.0),
        _node("d", templates=[]),
        _node("e"),
    ]
    assert _choose(nodes, {"e": 50}) == "e"
    assert _choose(nodes[:4], {}, builtin=False) == "d"  # a team's template: any node
    with pytest.raises(Unavailable, match="template"):
        _choose(nodes[:4], {})
    with pytest.raises(Unavailable, match="no node is up"):
        _choose(nodes[:3], {})
