"""Fixtures of the node's unit tests: a node built from in-memory fakes (fakes.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.node.fakes import NodeFakes, number_creates


@pytest.fixture(autouse=True)
def _numbered(monkeypatch: pytest.MonkeyPatch) -> None:
    number_creates(monkeypatch)


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[NodeFakes]:
    with NodeFakes.build(tmp_path) as f:
        yield f
