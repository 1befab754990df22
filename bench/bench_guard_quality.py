"""Benchmark: the toxicity and code-security detectors' quality and cost, offline.

Quality on the frozen corpora (tests/data/toxicity, tests/data/codesec; split by template
family before any tuning): precision, recall and F1 on dev and heldout at the SDK default
threshold, the threshold with the best F1 on dev (ties: the higher one) and heldout at it,
and per-family flag rates. Toxicity also: scoring each text whole (the library as shipped)
against the worst sentence (ours), and long texts (about 4 KB of benign sentences with one
toxic sentence in the middle, against the same without it). Cost: the first scan (the model
or bandit's plugins loading) and the time per 4 KB text. Figures, then the ship/501 verdict
by the rule "precision and recall both >= 0.8 on heldout at the default or the recommended
(best-on-dev) threshold". No network, no server.
Usage: .venv/bin/python bench/bench_guard_quality.py [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from declawd.guard import codesec, toxicity  # noqa: E402

DATA = ROOT / "tests" / "data"
BAR = 0.8


def load(name: str) -> list[dict[str, Any]]:
    with (DATA / name / "corpus.jsonl").open() as fh:
        return [json.loads(line) for line in fh]


@dataclass(frozen=True)
class PR:
    threshold: float
    precision: float
    recall: float
    tp: int
    fp: int
    fn: int
    n: int

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def line(self) -> str:
        return (
            f"t={self.threshold:.2f}  P={self.precision:.3f}  R={self.recall:.3f}  "
            f"F1={self.f1:.3f}  (tp {self.tp}, fp {self.fp}, fn {self.fn}, n {self.n})"
        )

    def meets(self) -> bool:
        return self.precision >= BAR and self.recall >= BAR


def pr(scores: Sequence[float], labels: Sequence[int], threshold: float) -> PR:
    tp = sum(s >= threshold and y == 1 for s, y in zip(scores, labels, strict=True))
    fp = sum(s >= threshold and y == 0 for s, y in zip(scores, labels, strict=True))
    fn = sum(s < threshold and y == 1 for s, y in zip(scores, labels, strict=True))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return PR(threshold, precision, recall, tp, fp, fn, len(labels))


def best_on(scores: Sequence[float], labels: Sequence[int]) -> PR:
    grid = sorted({round(x / 100, 2) for x in range(5, 100)} | {round(s, 3) for s in scores})
    grid = [t for t in grid if 0 < t <= 1]
    return max((pr(scores, labels, t) for t in grid), key=lambda p: (p.f1, p.threshold))


def evaluate(
    name: str,
    rows: list[dict[str, Any]],
    score: Callable[[list[str]], list[float]],
    default: float,
    group: str = "family",
) -> dict[str, Any]:
    print(f"\n== {name}: {len(rows)} texts")
    by_split: dict[str, tuple[list[float], list[int], list[dict[str, Any]]]] = {}
    for split in ("dev", "heldout"):
        rs = [r for r in rows if r["split"] == split]
        by_split[split] = (score([r["text"] for r in rs]), [int(r["label"]) for r in rs], rs)
    dev_s, dev_y, _ = by_split["dev"]
    best = best_on(dev_s, dev_y)
    out: dict[str, Any] = {"default": default, "recommended": best.threshold}
    for split, (s, y, _) in by_split.items():
        pos = sum(y)
        print(f"  {split:8} ({pos} positive, {len(y) - pos} negative)")
        at_default, at_best = pr(s, y, default), pr(s, y, best.threshold)
        print(f"    at SDK default    {at_default.line()}")
        print(f"    at best-on-dev    {at_best.line()}")
        out[split] = {"default": vars(at_default), "recommended": vars(at_best)}
    print(f"  per {group} (flag rate at default {default} / at {best.threshold:.2f}):")
    groups: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for split, (s, _, rs) in by_split.items():
        for sc, r in zip(s, rs, strict=True):
            groups[(split, str(r[group]), int(r["label"]))].append(sc)
    for (split, fam, label), ss in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][1])):
        hit = sum(x >= default for x in ss) / len(ss)
        hit_best = sum(x >= best.threshold for x in ss) / len(ss)
        kind = "positive" if label else "negative"
        print(f"    {kind:8} {split:7} {fam:24} n={len(ss):3}  {hit:.2f} / {hit_best:.2f}")
    held = by_split["heldout"]
    ok_default = pr(held[0], held[1], default).meets()
    ok_best = pr(held[0], held[1], best.threshold).meets()
    out["ships"] = ok_default or ok_best
    out["ships_at"] = default if ok_default else best.threshold if ok_best else None
    return out


def timed(fn: Callable[[], Any], n: int) -> dict[str, float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return {
        "p50_ms": statistics.median(samples),
        "p95_ms": samples[min(len(samples) - 1, int(0.95 * len(samples)))],
        "n": n,
    }


def fill(pieces: list[str], size: int, rng: random.Random) -> str:
    out: list[str] = []
    while sum(len(p) + 1 for p in out) < size:
        out.append(rng.choice(pieces))
    return " ".join(out)


def long_texts(rows: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """One toxic sentence inside ~4 KB of benign ones: found whole vs by worst sentence."""
    rng = random.Random(7)
    benign = [r["text"] for r in rows if r["label"] == 0]
    toxic = [r["text"] for r in rows if r["label"] == 1]
    with_t, without = [], []
    for _ in range(n):
        base = fill(benign, 2000, rng)
        tail = fill(benign, 2000, rng)
        with_t.append(f"{base} {rng.choice(toxic)} {tail}")
        without.append(f"{base} {tail}")
    t = toxicity.DEFAULT_THRESHOLD
    whole_w, whole_o = toxicity.score_whole(with_t), toxicity.score_whole(without)
    seg_w = [toxicity.score(x).score for x in with_t]
    seg_o = [toxicity.score(x).score for x in without]
    res = {
        "n": n,
        "whole_recall": sum(s >= t for s in whole_w) / n,
        "whole_false_positive_rate": sum(s >= t for s in whole_o) / n,
        "sentence_recall": sum(s >= t for s in seg_w) / n,
        "sentence_false_positive_rate": sum(s >= t for s in seg_o) / n,
    }
    print(f"\n== toxicity, long texts (~4 KB benign + 1 toxic sentence), threshold {t}, n={n}")
    print(
        f"  whole text:     recall {res['whole_recall']:.2f}, "
        f"false positives on the benign-only texts {res['whole_false_positive_rate']:.2f}"
    )
    print(
        f"  worst sentence: recall {res['sentence_recall']:.2f}, "
        f"false positives on the benign-only texts {res['sentence_false_positive_rate']:.2f}"
    )
    return res


def costs(tox_rows: list[dict[str, Any]], code_rows: list[dict[str, Any]], n: int) -> Any:
    rng = random.Random(3)
    prose = fill([r["text"] for r in tox_rows], 4096, rng)[:4096]
    fenced = [r["text"] for r in code_rows if "```" in r["text"]]
    answer = fill(fenced, 4096, rng)
    bare = "\n".join(r["text"] for r in code_rows if r["wrapping"] == "bare")[:4096]
    bare = bare[: bare.rfind("\n") + 1]
    while not codesec._parses(bare):
        bare = bare[: bare.rstrip("\n").rfind("\n") + 1]
    t0 = time.perf_counter()
    toxicity.score("warm up")
    tox_load = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    codesec.scan("```python\nx = 1\n```")
    code_load = (time.perf_counter() - t0) * 1000
    res: dict[str, Any] = {
        "toxicity_first_call_ms": tox_load,
        "code_first_call_ms": code_load,
        "toxicity_4k_prose": timed(lambda: toxicity.score(prose), n),
        "code_4k_markdown_answer": timed(lambda: codesec.scan(answer), n),
        "code_4k_bare_python": timed(lambda: codesec.scan(bare), n),
        "code_4k_prose_no_code": timed(lambda: codesec.scan(prose), n),
        "sizes": {"prose": len(prose), "answer": len(answer), "bare": len(bare)},
    }
    print("\n== cost (this process, one thread)")
    print(f"  first toxicity call (model load): {tox_load:.0f} ms")
    print(f"  first code call (bandit plugins): {code_load:.0f} ms")
    for k in ("toxicity_4k_prose", "code_4k_markdown_answer", "code_4k_bare_python"):
        v = res[k]
        print(f"  {k:26} p50 {v['p50_ms']:.2f} ms  p95 {v['p95_ms']:.2f} ms  (n {v['n']})")
    v = res["code_4k_prose_no_code"]
    print(f"  {'code_4k_prose_no_code':26} p50 {v['p50_ms']:.3f} ms  p95 {v['p95_ms']:.3f} ms")
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer timing samples")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args()
    n = 30 if args.quick else 300
    tox_rows, code_rows = load("toxicity"), load("codesec")
    results: dict[str, Any] = {"cost": costs(tox_rows, code_rows, n)}
    results["toxicity"] = evaluate(
        "toxicity (alt-profanity-check, worst sentence)",
        tox_rows,
        lambda texts: [toxicity.score(t).score for t in texts],
        toxicity.DEFAULT_THRESHOLD,
    )
    results["toxicity_whole"] = evaluate(
        "toxicity (alt-profanity-check, whole text as shipped)",
        tox_rows,
        toxicity.score_whole,
        toxicity.DEFAULT_THRESHOLD,
    )
    results["toxicity_long"] = long_texts(tox_rows, 40 if args.quick else 200)
    results["code_security"] = evaluate(
        "code security (bandit + shell rules)",
        code_rows,
        lambda texts: [codesec.scan(t).score for t in texts],
        codesec.DEFAULT_THRESHOLD,
    )
    for row in code_rows:
        row["wrap"] = f"{row['language']}/{row['wrapping']}"
    evaluate(
        "code security, by wrapping",
        code_rows,
        lambda texts: [codesec.scan(t).score for t in texts],
        codesec.DEFAULT_THRESHOLD,
        group="wrap",
    )
    print("\n== verdict (P and R >= 0.8 on heldout at the default or best-on-dev threshold)")
    for key in ("toxicity", "code_security"):
        r = results[key]
        verdict = f"ships (at threshold {r['ships_at']})" if r["ships"] else "stays 501"
        print(f"  {key}: {verdict}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
