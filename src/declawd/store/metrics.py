"""The metrics series of each sandbox: one row per sample in `sandbox_metrics`.

The node's sampler (node/metrics.py) adds a sample of every live sandbox each interval;
`GET /sandboxes/{id}/metrics` reads a range of them, oldest first. Timestamps are epoch
seconds rounded to the microsecond, so a timestamp read back from the API (ISO, 6 digits)
names its row exactly. Rows stay bounded: `trim_metrics` keeps a sandbox's newest `keep`,
`delete_metrics_of_killed` drops the series of sandboxes killed before a cutoff.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from declawd.store.records import Repository


@dataclass(frozen=True)
class MetricsSample:
    """A sandbox's resource use at one instant (the SDK's `SandboxMetrics`)."""

    sandbox_id: str
    ts: float
    cpu_usage_percent: float
    memory_usage_mb: float
    disk_usage_mb: float


_COLUMNS = "sandbox_id, ts, cpu_usage_percent, memory_usage_mb, disk_usage_mb"


class Metrics(Repository):
    def add_metrics_samples(self, samples: Sequence[MetricsSample]) -> None:
        """Store samples in one transaction; a second sample of a sandbox at the same
        instant is ignored (the first one stands)."""
        if not samples:
            return
        with self._db.write() as c:
            c.executemany(
                f"INSERT INTO sandbox_metrics ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                [
                    (
                        s.sandbox_id,
                        round(s.ts, 6),
                        s.cpu_usage_percent,
                        s.memory_usage_mb,
                        s.disk_usage_mb,
                    )
                    for s in samples
                ],
            )

    def metrics_series(
        self, sandbox_id: str, *, start: float | None = None, end: float | None = None
    ) -> list[MetricsSample]:
        """The sandbox's samples with start <= ts <= end (either bound optional), oldest first."""
        where = ["sandbox_id = ?"]
        params: list[object] = [sandbox_id]
        if start is not None:
            where.append("ts >= ?")
            params.append(round(start, 6))
        if end is not None:
            where.append("ts <= ?")
            params.append(round(end, 6))
        rows = self._db.query(
            f"SELECT {_COLUMNS} FROM sandbox_metrics WHERE {' AND '.join(where)} ORDER BY ts",
            params,
        )
        return [MetricsSample(*tuple(r)) for r in rows]

    def delete_metrics(self, sandbox_id: str) -> int:
        """Drop a sandbox's whole series; returns how many samples went."""
        with self._db.write() as c:
            return c.execute(
                "DELETE FROM sandbox_metrics WHERE sandbox_id = ?", (sandbox_id,)
            ).rowcount

    def trim_metrics(self, sandbox_id: str, keep: int) -> int:
        """Keep only the sandbox's newest `keep` samples; returns how many older ones went."""
        if keep < 1:
            raise ValueError("keep: must be at least 1")
        with self._db.write() as c:
            # The PK index (sandbox_id, ts) makes the OFFSET a walk of at most `keep` entries.
            return c.execute(
                "DELETE FROM sandbox_metrics WHERE sandbox_id = ? AND ts <= ("
                " SELECT ts FROM sandbox_metrics WHERE sandbox_id = ?"
                " ORDER BY ts DESC LIMIT 1 OFFSET ?)",
                (sandbox_id, sandbox_id, keep),
            ).rowcount

    def delete_metrics_of_killed(self, killed_before: float) -> int:
        """Drop the series of every sandbox killed before `killed_before` (epoch seconds);
        a sandbox restored since (live again) keeps its series."""
        with self._db.write() as c:
            return c.execute(
                "DELETE FROM sandbox_metrics WHERE sandbox_id IN ("
                " SELECT sandbox_id FROM sandboxes"
                " WHERE state = 'killed' AND COALESCE(killed_at, created_at) < ?)",
                (killed_before,),
            ).rowcount
