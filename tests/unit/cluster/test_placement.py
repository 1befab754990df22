"""Placement: up, fresh, with the template, least loaded first."""

from __future__ import annotations

from typing import Any

import pytest

from declawd.cluster.placement import choose_build_node, choose_node
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


def test_with_a_shared_blob_store_any_up_node_may_take_a_builtin() -> None:
    nodes = [_node("a", templates=[]), _node("b", templates=[]), _node("c", state="draining")]
    choose = lambda counts: choose_node(  # noqa: E731
        nodes,
        template_id="tpl-base",
        builtin=True,
        live_counts=counts,
        now=105.0,
        fresh_s=10,
        shared=True,
    ).node_id
    assert choose({"a": 3, "b": 1}) == "b"  # it will fetch the layers
    assert choose({"a": 0, "b": 1}) == "a"
    with pytest.raises(Unavailable, match="no node is up"):
        choose_node(
            nodes[2:],
            template_id="t",
            builtin=True,
            live_counts={},
            now=105.0,
            fresh_s=10,
            shared=True,
        )


def test_having_the_template_breaks_ties_of_load_only() -> None:
    nodes = [
        _node("a", templates=[], free_memory_bytes=9),
        _node("b", templates=["tpl-team"], free_memory_bytes=1),
    ]
    for shared in (False, True):

        def pick(counts: dict[str, int], shared: bool = shared) -> str:
            return choose_node(
                nodes,
                template_id="tpl-team",
                builtin=False,
                live_counts=counts,
                now=105.0,
                fresh_s=10,
                shared=shared,
            ).node_id

        assert pick({}) == "b"  # equal load: the node that has it, despite less memory
        assert pick({"b": 1}) == "a"  # less loaded wins: it fetches


def test_a_build_goes_to_the_least_loaded_fresh_up_node() -> None:
    nodes = [
        _node("a", state="draining"),
        _node("b", seen=80.0),
        _node("c", free_memory_bytes=1),
        _node("d", free_memory_bytes=2, templates=[]),
    ]
    pick = lambda counts: choose_build_node(  # noqa: E731
        nodes, live_counts=counts, now=105.0, fresh_s=10
    ).node_id
    assert pick({}) == "d"  # most free memory; templates do not matter for a build
    assert pick({"d": 1}) == "c"
    with pytest.raises(Unavailable, match="no node is up to take the build"):
        choose_build_node(nodes[:2], live_counts={}, now=105.0, fresh_s=10)
