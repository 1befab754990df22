"""Benchmark: the prompt-injection detector on its corpus (tests/data/injection), offline.

Figures: detection rate on the heldout split at the lowest threshold whose false-positive
rate there is <= 1%, and at the default threshold (0.95) for each mode; the false-positive
rate; recall per category (balanced, 0.95); throughput (MB/s) over the whole corpus and the
p50/p95 time per 4 KB text (all texts, benign only, attacks only), each against
normalisation alone (the floor of any scan); and the time for a ~4 KB benign JSON chat
completion request, scanned as one text and value by value (as the proxy's stage does).
No pass/fail: goals are printed next to the figures.
Usage: .venv/bin/python bench/bench_guard_injection.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import Report, header, pct

from declawd.guard.injection.config import InjectionGuard
from declawd.guard.injection.detect import detect
from declawd.guard.injection.modes import MODES
from declawd.guard.injection.normalize import normalise
from declawd.guard.injection.rules import CATEGORIES

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "injection" / "corpus.jsonl"
GOALS = {
    "detection at FPR <= 1%": ">= 0.90",
    "FPR at 0.95": "<= 0.01",
    "per 4 KB benign text p50": "<= 0.25 ms",
}
SYSTEM = "You are a helpful assistant for Acme. Answer briefly and cite the documents."


def _rows() -> list[dict[str, object]]:
    return [json.loads(line) for line in CORPUS.read_text().splitlines()]


def _threshold_at_fpr(neg_scores: list[float], max_fpr: float) -> float:
    """The lowest threshold (among the benign scores, plus 1.0) with FPR <= max_fpr."""
    for t in sorted({*neg_scores, 1.0}):
        if t > 0 and sum(s >= t for s in neg_scores) / len(neg_scores) <= max_fpr:
            return t
    return 1.0


def _timed(fn, texts: list[str], rounds: int) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    per: list[float] = []
    start = time.perf_counter()
    for _ in range(rounds):
        for t in texts:
            t0 = time.perf_counter()
            fn(t)
            per.append((time.perf_counter() - t0) * 1000)
    return time.perf_counter() - start, per


def _four_kb(texts: list[str]) -> list[str]:
    return [(t * (4096 // max(1, len(t)) + 1))[:4096] for t in texts]


def _chat_bodies(texts: list[str], n: int) -> list[str]:
    """`n` benign chat completion requests of ~4 KB (JSON): a system prompt, then user and
    assistant turns made of consecutive benign corpus texts, the last one cut to fit."""
    bodies: list[str] = []
    for i in range(n):
        messages = [{"role": "system", "content": SYSTEM}]
        k = i
        while True:
            role = "user" if len(messages) % 2 else "assistant"
            messages.append({"role": role, "content": texts[k % len(texts)]})
            k += 1
            body = json.dumps({"model": "gpt-4o-mini", "messages": messages, "stream": False})
            if len(body) >= 4096:
                over = len(body) - 4096
                last = messages[-1]["content"]
                messages[-1]["content"] = last[: max(0, len(last) - over)]
                break
        bodies.append(json.dumps({"model": "gpt-4o-mini", "messages": messages}))
    return bodies


def _strings(doc: object) -> list[str]:
    """The string values of a JSON document (keys are not scanned), depth first."""
    if isinstance(doc, str):
        return [doc]
    if isinstance(doc, dict):
        return [s for v in doc.values() for s in _strings(v)]
    if isinstance(doc, list):
        return [s for v in doc for s in _strings(v)]
    return []


def main(quick: bool) -> Report:
    rows = _rows()
    held = [r for r in rows if r["split"] == "heldout"]
    pos = [str(r["text"]) for r in held if r["label"]]
    neg = [str(r["text"]) for r in held if not r["label"]]
    report = Report("guard_injection", params={"quick": quick, "heldout": len(held)})
    header("detection on the heldout split")
    g = InjectionGuard()
    pos_scores = [detect(t, g).score for t in pos]
    neg_scores = [detect(t, g).score for t in neg]
    t1 = _threshold_at_fpr(neg_scores, 0.01)
    hit = sum(s >= t1 for s in pos_scores) / len(pos)
    report.add("detection at FPR <= 1% (balanced)", hit, 0.90, "rate", "goal")
    report.add("  that threshold", t1, 0.95, "", "default threshold")
    for mode in MODES:
        gm = InjectionGuard(mode=mode)
        tp = sum(detect(t, gm).detected for t in pos) / len(pos)
        fp = sum(detect(t, gm).detected for t in neg) / len(neg)
        report.add(f"detection at 0.95, {mode}", tp, 0.90, "rate", "goal")
        report.add(f"FPR at 0.95, {mode}", fp, 0.01, "rate", "goal (max)")
    header("recall per category (heldout, balanced, 0.95)")
    for cat in CATEGORIES:
        texts = [str(r["text"]) for r in held if r["label"] and r["category"] == cat]
        if texts:
            rate = sum(detect(t, g).detected for t in texts) / len(texts)
            report.add(f"recall {cat} (n={len(texts)})", rate, 0.90, "rate", "goal")
    header("throughput")
    texts = [str(r["text"]) for r in rows]
    size = sum(len(t.encode()) for t in texts)
    rounds = 2 if quick else 10
    spent, _ = _timed(lambda t: detect(t, g), texts, rounds)
    base, _ = _timed(normalise, texts, rounds)
    report.add(
        "corpus throughput",
        size * rounds / spent / 1e6,
        size * rounds / base / 1e6,
        "MB/s",
        "normalise only",
    )
    step = 4 if quick else 1
    reps = 1 if quick else 3
    four = _four_kb(texts[::step])
    _, per = _timed(lambda t: detect(t, g), four, reps)
    _, per_base = _timed(normalise, four, reps)
    report.add_pcts("per 4 KB text", per, per_base, "ms", "normalise only")
    benign = [str(r["text"]) for r in rows if not r["label"]]
    attacks = [str(r["text"]) for r in rows if r["label"]]
    for name, group in (("benign", benign), ("attack", attacks)):
        four = _four_kb(group[::step])
        _, per = _timed(lambda t: detect(t, g), four, reps)
        _, per_base = _timed(normalise, four, reps)
        report.add_pcts(f"per 4 KB {name} text", per, per_base, "ms", "normalise only")
        if name == "benign":
            report.add("per 4 KB benign text p50 (goal)", pct(per, 50), 0.25, "ms", "goal (max)")
    bodies = _chat_bodies(benign, 40 if quick else 200)
    _, per = _timed(lambda t: detect(t, g), bodies, reps)
    _, per_base = _timed(normalise, bodies, reps)
    _, per_values = _timed(lambda t: [detect(v, g) for v in _strings(json.loads(t))], bodies, reps)
    report.add_pcts("4 KB JSON chat body, whole", per, per_base, "ms", "normalise only")
    report.add_pcts("4 KB JSON chat body, per value", per_values, per, "ms", "whole body")
    report.extra["goals"] = GOALS
    report.write()
    return report


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    main(ap.parse_args().quick)
