"""`store_read`: SQLite reads run on the event loop, anything else on a worker thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from declawd.store import Store, store_read


def test_a_sqlite_read_runs_on_the_loop_thread_and_answers(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    team_id, key, _ = store.ensure_dev_key(tmp_path / "key")
    seen: list[threading.Thread] = []

    def authenticate(k: str) -> dict[str, str] | None:
        seen.append(threading.current_thread())
        return store.authenticate(k)

    async def main() -> tuple[dict[str, str] | None, threading.Thread]:
        return await store_read(store, authenticate, key), threading.current_thread()

    try:
        found, loop_thread = asyncio.run(main())
    finally:
        store.close()
    assert found is not None and found["team_id"] == team_id
    assert seen == [loop_thread]


def test_another_store_is_read_on_a_worker_thread() -> None:
    class Remote:
        dialect = "postgresql"

        def get(self) -> threading.Thread:
            return threading.current_thread()

    async def main() -> tuple[threading.Thread, threading.Thread]:
        r = Remote()
        return await store_read(r, r.get), threading.current_thread()

    worker, loop_thread = asyncio.run(main())
    assert worker is not loop_thread
