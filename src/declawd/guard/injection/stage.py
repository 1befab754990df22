"""The injection-defense body stage (a pipeline `BodyStage`, structurally), both directions.

`apply` scans each whole text (a body, one JSON string value, one SSE event's data).
`stream` scans a sliding window each time `STEP` new characters have come (and at the
end): each scan sees the last `WINDOW` characters (what was already let through, as
context, plus what is pending), so an instruction split across pieces is found; under
`block` pending text is let through once scanned, except its last clause (after the last
sentence end or line end, at most `HOLD` characters), which waits for what follows. A held
clause is not rescanned before new text comes, and a window is never scanned twice. Under `log_only` text passes as it comes and is scanned on the way.
A text in the judge's grey band (or every text under `judge.always`) is put to the judge,
whose verdict replaces the classifier's; no judge or a failing one leaves the classifier's.
The exchange's record, `x.scratch["scan_results"]["injection"]`, holds the max score over
the exchange: `{"detected", "score", "categories", "direction", "judge"}` (plus `skipped`
when the host is not scanned). Invariant: under `block` no text scanned as an injection is
returned; `x.injection_blocks` counts the refusals.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from declawd.guard.injection.config import InjectionGuard
from declawd.guard.injection.detect import MAX_SCORE, WINDOW, Scan, detect
from declawd.guard.injection.judge import Verdict
from declawd.inspect.pipeline import Blocked

if TYPE_CHECKING:
    from declawd.inspect.pipeline import ExchangeState, TextPass, TextStream, Way

STEP = 256  # pending characters that trigger a scan of a stream
HOLD = 256  # at most this much of a scanned stream waits for what follows
_CLAUSE_END = re.compile(r"[.!?;:\n](?=[^.!?;:\n]*$)")
_JUDGE_RANK = {"blocked": 4, "error": 3, "allowed": 2, "no judge": 1, "not asked": 0}
_STATE = "injection_state"


class JudgeLike(Protocol):
    def verdict(self, text: str, policy: str = "") -> Verdict: ...


@dataclass
class _Record:
    """What an exchange found so far (both directions)."""

    score: float = 0.0
    direction: str = ""
    detected: bool = False
    categories: list[str] = field(default_factory=list)
    judge: str = "not asked"

    def add(self, scan: Scan, way: str, judge: str) -> None:
        """Fold one scan in: categories and direction are those of the detections (of the
        best scan while nothing was detected), the score the max of all."""
        if scan.detected:
            if not self.detected:
                self.categories, self.direction = list(scan.categories), way
            else:
                self.categories += [c for c in scan.categories if c not in self.categories]
            self.detected = True
        elif not self.detected and scan.score > self.score:
            self.categories, self.direction = list(scan.categories), way
        self.score = max(self.score, scan.score)
        if _JUDGE_RANK[judge.split(":")[0]] > _JUDGE_RANK[self.judge.split(":")[0]]:
            self.judge = judge

    def doc(self) -> dict[str, Any]:
        return {
            "detected": self.detected,
            "score": self.score,
            "categories": list(self.categories),
            "direction": self.direction,
            "judge": self.judge,
        }


def _record(x: ExchangeState) -> _Record:
    rec = x.scratch.get(_STATE)
    if not isinstance(rec, _Record):
        rec = x.scratch[_STATE] = _Record()
    return rec


def _publish(x: ExchangeState, rec: _Record) -> None:
    x.scratch.setdefault("scan_results", {})["injection"] = rec.doc()


def _band_evidence(threshold: float) -> float:
    return -math.log(1.0 - min(threshold, MAX_SCORE))


class InjectionStage:
    """The stage for one connection's host: None guard (defense off) does nothing; a host
    outside the guard's domains is recorded as skipped and passes unscanned."""

    def __init__(
        self, guard: InjectionGuard | None, host: str | None, judge: JudgeLike | None = None
    ) -> None:
        self._guard = guard
        self._scans = guard is not None and guard.applies_to(host)
        self._judge = judge

    def start(self, x: ExchangeState, way: Way) -> TextPass | None:
        guard = self._guard
        if guard is None:
            return None
        if not self._scans:
            doc = _record(x).doc()
            doc["skipped"] = "no domains listed" if not guard.domains else "host not listed"
            x.scratch.setdefault("scan_results", {})["injection"] = doc
            return None
        return _InjectionPass(guard, self._judge, x, way)


class _InjectionPass:
    def __init__(
        self, guard: InjectionGuard, judge: JudgeLike | None, x: ExchangeState, way: Way
    ) -> None:
        self._guard, self._judge, self._x, self._way = guard, judge, x, way

    def apply(self, text: str) -> str:
        self.check(text)
        return text

    def stream(self) -> TextStream:
        return _InjectionStream(self)

    def check(self, text: str) -> Scan:
        """Scan, maybe ask the judge, record; raise Blocked under `block` on a finding."""
        guard = self._guard
        scan = detect(text, guard, self._way)
        scan, judge = self._second_opinion(text, scan)
        rec = _record(self._x)
        rec.add(scan, self._way, judge)
        _publish(self._x, rec)
        if scan.detected and guard.action == "block":
            self._x.injection_blocks += 1
            cats = ", ".join(scan.categories) or "judge"
            raise Blocked(
                f"prompt injection detected ({cats}; score {scan.score:.2f})",
                error="injection_detected",
            )
        return scan

    def _second_opinion(self, text: str, scan: Scan) -> tuple[Scan, str]:
        settings = self._guard.judge
        if settings is None or not settings.enabled:
            return scan, "not asked"
        if self._judge is None:
            return scan, "no judge"
        if not settings.always:
            if scan.score <= 0:
                return scan, "not asked"
            band = self._guard.profile.band
            if abs(scan.evidence - _band_evidence(self._guard.threshold)) > band:
                return scan, "not asked"
        verdict = self._judge.verdict(text, settings.policy)
        if verdict.injection is None:
            return scan, f"error: {verdict.error or 'no verdict'}"
        decided = Scan(scan.score, verdict.injection, scan.categories, scan.rules, scan.obfuscated)
        return decided, "blocked" if verdict.injection else "allowed"


class _InjectionStream:
    def __init__(self, owner: _InjectionPass) -> None:
        self._owner = owner
        self._log_only = owner._guard.action == "log_only"
        self._context = ""  # the last characters already let through (or scanned)
        self._pending = ""
        self._fresh = 0  # characters fed since the last scan
        self._scanned: str | None = None  # the text of the last scan

    def feed(self, text: str) -> str:
        self._pending += text
        self._fresh += len(text)
        if self._fresh < STEP:
            return text if self._log_only else ""
        self._scan()
        if self._log_only:
            self._let_through(len(self._pending))
            return text
        return self._let_through(self._cut())

    def flush(self) -> str:
        if self._pending:
            self._scan()
        out = self._let_through(len(self._pending))
        return "" if self._log_only else out

    def _scan(self) -> None:
        room = max(0, WINDOW - len(self._pending))
        context = self._context[-room:] if room else ""
        window = context + self._pending
        self._fresh = 0
        if window == self._scanned:  # nothing new since (a flush after a held clause)
            return
        self._owner.check(window)
        self._scanned = window

    def _cut(self) -> int:
        """How much of the pending text may go: all but its last clause (<= HOLD)."""
        n = len(self._pending)
        m = _CLAUSE_END.search(self._pending, max(0, n - HOLD))
        return m.end() if m is not None else max(0, n - HOLD)

    def _let_through(self, n: int) -> str:
        out, self._pending = self._pending[:n], self._pending[n:]
        self._context = (self._context + out)[-WINDOW:]
        return out
