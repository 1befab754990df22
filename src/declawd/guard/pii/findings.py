"""What a PII scan reports: `Finding`s, the type names, and the overlap rule. Pure.

Invariant: `resolve` returns findings sorted by start that never overlap; of two overlapping
findings the more specific type wins (`SPECIFICITY`), then the longer span, then the
earlier one.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

# The SDK's PIIType values, in its order.
TYPES: tuple[str, ...] = (
    "ssn",
    "credit_card",
    "email",
    "phone",
    "person_name",
    "api_key",
    "address",
    "ip_address",
)
STRUCTURED: tuple[str, ...] = ("ssn", "credit_card", "email", "phone", "api_key", "ip_address")
NER: tuple[str, ...] = ("person_name", "address")
# Most specific first: a provider key or an email is never part of a name or an address.
SPECIFICITY: tuple[str, ...] = (
    "api_key",
    "email",
    "credit_card",
    "ssn",
    "ip_address",
    "phone",
    "address",
    "person_name",
)
_RANK = {t: i for i, t in enumerate(SPECIFICITY)}


@dataclass(frozen=True, init=False)
class Finding:
    """One PII value of `type` at `text[start:end]` (== `value`); `score` in (0, 1]."""

    type: str
    start: int
    end: int
    value: str
    score: float = 1.0

    def __init__(self, type: str, start: int, end: int, value: str, score: float = 1.0) -> None:
        # The generated frozen __init__ sets each field through object.__setattr__, which
        # took half a detector's time per finding; the instance dict is filled directly.
        d = self.__dict__
        d["type"], d["start"], d["end"], d["value"], d["score"] = type, start, end, value, score


def _span(f: Finding) -> tuple[int, int]:
    return f.start, f.end


def resolve(findings: Iterable[Finding]) -> list[Finding]:
    """The non-overlapping subset, most specific type first (O(n log n) for n findings)."""
    by_start = sorted(findings, key=_span)
    if all(a.end <= b.start for a, b in itertools.pairwise(by_start)):
        return by_start  # no overlap: all are kept (the common case)
    ranked = sorted(by_start, key=lambda f: (_RANK[f.type], f.start - f.end, f.start))
    starts: list[int] = []
    kept: list[Finding] = []
    for f in ranked:
        i = bisect.bisect_left(starts, f.start)
        if i and kept[i - 1].end > f.start:
            continue
        if i < len(kept) and kept[i].start < f.end:
            continue
        starts.insert(i, f.start)
        kept.insert(i, f)
    return kept
