"""The corpus (tests/data/injection): its size, its frozen split, and the detector's floor on
it, so a regression of the rules fails here: >= 0.9 detection at <= 1% false positives."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from declawd.guard.injection.config import InjectionGuard
from declawd.guard.injection.detect import detect

DATA = Path(__file__).resolve().parents[4] / "tests" / "data" / "injection"
ROWS = [json.loads(line) for line in (DATA / "corpus.jsonl").read_text().splitlines()]


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen", DATA / "generate.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_corpus_size_and_frozen_split() -> None:
    assert sum(r["label"] for r in ROWS) >= 300
    assert sum(1 for r in ROWS if not r["label"]) >= 300
    gen = _generator()
    assert all(r["split"] == gen.split_of(r["id"]) for r in ROWS)
    assert len({r["id"] for r in ROWS}) == len(ROWS)
    assert [r["text"] for r in gen.build()] == [r["text"] for r in ROWS]  # reproducible


def test_detection_floor_on_dev_and_heldout() -> None:
    g = InjectionGuard()
    for split in ("dev", "heldout"):
        rows = [r for r in ROWS if r["split"] == split]
        pos = [r for r in rows if r["label"]]
        neg = [r for r in rows if not r["label"]]
        hit = sum(detect(r["text"], g).detected for r in pos) / len(pos)
        fpr = sum(detect(r["text"], g).detected for r in neg) / len(neg)
        assert hit >= 0.9 and fpr <= 0.01, (split, hit, fpr)
