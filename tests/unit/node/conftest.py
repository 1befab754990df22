"""Fixtures of the node's unit tests: a node built from in-memory fakes (fakes.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.unit.node.fakes import NodeFakes, number_creates


@pytest.fixture(autouse=True)
def _numbered(monkeypatch: pytest.MonkeyPatch) -> None:
    number_creates(monkeypatch)


@pytest.fixture
async def fakes(tmp_path: Path, db_target: Path | str) -> AsyncIterator[NodeFakes]:
    with NodeFakes.build(tmp_path, db=db_target) as f:
        yield f
        await f.settle()  # background work (teardowns, pause snapshots) ends with the test
