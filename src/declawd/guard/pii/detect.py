"""`detect`: every PII finding of the asked types in one text, non-overlapping. Pure.

The structured types run first (structured.py: RE2 and validators, linear); person_name and
address (ner.py: CRF classifiers) run only when asked for, with a cap on model calls. With
NER asked for, a long text's result is memoised per process (cache.py; structured.py
memoises its own part), since conversations resend their history with every request.
Invariant: the result is sorted by start and free of overlaps (findings.resolve), so it can
be replaced span by span.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from declawd.guard.pii.cache import FINDINGS
from declawd.guard.pii.findings import TYPES, Finding, resolve
from declawd.guard.pii.ner import MAX_CANDIDATES, detect_addresses, detect_names
from declawd.guard.pii.structured import detect_structured

_KNOWN = frozenset(TYPES)


@functools.lru_cache(maxsize=64)
def _checked(wanted: tuple[str, ...]) -> tuple[bool, bool]:
    """Whether `wanted` asks for address, for person_name. Raises ValueError for an
    unknown type (not cached: raised again on every call)."""
    if not _KNOWN.issuperset(wanted):
        raise ValueError(f"unknown PII type(s): {sorted(set(wanted) - _KNOWN)}")
    return "address" in wanted, "person_name" in wanted


def detect(
    text: str, types: Iterable[str] = TYPES, *, ner_budget: int = MAX_CANDIDATES
) -> list[Finding]:
    """The PII of `types` in `text`. Raises ValueError for an unknown type."""
    wanted = types if type(types) is tuple else tuple(types)
    address, name = _checked(wanted)
    if not (address or name):
        found = detect_structured(text, wanted)  # memoised there, past its triage
        return resolve(found) if found else found
    key = (text, wanted, ner_budget)
    memo = FINDINGS.wants(text)
    if memo and (hit := FINDINGS.get(key)) is not None:
        return hit
    found = detect_structured(text, wanted, cache=False)
    budget = [ner_budget]
    if address:
        found += detect_addresses(text, budget)
    if name:
        found += detect_names(text, budget)
    result = resolve(found) if found else found
    if memo:
        FINDINGS.put(key, result)
    return result
