"""Metrics over time through the SDK: `get_metrics()` is a series sampled every interval
(5 s on the session server) over the sandbox's life, filtered by start/end, with a CPU
figure that sees a busy loop, CPU 0 while paused, and 404 once the sandbox is killed."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from declaw import NotFoundException, Sandbox, SandboxMetrics

pytestmark = pytest.mark.e2e

INTERVAL_S = 5.0  # the session server runs with the default metrics_interval_s


def _strictly_increasing(series: list[SandboxMetrics]) -> bool:
    return all(a.timestamp < b.timestamp for a, b in itertools.pairwise(series))


def test_metrics_are_a_series_over_the_sandboxes_life(server: dict[str, str], runtime: str) -> None:
    sbx = Sandbox.create(template="base", timeout=120, metadata={"declaw.runtime": runtime})
    try:
        time.sleep(2 * INTERVAL_S + 1)
        series = sbx.get_metrics()
        # Two samples by the sampler at least (its first one within an interval of the
        # create), and the one taken for this read.
        assert len(series) >= 3, series
        assert _strictly_increasing(series), series
        assert all(s.timestamp.tzinfo is not None for s in series)
        sampled = series[:-1]
        gaps = [(b.timestamp - a.timestamp).total_seconds() for a, b in itertools.pairwise(sampled)]
        assert all(INTERVAL_S - 1 < g < INTERVAL_S + 1.5 for g in gaps), gaps
        assert all(s.memory_usage_mb > 0 for s in series), series

        busy_from = datetime.now(UTC)
        sbx.commands.run("sh -c 'while :; do :; done'", background=True)
        time.sleep(INTERVAL_S + 1)
        later = sbx.get_metrics(start=busy_from)
        assert later and all(s.timestamp >= busy_from for s in later), later
        assert max(s.cpu_usage_percent for s in later) > 20, later
    finally:
        sbx.kill()


def test_start_and_end_select_the_stored_samples_between_them(server: dict[str, str]) -> None:
    sbx = Sandbox.create(template="base", timeout=120)
    try:
        time.sleep(3 * INTERVAL_S + 1)
        series = sbx.get_metrics()
        assert len(series) >= 4, series
        first, second, third = series[0], series[1], series[2]
        # The SDK sends naive datetimes as they are: the server reads them as UTC.
        naive = [t.timestamp.astimezone(UTC).replace(tzinfo=None) for t in (second, third)]
        between = sbx.get_metrics(start=naive[0], end=naive[1])
        assert [s.timestamp for s in between] == [second.timestamp, third.timestamp]
        assert between[0].cpu_usage_percent == second.cpu_usage_percent
        assert sbx.get_metrics(end=first.timestamp) == [first]
        after = sbx.get_metrics(start=third.timestamp + timedelta(microseconds=1))
        assert after and after[0].timestamp > third.timestamp
        assert sbx.get_metrics(start=datetime.now(UTC) + timedelta(hours=1)) == []
    finally:
        sbx.kill()


def test_bad_bounds_are_400_naming_the_field(api: httpx.Client) -> None:
    sbx = Sandbox.create(template="base", timeout=60)
    try:
        r = api.get(f"/sandboxes/{sbx.sandbox_id}/metrics", params={"start": "yesterday"})
        assert r.status_code == 400, r.text
        assert r.json() == {"message": "start: not an ISO 8601 date-time: 'yesterday'"}
        r = api.get(
            f"/sandboxes/{sbx.sandbox_id}/metrics",
            params={"start": "2030-01-02T00:00:00", "end": "2030-01-01T00:00:00"},
        )
        assert r.status_code == 400, r.text
        assert r.json() == {"message": "end: must not be before start"}
    finally:
        sbx.kill()


def test_a_paused_sandbox_is_sampled_at_cpu_0(server: dict[str, str]) -> None:
    sbx = Sandbox.create(template="base", timeout=120)
    try:
        sbx.commands.run("sh -c 'while :; do :; done'", background=True)
        sbx.pause()
        paused_from = datetime.now(UTC)
        time.sleep(INTERVAL_S + 1)
        series = sbx.get_metrics(start=paused_from)
        assert len(series) >= 2, series  # a sampler tick while paused, and this read's
        assert [s.cpu_usage_percent for s in series] == [0.0] * len(series)
        assert all(s.memory_usage_mb > 0 for s in series), series
        sbx.resume()
    finally:
        sbx.kill()


def test_a_killed_sandboxs_metrics_are_404(server: dict[str, str]) -> None:
    sbx = Sandbox.create(template="base", timeout=60)
    assert sbx.get_metrics()
    sbx.kill(wait=True)
    with pytest.raises(NotFoundException):
        sbx.get_metrics()
