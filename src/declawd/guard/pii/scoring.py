"""Span-level scoring of the detector on a labelled corpus (tests/data/pii/corpus.jsonl). Pure.

A prediction matches a gold span of the same type that it overlaps; each gold span and each
prediction counts once (greedy, in order). Precision = matched predictions / predictions,
recall = matched gold / gold, per type. Invariant: scores depend only on the records and
the detector, so the test suite and the bench report the same figures for the same split.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from declawd.guard.pii.detect import detect
from declawd.guard.pii.findings import TYPES, Finding


@dataclass(frozen=True)
class Span:
    type: str
    start: int
    end: int


@dataclass(frozen=True)
class Record:
    id: str
    text: str
    spans: tuple[Span, ...]
    split: str


@dataclass
class Tally:
    tp_pred: int = 0
    predicted: int = 0
    tp_gold: int = 0
    gold: int = 0
    misses: list[str] = field(default_factory=list)  # ids of records with an error

    @property
    def precision(self) -> float:
        return self.tp_pred / self.predicted if self.predicted else 1.0

    @property
    def recall(self) -> float:
        return self.tp_gold / self.gold if self.gold else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def load(path: Path, split: str | None = None) -> list[Record]:
    out = []
    for line in path.read_text().splitlines():
        raw: dict[str, Any] = json.loads(line)
        if split is not None and raw["split"] != split:
            continue
        spans = tuple(Span(s["type"], s["start"], s["end"]) for s in raw["spans"])
        out.append(Record(raw["id"], raw["text"], spans, raw["split"]))
    return out


def score(
    records: Iterable[Record],
    types: Sequence[str] = TYPES,
    find: Callable[[str], Sequence[Finding]] | None = None,
) -> Mapping[str, Tally]:
    """Per-type tallies of `find` (default: `detect` with `types`) over `records`."""
    finder = find or (lambda text: detect(text, types))
    tallies = {t: Tally() for t in types}
    for rec in records:
        preds = [f for f in finder(rec.text) if f.type in tallies]
        for t, tally in tallies.items():
            gold = [s for s in rec.spans if s.type == t]
            mine = [p for p in preds if p.type == t]
            used: set[int] = set()
            hit_pred = 0
            for p in mine:
                for i, g in enumerate(gold):
                    if i not in used and p.start < g.end and g.start < p.end:
                        used.add(i)
                        hit_pred += 1
                        break
            tally.predicted += len(mine)
            tally.tp_pred += hit_pred
            tally.gold += len(gold)
            tally.tp_gold += len(used)
            if hit_pred != len(mine) or len(used) != len(gold):
                tally.misses.append(rec.id)
    return tallies
