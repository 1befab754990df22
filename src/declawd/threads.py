"""Worker threads for blocking calls from the event loop.

asyncio's default executor has `min(32, cpus + 4)` threads: 6 on a 2-core machine. The
server sends every store call, blob store copy and lock wait there (`asyncio.to_thread`),
and some of those wait for seconds (a layer on NFS, a lock another build holds), so six
of them queue everything else behind them, heartbeats included: a cluster test saw a
node declared lost mid-build that way. The servers install a larger pool (threads that
wait cost a stack, not CPU), and what proves liveness runs on a `Lane` of its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

BLOCKING_THREADS = 64

P = ParamSpec("P")
T = TypeVar("T")


def install_blocking_pool(threads: int = BLOCKING_THREADS) -> ThreadPoolExecutor:
    """Give the running loop a default executor of `threads` workers (what `to_thread`
    and `run_in_executor(None, ...)` use). Call at start, from the loop."""
    pool = ThreadPoolExecutor(threads, thread_name_prefix="blocking")
    asyncio.get_running_loop().set_default_executor(pool)
    return pool


class Lane:
    """A few threads of their own for one kind of call (a heartbeat), so that work queued
    on the shared pool never delays it."""

    def __init__(self, name: str, threads: int = 1) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=name)

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
