"""Fixtures of the vault tests: a store with two teams, the master key path, the service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from declawd.store import SandboxRecord, SandboxState, Store
from declawd.vault import VaultService

VALUE = "sk-test-0123456789abcdef"


class Clock:
    """A settable clock (epoch seconds) for rotation and timestamps."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    with Store(tmp_path / "declawd.db", clock=clock) as s:
        yield s


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "vault.key"


@pytest.fixture
def team(store: Store) -> str:
    return store.create_team("default")


@pytest.fixture
def other_team(store: Store) -> str:
    return store.create_team("other")


@pytest.fixture
def svc(store: Store, key_path: Path, clock: Clock, team: str) -> VaultService:
    s = VaultService(store, key_path, clock=clock)
    s.ensure_environment(team, "prod")
    return s


def insert_sandbox(store: Store, sandbox_id: str, team_id: str, *, released: bool = False) -> None:
    store.insert_sandbox(
        SandboxRecord(
            sandbox_id=sandbox_id,
            team_id=team_id,
            state=SandboxState.KILLED if released else SandboxState.RUNNING,
            template_id="tpl-base",
            template_alias="base",
            runtime="runc",
            created_at=1.0,
            timeout=300,
            released=released,
        )
    )
