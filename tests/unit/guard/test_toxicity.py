"""Toxicity: the SDK section's validation, the detector (worst segment, bounded segments, one
model per process), the stage (both ways, log_only, block, domains), the stream's sentence
hold-back, and the measured quality on the frozen corpus (pinned, so a model update that
moves it shows)."""

from __future__ import annotations

import importlib.util
import json
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from declawd.errors import InvalidInput
from declawd.guard import toxicity
from declawd.guard.toxicity import (
    ToxicityGuard,
    ToxicityStage,
    ToxicStream,
    parse_toxicity,
    score,
    segments,
)
from declawd.inspect.bodies import rewrite_text_or_json
from declawd.inspect.pipeline import Blocked, ExchangeState

CORPUS = Path(__file__).resolve().parents[2] / "data" / "toxicity"
TOXIC = "You are a fucking idiot and everyone hates you."
BENIGN = "Kill the process with kill -9 if the build server hangs."


# The SDK section ---------------------------------------------------------------------------


def test_parse_defaults_and_normalised_shape() -> None:
    assert parse_toxicity({}) == ({"enabled": False, "threshold": 0.9, "action": "block"}, None)
    out, guard = parse_toxicity(
        {"enabled": True, "threshold": 0.75, "action": "log_only", "domains": ["~.*\\.ai"]}
    )
    assert out == {
        "enabled": True,
        "threshold": 0.75,
        "action": "log_only",
        "domains": ["~.*\\.ai"],
    }
    assert guard == ToxicityGuard(0.75, "log_only", ("~.*\\.ai",))
    assert parse_toxicity(True) == (
        {"enabled": True, "threshold": 0.9, "action": "block"},
        ToxicityGuard(),
    )
    assert parse_toxicity({"threshold": 1})[0]["threshold"] == 1.0


@pytest.mark.parametrize(
    ("raw", "field", "reason"),
    [
        ({"threshold": -0.1}, "security.toxicity.threshold", "must be between 0 and 1"),
        (
            {"threshold": None, "action": "redact"},
            "security.toxicity.action",
            "must be 'block' or 'log_only'",
        ),
        ({"threshold": [1]}, "security.toxicity.threshold", "must be between 0 and 1"),
        ({"domains": "a.com"}, "security.toxicity.domains", "must be an array of strings"),
        ({"domains": ["a.com", 5]}, "security.toxicity.domains[1]", "must be a non-empty string"),
        ({"enabled": 1}, "security.toxicity.enabled", "must be a boolean"),
        ("on", "security.toxicity", "must be an object"),
    ],
)
def test_parse_errors_name_the_field(raw: Any, field: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as e:
        parse_toxicity(raw)
    assert (e.value.field, e.value.reason) == (field, reason)


def test_the_label_prefixes_fields() -> None:
    with pytest.raises(InvalidInput) as e:
        parse_toxicity({"domains": ["~[bad"]}, "security.policy_json.toxicity")
    assert e.value.field == "security.policy_json.toxicity.domains[0]"


def test_wire_round_trip_and_domains() -> None:
    g = ToxicityGuard(0.8, "log_only", ("*.openai.com",))
    assert ToxicityGuard.from_wire(json.loads(json.dumps(g.to_wire()))) == g
    assert ToxicityGuard.from_wire({"threshold": 0.9}) == ToxicityGuard()
    assert ToxicityGuard.from_wire({}) is None
    assert g.applies_to("api.openai.com") and not g.applies_to("example.com")
    assert ToxicityGuard().applies_to("anything") and ToxicityGuard().applies_to(None)


# The detector ------------------------------------------------------------------------------


def test_scores_separate_an_insult_from_a_technical_kill() -> None:
    assert score(TOXIC).score >= 0.9
    assert score(BENIGN).score < 0.9  # not flagged at the default, though "kill" scores 0.59
    assert score("Please restart the build server if it hangs.").score < 0.2
    assert score("").segments == 0 and score("").score == 0.0
    assert score("!!! ... 123").segments == 0  # no word, nothing to score


def test_one_insult_in_a_long_answer_is_its_worst_segment() -> None:
    filler = " ".join(["The deployment finished and the tests passed on every platform."] * 60)
    text = f"{filler} {TOXIC} {filler}"
    s = score(text)
    assert s.score >= 0.9 and s.flagged == 1 and s.segments == 121
    assert toxicity.score_whole([text])[0] < 0.5  # diluted when scored whole


def test_segments_split_sentences_and_lines_and_are_bounded() -> None:
    assert segments("One here. Two there!\nThree (yes)? four") == [
        "One here.",
        "Two there!",
        "Three (yes)?",
        "four",
    ]
    long = "word " * 1000
    assert all(len(p) <= toxicity.MAX_SEGMENT for p in segments(long))
    assert sum(len(p) for p in segments(long)) == len(long)


def test_the_model_loads_once_across_threads() -> None:
    seen: list[tuple[Any, Any]] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        seen.append(toxicity.MODEL.parts())
        score(TOXIC)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({(id(a), id(b)) for a, b in seen}) == 1


# The stage ---------------------------------------------------------------------------------


def test_log_only_records_both_ways_and_passes_the_text() -> None:
    x = ExchangeState()
    stage = ToxicityStage(ToxicityGuard(action="log_only"), "api.x")
    out_pass, in_pass = stage.start(x, "outbound"), stage.start(x, "inbound")
    assert out_pass is not None and in_pass is not None
    assert out_pass.apply(BENIGN) == BENIGN
    assert in_pass.apply(TOXIC) == TOXIC
    r = x.scratch["scan_results"]["toxicity"]
    assert r["detected"] is True and r["score"] >= 0.9 and r["ways"] == ["inbound"]
    assert (r["categories"], r["action"], r["threshold"]) == (["toxic"], "log_only", 0.9)
    assert TOXIC not in json.dumps(x.scratch["scan_results"])


def test_block_raises_toxicity_detected_without_the_text() -> None:
    x = ExchangeState()
    p = ToxicityStage(ToxicityGuard(), "h").start(x, "outbound")
    assert p is not None
    assert p.apply(BENIGN) == BENIGN
    with pytest.raises(Blocked) as e:
        rewrite_text_or_json(json.dumps({"messages": [{"content": TOXIC}]}), p.apply)
    assert (e.value.error, e.value.status) == ("toxicity_detected", 403)
    assert "idiot" not in e.value.reason
    assert x.scratch["scan_results"]["toxicity"]["detected"] is True


def test_a_benign_exchange_is_recorded_undetected() -> None:
    x = ExchangeState()
    p = ToxicityStage(ToxicityGuard(), "h").start(x, "inbound")
    assert p is not None
    p.apply(BENIGN)
    r = x.scratch["scan_results"]["toxicity"]
    assert (r["detected"], r["categories"], r["ways"]) == (False, [], [])


def test_the_stage_is_off_outside_its_domains_and_without_a_guard() -> None:
    x = ExchangeState()
    assert ToxicityStage(ToxicityGuard(domains=("a.com",)), "b.com").start(x, "inbound") is None
    assert ToxicityStage(None, "a.com").start(x, "outbound") is None


# The stream --------------------------------------------------------------------------------


def pieces(s: ToxicStream, text: str, seed: int) -> str:
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(text):
        n = rng.randint(1, 12)
        out.append(s.feed(text[i : i + n]))
        i += n
    return "".join(out) + s.flush()


@pytest.mark.parametrize("hold", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_a_stream_passes_the_text_and_scores_whole_sentences(hold: bool, seed: int) -> None:
    text = "First sentence here. Second one!\nThird line without end"
    seen: list[str] = []
    assert pieces(ToxicStream(hold, seen.append), text, seed) == text
    assert "".join(seen) == text
    assert all(
        p.strip() in {"First sentence here.", "Second one!", "Third line without end"}
        or p.count(".") + p.count("!") > 1
        for p in seen
    )


def test_under_hold_a_toxic_sentence_is_refused_before_it_passes() -> None:
    x = ExchangeState()
    p = ToxicityStage(ToxicityGuard(), "h").start(x, "inbound")
    assert p is not None
    s = p.stream()
    assert s.feed("All good here. ") == ""  # the boundary may still grow
    assert s.feed("Next") == "All good here. "
    with pytest.raises(Blocked):
        s.feed(f" part. {TOXIC} And more.")


def test_a_stream_without_sentence_ends_is_released_past_the_hold() -> None:
    seen: list[str] = []
    s = ToxicStream(True, seen.append, limit=50)
    assert s.feed("a" * 30) == ""
    assert s.feed("b" * 30) == "a" * 30 + "b" * 30 and len(seen) == 1


# The corpus and its measured quality -------------------------------------------------------


def _rows() -> list[dict[str, Any]]:
    with (CORPUS / "corpus.jsonl").open() as fh:
        return [json.loads(line) for line in fh]


def test_the_corpus_is_frozen_and_large_enough() -> None:
    spec = importlib.util.spec_from_file_location("tox_corpus", CORPUS / "build_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = _rows()
    assert module.build() == rows
    assert sum(r["label"] == 1 for r in rows) >= 200
    assert sum(r["label"] == 0 for r in rows) >= 200
    fams: dict[str, set[str]] = {}
    for r in rows:
        fams.setdefault(r["family"], set()).add(r["split"])
    assert all(len(s) == 1 for s in fams.values())


def _pr(rows: list[dict[str, Any]], threshold: float) -> tuple[float, float]:
    hits = [(score(r["text"]).score >= threshold, r["label"] == 1) for r in rows]
    tp = sum(h and y for h, y in hits)
    fp = sum(h and not y for h, y in hits)
    fn = sum(not h and y for h, y in hits)
    return tp / (tp + fp), tp / (tp + fn)


def test_measured_quality_is_what_the_docs_report() -> None:
    """docs/guardrails-quality.md: dev P 0.96 R 0.85, heldout P 1.00 R 0.55 at 0.9 (so the
    section stays 501: threats and harassment without abusive words are missed)."""
    rows = _rows()
    dev = _pr([r for r in rows if r["split"] == "dev"], 0.9)
    held = _pr([r for r in rows if r["split"] == "heldout"], 0.9)
    assert dev == pytest.approx((0.962, 0.853), abs=0.03)
    assert held == pytest.approx((1.0, 0.55), abs=0.03)
