"""What a PII scan reports: `Finding`s, the type names, and the overlap rule. Pure.

Invariant: `resolve` returns findings sorted by start that never overlap; of two overlapping
findings the more specific type wins (`SPECIFICITY`), then the longer span, then the
earlier one.
"""

from __future__ import annotations

import bisect
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


@dataclass(frozen=True)
class Finding:
    """One PII value of `type` at `text[start:end]` (== `value`); `score` in (0, 1]."""

    type: str
    start: int
    end: int
    value: str
    score: float = 1.0


def resolve(findings: Iterable[Finding]) -> list[Finding]:
    """The non-overlapping subset, most specific type first (O(n log n) for n findings)."""
    ranked = sorted(findings, key=lambda f: (_RANK[f.type], f.start - f.end, f.start))
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
