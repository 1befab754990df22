"""The injection detector: a text in, a `Scan` out. Pure, offline, linear in the text.

Layers: `normalise` (one canonical view), `decode_runs` (encoded runs decoded and scanned
too), the RE2 rule set (one `re2.Set` pass says which rules match, then only those rules
are located), and a score. Evidence is summed per window of `WINDOW` characters of the
normalised text: each rule once (its strongest occurrence), times the mode's multiplier for
its category and direction, times the mode's scale and the sensitivity's; plus the mode's
combo bonus when the window holds two categories or more, and its obfuscation bonus when the
findings were only visible decoded (half of it for homoglyph/leet/spacing/zero-width folds).
A window's score is `1 - exp(-evidence)`; a text's is its best window's, at most `MAX_SCORE`.
A finding quoted in a text that discusses injection (`attacks such as "ignore previous
instructions"`) weighs `MENTION_FACTOR` of itself.
Invariant: bounded work per text: at most `MAX_HITS_PER_RULE` occurrences per rule and the
decoder's bounds; the detected flag is `score >= threshold` and `score > 0`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from declawd.guard.injection.config import InjectionGuard
from declawd.guard.injection.decode import decode_runs
from declawd.guard.injection.modes import SENSITIVITY_SCALE, Mode
from declawd.guard.injection.normalize import normalise
from declawd.guard.injection.rules import CATEGORIES, CompiledRules, compile_rules

Way = Literal["outbound", "inbound"]
WINDOW = 2048
MAX_SCORE = 0.9999
MAX_HITS_PER_RULE = 16
MENTION_FACTOR = 0.35

RULES: CompiledRules = compile_rules()

_OPEN_QUOTE = re.compile(r"[\"'“‘`«]\s?$")  # noqa: RUF001
_DISCUSSION = re.compile(
    r"\b(?:such as|like|e\.?g|for example|for instance|phrases?|strings?|known as|called|"
    r"classic|saying|payloads?|says|said|wrote|contains?|attacks?|attackers?|injections?|"
    r"malicious|jailbreaks?|examples?|detects?|detection|blocks?|flags?|filters?|classif\w*|"
    r"patterns?|signatures?|inputs? like|text like|try|tries|tried|typed|typing)\b"
)


@dataclass(frozen=True)
class Scan:
    """One text scanned: the score in [0, 1], whether it reaches the threshold, the
    categories and rules of the best window (rule names in rule-set order), and whether
    that window's findings were obfuscated (decoded, or folded from look-alikes)."""

    score: float
    detected: bool
    categories: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    obfuscated: bool = False

    @property
    def evidence(self) -> float:
        """The score back in nats (the judge's grey band is measured in these)."""
        return -math.log(1.0 - min(self.score, MAX_SCORE))


CLEAN = Scan(0.0, False)


@dataclass(frozen=True)
class _Hit:
    rule: int
    pos: int
    weight: float


def _mentioned(text: str, start: int) -> bool:
    before = text[max(0, start - 4) : start]
    if _OPEN_QUOTE.search(before) is None:
        return False
    return _DISCUSSION.search(text, max(0, start - 160), start) is not None


def _hits(text: str, mode: Mode, way: Way, rules: CompiledRules) -> list[_Hit]:
    # An ASCII text is matched as bytes: same offsets, none of RE2's str offset mapping.
    subject: str | bytes = text.encode("ascii") if text.isascii() else text
    found = rules.matcher.Match(subject)
    if not found:
        return []
    hits: list[_Hit] = []
    for i in sorted(found):
        rule = rules.rules[i]
        if rule.weight < mode.min_rule_weight:
            continue
        weight = rule.weight * mode.multiplier(rule.category, way)
        n = 0
        for m in rules.patterns[i].finditer(subject):
            if rule.negatable and m.group("neg"):
                continue
            w = weight * MENTION_FACTOR if _mentioned(text, m.start()) else weight
            hits.append(_Hit(i, m.start(), w))
            n += 1
            if n >= MAX_HITS_PER_RULE:
                break
    hits.sort(key=lambda h: h.pos)
    return hits


@dataclass(frozen=True)
class _Window:
    evidence: float
    rules: tuple[int, ...]


_NOTHING = _Window(0.0, ())


def _best_window(hits: list[_Hit], rules: CompiledRules, mode: Mode, factor: float) -> _Window:
    best = _Window(0.0, ())
    left = 0
    for right, hit in enumerate(hits):
        while hits[left].pos < hit.pos - WINDOW:
            left += 1
        strongest: dict[int, float] = {}
        for h in hits[left : right + 1]:
            if h.weight > strongest.get(h.rule, 0.0):
                strongest[h.rule] = h.weight
        evidence = sum(strongest.values()) * mode.scale * factor
        cats = {rules.rules[r].category for r in strongest}
        if len(cats) >= 2:
            evidence += mode.combo_bonus
        if evidence > best.evidence:
            best = _Window(evidence, tuple(sorted(strongest)))
    return best


def _scan(window: _Window, obfuscated: bool, threshold: float, rules: CompiledRules) -> Scan:
    raw = min(1.0 - math.exp(-window.evidence), MAX_SCORE) if window.evidence > 0 else 0.0
    score = round(raw, 4)
    cats = {rules.rules[r].category for r in window.rules}
    return Scan(
        score=score,
        detected=score > 0 and score >= threshold,
        categories=tuple(c for c in CATEGORIES if c in cats),
        rules=tuple(rules.rules[r].name for r in window.rules),
        obfuscated=obfuscated and bool(window.rules),
    )


def detect(
    text: str, guard: InjectionGuard, way: Way = "inbound", rules: CompiledRules = RULES
) -> Scan:
    """Scan one text (a whole body, one JSON string value, one SSE event's data)."""
    if not text:
        return CLEAN
    mode = guard.profile
    factor = SENSITIVITY_SCALE.get(guard.sensitivity, 1.0)
    norm = normalise(text)
    hits = _hits(norm.text, mode, way, rules)
    window = _best_window(hits, rules, mode, factor) if hits else _NOTHING
    obfuscated = False
    if norm.folds and window.rules:
        window = _Window(window.evidence + mode.obfuscation_bonus / 2, window.rules)
        obfuscated = True
    plain = {h.rule for h in hits}
    seen: set[str] = set()
    for decoded in decode_runs(text, mode.decode_depth):
        if decoded.text in seen:  # the same run again scores the same: never strictly more
            continue
        seen.add(decoded.text)
        sub = _hits(normalise(decoded.text).text, mode, way, rules)
        if not sub or {h.rule for h in sub} <= plain:
            continue
        w = _best_window(sub, rules, mode, factor)
        w = _Window(w.evidence + mode.obfuscation_bonus, w.rules)
        if w.evidence > window.evidence:
            window, obfuscated = w, True
    if window == _NOTHING:
        return CLEAN
    return _scan(window, obfuscated, guard.threshold, rules)
