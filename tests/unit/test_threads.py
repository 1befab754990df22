"""Lanes (declawd/threads.py): a heartbeat is not queued behind blocked calls on the
shared pool."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from declawd.threads import Lane


def test_a_lane_answers_while_every_shared_worker_is_blocked() -> None:
    async def main() -> str:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(2))
        gate = threading.Event()
        blocked = [asyncio.ensure_future(asyncio.to_thread(gate.wait)) for _ in range(4)]
        lane = Lane("beat")
        try:
            queued = asyncio.ensure_future(asyncio.to_thread(lambda: "shared"))
            got = await asyncio.wait_for(lane.run(lambda who: f"lane {who}", who="ok"), 5)
            assert not queued.done()  # the shared pool is full: it waits there
            return got
        finally:
            gate.set()
            await asyncio.gather(*blocked)
            lane.close()

    assert asyncio.run(main()) == "lane ok"
