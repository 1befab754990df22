"""Fixtures shared by the unit tests: the store's database on each backend.

`db_target` is what `Store(...)` opens: a SQLite file under the test's tmp dir, or a fresh
database on the session's throwaway PostgreSQL server (tests/pg.py), dropped after the
test. Every test that builds a `Store` from it runs once per backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg import PgServer


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the session; fails (never skips) without the binaries."""
    try:
        server = PgServer()
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """The URL of a fresh, empty database, dropped after the test."""
    name = pg_server.create_database()
    try:
        yield pg_server.url(name)
    finally:
        pg_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_target(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """The store's database on each backend: a SQLite path, or a PostgreSQL URL."""
    if request.param == "sqlite":
        return tmp_path / "declawd.db"
    url: str = request.getfixturevalue("pg_url")
    return url
