"""`detect`: every PII finding of the asked types in one text, non-overlapping. Pure.

The structured types run first (structured.py: RE2 and validators, linear); person_name and
address (ner.py: CRF classifiers) run only when asked for, with a cap on model calls.
Invariant: the result is sorted by start and free of overlaps (findings.resolve), so it can
be replaced span by span.
"""

from __future__ import annotations

from collections.abc import Iterable

from declawd.guard.pii.findings import TYPES, Finding, resolve
from declawd.guard.pii.ner import MAX_CANDIDATES, detect_addresses, detect_names
from declawd.guard.pii.structured import detect_structured

_KNOWN = frozenset(TYPES)


def detect(
    text: str, types: Iterable[str] = TYPES, *, ner_budget: int = MAX_CANDIDATES
) -> list[Finding]:
    """The PII of `types` in `text`. Raises ValueError for an unknown type."""
    wanted = tuple(types)
    if not _KNOWN.issuperset(wanted):
        raise ValueError(f"unknown PII type(s): {sorted(set(wanted) - _KNOWN)}")
    found = detect_structured(text, wanted)
    budget = [ner_budget]
    if "address" in wanted:
        found += detect_addresses(text, budget)
    if "person_name" in wanted:
        found += detect_names(text, budget)
    return resolve(found) if found else []
