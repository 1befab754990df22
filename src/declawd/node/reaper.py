"""The timeout reaper: sandboxes past their deadline are killed (or paused, when their
lifecycle says so), dead ones are reported.

Once a second it acts on every running sandbox whose `end_at` has passed, and probes the
envd socket of each running sandbox not probed for `PROBE_EVERY_S` (a non-blocking connect,
on a worker thread: with 500 sandboxes, probing all of them every second on the event loop
took a tenth of the server's CPU and delayed every request behind it); a sandbox whose
container died on its own (under runsc an OOM or pids limit kills the whole gVisor sandbox)
is killed with an error that says so, never shown as running. Teardowns that failed are
retried here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from declawd.host.unixsock import accepts as envd_listening  # the probe, by name
from declawd.node.parts import NodeParts
from declawd.node.release import release_and_record
from declawd.store import SandboxRecord, SandboxState

log = logging.getLogger(__name__)

RETRY_RELEASE_AFTER_S = 60.0
PROBE_EVERY_S = 5.0  # how often each running sandbox's envd socket is probed


class Reaper:
    def __init__(
        self,
        parts: NodeParts,
        kill: Callable[[str, str | None], Awaitable[bool]],
        spawn: Callable[[Coroutine[Any, Any, Any]], object],
        *,
        pause: Callable[[str], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.parts = parts
        self._kill = kill
        self._pause = pause
        self._spawn = spawn
        self._clock = clock
        self._busy: set[str] = set()
        self._retry_at: dict[str, float] = {}
        self._probed_at: dict[str, float] = {}

    async def run(self, interval: float = 1.0) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("reaper")
            await asyncio.sleep(interval)

    async def tick(self) -> None:
        now = self._clock()
        records = await asyncio.to_thread(
            self.parts.store.list_unreleased_sandboxes, self.parts.settings.node_id
        )
        self._probed_at = {
            r.sandbox_id: self._probed_at[r.sandbox_id]
            for r in records
            if r.sandbox_id in self._probed_at
        }
        to_probe: list[SandboxRecord] = []
        for rec in records:
            if rec.sandbox_id in self._busy:
                continue
            if rec.state is SandboxState.RUNNING and rec.end_at is not None and rec.end_at <= now:
                if rec.on_timeout == "pause" and self._pause is not None:
                    log.info("sandbox %s reached its timeout; pausing it", rec.sandbox_id)
                    self._start(rec.sandbox_id, self._pause(rec.sandbox_id))
                else:
                    log.info("sandbox %s reached its timeout", rec.sandbox_id)
                    self._start(rec.sandbox_id, self._kill(rec.sandbox_id, None))
            elif rec.state is SandboxState.RUNNING:
                if now - self._probed_at.get(rec.sandbox_id, -PROBE_EVERY_S) >= PROBE_EVERY_S:
                    to_probe.append(rec)
            elif rec.state is SandboxState.KILLED:
                due = self._retry_at.setdefault(
                    rec.sandbox_id, (rec.killed_at or now) + RETRY_RELEASE_AFTER_S
                )
                if now >= due:
                    self._retry_at[rec.sandbox_id] = now + RETRY_RELEASE_AFTER_S
                    self._start(rec.sandbox_id, release_and_record(self.parts, rec))
        if to_probe:
            for rec in to_probe:
                self._probed_at[rec.sandbox_id] = now
            sockets = [self.parts.host.resources(r.sandbox_id).envd_socket for r in to_probe]
            quiet = await asyncio.to_thread(lambda: [not envd_listening(p) for p in sockets])
            for rec, silent in zip(to_probe, quiet, strict=True):
                if silent and rec.sandbox_id not in self._busy:
                    self._start(rec.sandbox_id, self._reap_if_dead(rec))

    def _start(self, sandbox_id: str, work: Awaitable[object]) -> None:
        self._busy.add(sandbox_id)

        async def run() -> None:
            try:
                await work
            finally:
                self._busy.discard(sandbox_id)

        self._spawn(run())

    async def _reap_if_dead(self, rec: SandboxRecord) -> None:
        runtime = self.parts.runtimes[rec.runtime]
        state = await runtime.state(rec.sandbox_id)
        if state == "running":
            return
        log.warning("sandbox %s died (runtime state %s); cleaning up", rec.sandbox_id, state)
        await self._kill(
            rec.sandbox_id,
            f"sandbox died: its container is {state or 'gone'} "
            "(out of memory or pids limit under runsc, or envd exited)",
        )
