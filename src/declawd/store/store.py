"""`Store`: the one persistence interface of declawd, over SQLite or PostgreSQL.

Every method is synchronous, short and thread-safe (SQLite: one connection per thread;
PostgreSQL: a connection pool); callers in the event loop may call it directly or via
`anyio.to_thread`. Several processes may open the same database (the server, the gateway
daemon, `declawd keys`). `open_store(settings)` picks the backend the settings name.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from declawd.store.audit import Audit
from declawd.store.db import open_database
from declawd.store.keys import TeamsAndKeys
from declawd.store.metrics import Metrics
from declawd.store.nodes import Nodes
from declawd.store.records import Clock
from declawd.store.sandboxes import Sandboxes
from declawd.store.sessions import Sessions
from declawd.store.snapshots import Snapshots
from declawd.store.templates import Templates
from declawd.store.traffic import Traffic
from declawd.store.volumes import Volumes

if TYPE_CHECKING:
    from declawd.config import Settings

P = ParamSpec("P")
T = TypeVar("T")


class Store(
    TeamsAndKeys,
    Sandboxes,
    Snapshots,
    Templates,
    Audit,
    Metrics,
    Volumes,
    Traffic,
    Sessions,
    Nodes,
):
    def __init__(
        self, target: Path | str, *, clock: Clock = time.time, pool_size: int | None = None
    ) -> None:
        """Open (creating and migrating if needed) the database `target` names: a
        `postgresql://` URL, or a SQLite file (a path or `sqlite:///path`).

        `clock` returns epoch seconds; tests inject one to age records. `pool_size`
        overrides the PostgreSQL pool's size (default 10, or `pool_size=N` in the URL).
        """
        db = open_database(target, pool_size=pool_size)
        super().__init__(db, clock)
        # The SQLite file, for tools that open it themselves; None on PostgreSQL.
        self.db_path: Path | None = getattr(db, "path", None)

    @classmethod
    def open(
        cls, target: Path | str, *, clock: Clock = time.time, pool_size: int | None = None
    ) -> Store:
        """Same as `Store(target)`: a URL or path selects the backend."""
        return cls(target, clock=clock, pool_size=pool_size)

    @property
    def dialect(self) -> str:
        """ "sqlite" or "postgresql"."""
        return self._db.dialect

    @property
    def schema_version(self) -> int:
        return self._db.user_version()

    def close(self) -> None:
        """Close every connection; idempotent."""
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def database_target(settings: Settings) -> Path | str:
    """The database the settings name: `database_url` when set, else SQLite at `db_path`."""
    return settings.database_url or settings.db_path


def open_store(settings: Settings, *, clock: Clock = time.time) -> Store:
    """The server's store: PostgreSQL when `database_url` (DECLAWD_DATABASE_URL) is a
    `postgresql://` URL, SQLite at `<state_dir>/declawd.db` when it is empty."""
    return Store(database_target(settings), clock=clock)


async def read(store: object, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a small, indexed read (`fn`, a method of `store`) for async code. On SQLite
    in WAL mode, here on the event loop: a reader never waits for a writer, and the query
    takes tens of microseconds, less than the hop to a worker thread and back (0.1-0.3 ms
    on two busy cores); every API call authenticates and most look their sandbox up. On
    PostgreSQL (a network round trip), and any other store, on a worker thread."""
    if getattr(store, "dialect", None) == "sqlite":
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)
