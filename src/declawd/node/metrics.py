"""Metrics over time: every live sandbox sampled each interval into the store's series.

`MetricsSampler` reads each running or paused sandbox with the node's own reader
(`Node.metrics`: cgroup counters and the upper dir's size) in a worker thread, and stores
the samples of the sandboxes still live after the reads: a sandbox killed mid-tick gets no
sample and no session state back. A paused sandbox is sampled with CPU 0. Retention: a
series lives as long as its sandbox, and `retention_s` more once it is killed (a restore
under the same id within that time continues it); at most `keep` samples per sandbox.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from declawd.errors import InvalidInput
from declawd.node.parts import NodeParts
from declawd.store import SandboxRecord, SandboxState, Store
from declawd.store.metrics import MetricsSample

log = logging.getLogger(__name__)

Reader = Callable[[SandboxRecord], Mapping[str, float]]

SAMPLED_STATES = (SandboxState.RUNNING, SandboxState.PAUSED)
# One day at the default 5 s interval: the longest timeout (max_timeout) fits whole.
MAX_SAMPLES_PER_SANDBOX = 17_280
KILLED_RETENTION_S = 3600.0
PRUNE_EVERY_S = 300.0


def read_sample(read: Reader, rec: SandboxRecord, ts: float) -> MetricsSample:
    """One sample of `rec` now (blocking); OSError if its cgroup or disk is gone."""
    m = read(rec)
    return MetricsSample(
        sandbox_id=rec.sandbox_id,
        ts=round(ts, 6),
        # A frozen sandbox uses no CPU; say so rather than what the counters' noise says.
        cpu_usage_percent=0.0
        if rec.state is SandboxState.PAUSED
        else float(m["cpu_usage_percent"]),
        memory_usage_mb=float(m["memory_usage_mb"]),
        disk_usage_mb=float(m["disk_usage_mb"]),
    )


def parse_instant(value: str | None, field: str) -> float | None:
    """An ISO 8601 bound of a range as epoch seconds; naive means UTC (the SDK sends
    `datetime.isoformat()` of whatever it was given)."""
    if value is None or value == "":
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(field, f"not an ISO 8601 date-time: {value!r}") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def parse_range(start: str | None, end: str | None) -> tuple[float | None, float | None]:
    """The `start` and `end` query parameters of a metrics read, checked."""
    lo, hi = parse_instant(start, "start"), parse_instant(end, "end")
    if lo is not None and hi is not None and hi < lo:
        raise InvalidInput("end", "must not be before start")
    return lo, hi


def series(
    store: Store,
    read: Reader,
    rec: SandboxRecord,
    start: float | None,
    end: float | None,
    now: float,
) -> list[MetricsSample]:
    """The stored samples of `rec` in [start, end], plus one taken now when the range
    includes now and the sandbox can be read (blocking). Timestamps strictly increase."""
    out = store.metrics_series(rec.sandbox_id, start=start, end=end)
    if rec.state not in SAMPLED_STATES:
        return out
    if (start is not None and start > now) or (end is not None and end < now):
        return out
    if out and out[-1].ts >= round(now, 6):
        return out
    try:
        out.append(read_sample(read, rec, now))
    except OSError as exc:
        # Gone between the lookup and the read (killed, or died): the stored series stands.
        log.debug("metrics of %s: no fresh sample: %s", rec.sandbox_id, exc)
    return out


class MetricsSampler:
    """Samples every running or paused sandbox every `interval_s` seconds."""

    def __init__(
        self,
        parts: NodeParts,
        interval_s: float,
        read: Reader,
        *,
        clock: Callable[[], float] = time.time,
        retention_s: float = KILLED_RETENTION_S,
        keep: int = MAX_SAMPLES_PER_SANDBOX,
    ) -> None:
        if not interval_s > 0:
            raise ValueError("interval_s: must be positive")
        self.parts = parts
        self.interval_s = interval_s
        self._read = read
        self._clock = clock
        self.retention_s = retention_s
        self.keep = keep
        self._prune_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[tuple[list[MetricsSample], list[str]]] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        """Stop sampling; returns once no pass is still writing (a cancelled await of a
        thread does not stop the thread: its write is waited for)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            await asyncio.gather(inflight, return_exceptions=True)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            try:
                await self.tick()
                if self._prune_at is None or self._clock() >= self._prune_at:
                    await asyncio.to_thread(self.prune)
                    self._prune_at = self._clock() + PRUNE_EVERY_S
            except Exception:
                log.exception("metrics sampler")
            # A fixed cadence (not sleep-after-work), skipping ticks a slow pass overran.
            due += self.interval_s
            due = max(due, loop.time())
            await asyncio.sleep(due - loop.time())

    async def tick(self) -> list[MetricsSample]:
        """Sample every running or paused sandbox once; returns the samples stored."""
        self._inflight = asyncio.get_running_loop().run_in_executor(None, self._sample_all)
        stored, gone = await asyncio.shield(self._inflight)
        self._inflight = None
        for sandbox_id in gone:
            # Our read may have put CPU baseline state back after the kill dropped it.
            await self.parts.sessions.drop(sandbox_id)
        return stored

    def _sample_all(self) -> tuple[list[MetricsSample], list[str]]:
        store = self.parts.store
        taken: list[MetricsSample] = []
        for rec in store.list_live_sandboxes(self.parts.settings.node_id):
            if rec.state not in SAMPLED_STATES or rec.pooled:
                continue
            try:
                taken.append(read_sample(self._read, rec, self._clock()))
            except OSError as exc:
                log.debug("metrics of %s: not sampled: %s", rec.sandbox_id, exc)
            except Exception:
                log.exception("metrics of %s: not sampled", rec.sandbox_id)
        live = store.live_sandbox_ids(self.parts.settings.node_id)
        stored = [s for s in taken if s.sandbox_id in live]
        store.add_metrics_samples(stored)
        return stored, [s.sandbox_id for s in taken if s.sandbox_id not in live]

    def prune(self) -> None:
        """Retention and the per-sandbox bound (blocking)."""
        store = self.parts.store
        dropped = store.delete_metrics_of_killed(self._clock() - self.retention_s)
        for rec in store.list_live_sandboxes(self.parts.settings.node_id):
            dropped += store.trim_metrics(rec.sandbox_id, self.keep)
        if dropped:
            log.info("metrics: %d old samples dropped", dropped)
