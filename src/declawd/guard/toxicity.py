"""Toxicity: insulting, harassing or threatening text in traffic, scored, logged or refused.

The detector is alt-profanity-check's model (a TF-IDF vectoriser and a calibrated linear SVM
shipped in its wheel, trained on human-labelled toxic comments; MIT), loaded lazily once per
process. A text is cut into segments (sentences, and lines), each scored; the text's score
is its worst segment's, so one insult inside a long benign answer is not diluted away.
Measured on tests/data/toxicity (docs/guardrails-quality.md): the model is a profanity and
insult detector; threats and harassment worded without abusive words score low.

Invariant: pure but for the model, which is read-only once loaded (a lock guards the load;
scikit-learn's transform and predict_proba share it across threads); a scan reports scores,
never the text.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from declawd.errors import InvalidInput
from declawd.guard.codesec import domains_of, threshold_of
from declawd.inspect.model import domain_listed

if TYPE_CHECKING:
    from declawd.inspect.pipeline import ExchangeState, TextPass, TextStream, Way

Action = Literal["block", "log_only"]
ACTIONS: tuple[str, ...] = ("block", "log_only")
DEFAULT_THRESHOLD = 0.9
# Longest text scored (characters; past it only the first MAX_SCAN are), and the longest
# segment (a longer one is cut in windows), so a scan's cost stays linear and bounded.
MAX_SCAN = 1024 * 1024
MAX_SEGMENT = 400
# What a stream holds back waiting for a sentence end before it scores and releases anyway.
STREAM_HOLD = 2048

# A sentence ends at . ! ? (or a run of them) followed by space, or at a line break.
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\s*[\r\n]+\s*")
_WORD = re.compile(r"[^\W\d_]{2,}")


@dataclass(frozen=True)
class ToxicityGuard:
    """An enabled `ToxicityConfig`: flag text whose score reaches `threshold`."""

    threshold: float = DEFAULT_THRESHOLD
    action: Action = "block"
    domains: tuple[str, ...] | None = None

    def applies_to(self, host: str | None) -> bool:
        return domain_listed(self.domains, host)

    def to_wire(self) -> dict[str, Any]:
        domains = None if self.domains is None else list(self.domains)
        return {"threshold": self.threshold, "action": self.action, "domains": domains}

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any] | None) -> ToxicityGuard | None:
        if not raw:
            return None
        domains = raw.get("domains")
        return cls(
            threshold=float(raw.get("threshold", DEFAULT_THRESHOLD)),
            action=raw.get("action") or "block",
            domains=None if domains is None else tuple(str(d) for d in domains),
        )


def parse_toxicity(
    raw: Any, label: str = "security.toxicity"
) -> tuple[dict[str, Any], ToxicityGuard | None]:
    """`ToxicityConfig` normalised as its `to_dict()` writes it, and the guard if on."""
    if isinstance(raw, bool):
        raw = {"enabled": raw}
    if not isinstance(raw, Mapping):
        raise InvalidInput(label, "must be an object")
    enabled = raw.get("enabled", False)
    if enabled is None:
        enabled = False
    if not isinstance(enabled, bool):
        raise InvalidInput(f"{label}.enabled", "must be a boolean")
    threshold = threshold_of(raw, DEFAULT_THRESHOLD, label)
    action = raw.get("action", "block")
    if action not in ACTIONS:
        raise InvalidInput(f"{label}.action", "must be 'block' or 'log_only'")
    domains = domains_of(raw.get("domains"), f"{label}.domains")
    out: dict[str, Any] = {"enabled": enabled, "threshold": threshold, "action": action}
    if domains is not None:
        out["domains"] = list(domains)
    return out, ToxicityGuard(threshold, action, domains) if enabled else None


# The detector ---------------------------------------------------------------------------------


class _Model:
    """alt-profanity-check's vectoriser and classifier, loaded on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: tuple[Any, Any] | None = None

    def parts(self) -> tuple[Any, Any]:
        with self._lock:
            if self._parts is None:
                from profanity_check import profanity_check as pc

                self._parts = (pc.vectorizer, pc.model)
            return self._parts

    def probabilities(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        vectorizer, model = self.parts()
        probs = model.predict_proba(vectorizer.transform(list(texts)))
        return [float(p) for p in probs[:, 1]]


MODEL = _Model()


def segments(text: str) -> list[str]:
    """The pieces of `text` scored on their own: its sentences and lines, each cut in
    `MAX_SEGMENT`-character windows; pieces without a word are left out."""
    out = []
    for piece in _BOUNDARY.split(text[:MAX_SCAN]):
        for i in range(0, len(piece), MAX_SEGMENT):
            window = piece[i : i + MAX_SEGMENT]
            if _WORD.search(window):
                out.append(window)
    return out


@dataclass(frozen=True)
class Score:
    score: float
    segments: int
    flagged: int  # segments at or above the threshold asked for

    def to_wire(self) -> dict[str, Any]:
        return {"score": round(self.score, 4), "segments": self.segments, "flagged": self.flagged}


def score(text: str, threshold: float = DEFAULT_THRESHOLD) -> Score:
    """The text's toxicity in [0, 1]: its worst segment's probability."""
    parts = segments(text)
    probs = MODEL.probabilities(parts)
    return Score(max(probs, default=0.0), len(parts), sum(p >= threshold for p in probs))


def score_whole(texts: Sequence[str]) -> list[float]:
    """Each text scored as one document (the model as shipped; the bench's baseline)."""
    return MODEL.probabilities(texts)


# The pipeline stage (a `BodyStage`, structurally) -------------------------------------------


class ToxicityStage:
    """Both directions (what the agent sends, what comes back), for the hosts the guard
    applies to. The score lands in `x.scratch["scan_results"]["toxicity"]`; under `block` a
    text that reaches the threshold raises the pipeline's `Blocked("toxicity_detected")`."""

    def __init__(self, guard: ToxicityGuard | None, host: str | None) -> None:
        self._guard = guard if guard is not None and guard.applies_to(host) else None

    def start(self, x: ExchangeState, way: Way) -> TextPass | None:
        if self._guard is None:
            return None
        return _ToxicPass(self._guard, x, way)


class _ToxicPass:
    def __init__(self, guard: ToxicityGuard, x: ExchangeState, way: Way) -> None:
        self._guard, self._x, self._way = guard, x, way

    def apply(self, text: str) -> str:
        self._found(score(text, self._guard.threshold))
        return text

    def stream(self) -> TextStream:
        return ToxicStream(self._guard.action == "block", self._check)

    def _check(self, text: str) -> None:
        self._found(score(text, self._guard.threshold))

    def _found(self, s: Score) -> None:
        if not s.segments:
            return
        results = self._x.scratch.setdefault("scan_results", {})
        g = self._guard
        prev = results.get("toxicity") or {"score": 0.0, "ways": [], "segments": 0, "flagged": 0}
        hit = s.score >= g.threshold
        best = max(float(prev["score"]), s.score)
        ways = sorted({*prev["ways"], self._way}) if hit else prev["ways"]
        results["toxicity"] = {
            "detected": best >= g.threshold,
            "score": round(best, 4),
            "threshold": g.threshold,
            "action": g.action,
            "categories": ["toxic"] if best >= g.threshold else [],
            "ways": ways,
            "segments": int(prev["segments"]) + s.segments,
            "flagged": int(prev["flagged"]) + s.flagged,
        }
        if hit and g.action == "block":
            from declawd.inspect.pipeline import Blocked

            raise Blocked(
                f"toxic content (score {s.score:.2f} >= {g.threshold})", error="toxicity_detected"
            )


class ToxicStream:
    """Streamed text scored sentence by sentence: under `hold` (block) a sentence is
    released once scored, so nothing toxic passes before the check; text waits for a
    sentence end at most `STREAM_HOLD` characters, then is scored and released as it is.
    Without `hold` text passes at once and is scored on the way."""

    def __init__(self, hold: bool, check: Any, limit: int = STREAM_HOLD) -> None:
        self._hold, self._check, self._limit = hold, check, limit
        self._buf = ""

    def feed(self, text: str) -> str:
        self._buf += text
        end = 0
        for m in _BOUNDARY.finditer(self._buf):
            if m.end() < len(self._buf):  # a boundary at the very end may grow
                end = m.end()
        if end == 0 and len(self._buf) > self._limit:
            end = len(self._buf)
        ready, self._buf = self._buf[:end], self._buf[end:]
        if ready:
            self._check(ready)
        if self._hold:
            return ready
        return text

    def flush(self) -> str:
        rest, self._buf = self._buf, ""
        if rest:
            self._check(rest)
        return rest if self._hold else ""
