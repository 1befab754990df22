"""Threads of their own for calls that prove liveness.

asyncio's default executor has `min(32, cpus + 4)` threads: 6 on a 2-core machine. A node
sends its blob store copies, lock waits and store calls there (`asyncio.to_thread`), and
some of those wait for seconds (a layer on NFS, a lock another build holds); six of them
queue everything else behind them. A cluster test saw a node's heartbeat held up that way
for over 3 s and the node declared lost mid-build. A heartbeat's blocking part runs on a
`Lane` instead. (A larger shared pool was tried: every worker thread that touches SQLite
keeps a connection, and the server's open files grew with its concurrency.)
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


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
