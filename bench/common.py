"""Shared figures for the benchmark suite: percentiles, the comparison table, JSON results.

Every figure a benchmark reports is a `Row`: a measured value next to a baseline measured in
the same run, with their ratio. `Report` prints rows as they come and writes them, with the
raw samples' summary and the run's parameters, to bench/results/<name>.json.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def pct(samples: list[float], q: float) -> float:
    """The q-th percentile (nearest rank), so p95 of 30 samples is a real sample."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5 - 1e-9)))
    return ordered[rank - 1]


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "p50": pct(samples, 50),
        "p95": pct(samples, 95),
        "mean": statistics.fmean(samples),
        "min": min(samples),
        "max": max(samples),
    }


@dataclass
class Row:
    metric: str
    value: float
    baseline: float
    unit: str
    baseline_label: str
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("inf")


@dataclass
class Report:
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    samples: dict[str, dict[str, float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def add(
        self,
        metric: str,
        value: float,
        baseline: float,
        unit: str,
        baseline_label: str,
        note: str = "",
    ) -> Row:
        row = Row(metric, value, baseline, unit, baseline_label, note)
        self.rows.append(row)
        ratio = f"x{row.ratio:7.2f}" if baseline else "   n/a"
        print(
            f"  {metric:44s} {_fmt(value):>10s} {unit:5s} | {baseline_label:30s} "
            f"{_fmt(baseline):>10s} {unit:5s} | {ratio}",
            flush=True,
        )
        return row

    def add_pcts(
        self,
        metric: str,
        samples: list[float],
        base: list[float],
        unit: str,
        baseline_label: str,
    ) -> None:
        """p50 and p95 rows for two sample sets; both sets' summaries kept for the JSON."""
        self.samples[metric] = summary(samples)
        self.samples[f"{metric} [baseline: {baseline_label}]"] = summary(base)
        for q in (50, 95):
            self.add(f"{metric} p{q}", pct(samples, q), pct(base, q), unit, baseline_label)

    def write(self) -> Path:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{self.name}.json"
        doc = {
            "name": self.name,
            "started": self.started,
            "seconds": round(time.time() - self.started, 1),
            "host": {"machine": platform.machine(), "cpus": os.cpu_count()},
            "params": self.params,
            "rows": [{**asdict(r), "ratio": r.ratio if r.baseline else None} for r in self.rows],
            "samples": self.samples,
            "extra": self.extra,
        }
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"  -> {path.relative_to(RESULTS_DIR.parent.parent)}", flush=True)
        return path


def header(title: str) -> None:
    print(f"\n== {title}", flush=True)
    print(f"  {'metric':44s} {'value':>16s} | {'baseline':30s} {'':>16s} | ratio", flush=True)


def _fmt(v: float) -> str:
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"
