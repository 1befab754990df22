"""`Store`: the one persistence interface of declawd, over SQLite (`declawd.db`).

Every method is synchronous, short and thread-safe (one connection per thread); callers
in the event loop may call it directly or via `anyio.to_thread`. Several processes may
open the same file (the server, the gateway daemon, `declawd keys`).
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType

from declawd.store.audit import Audit
from declawd.store.db import Database
from declawd.store.keys import TeamsAndKeys
from declawd.store.metrics import Metrics
from declawd.store.records import Clock
from declawd.store.sandboxes import Sandboxes
from declawd.store.sessions import Sessions
from declawd.store.snapshots import Snapshots
from declawd.store.templates import Templates
from declawd.store.traffic import Traffic
from declawd.store.volumes import Volumes


class Store(
    TeamsAndKeys, Sandboxes, Snapshots, Templates, Audit, Metrics, Volumes, Traffic, Sessions
):
    def __init__(self, db_path: Path | str, *, clock: Clock = time.time) -> None:
        """Open (creating and migrating if needed) the database at `db_path`.

        `clock` returns epoch seconds; tests inject one to age records.
        """
        super().__init__(Database(db_path), clock)
        self.db_path = Path(db_path)

    @property
    def schema_version(self) -> int:
        return self._db.user_version()

    def close(self) -> None:
        """Close every thread's connection; idempotent."""
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
