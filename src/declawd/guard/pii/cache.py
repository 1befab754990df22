"""A per-process memo of `detect` results for long string values (chat clients resend the
whole conversation with every request, so the same message is scanned again and again).

`FindingsCache` maps (text, types, NER budget) to the findings of that text, least recently
used first out. Invariants: it holds at most `max_entries` entries and at most `max_chars`
characters of keys (a text longer than `max_chars // 8` is never stored, so one huge value
cannot flush the rest); texts shorter than `min_chars` are not stored (they cost less to
scan than to hash). Thread-safe: one lock around each lookup and insertion. Findings are
immutable, so a hit hands back the stored tuple's findings in a new list.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from declawd.guard.pii.findings import Finding

Key = tuple[str, tuple[str, ...], int]


class FindingsCache:
    def __init__(self, max_entries: int = 4096, max_chars: int = 8 << 20, min_chars: int = 64):
        self.max_entries, self.max_chars, self.min_chars = max_entries, max_chars, min_chars
        self._lock = threading.Lock()
        self._items: OrderedDict[Key, tuple[Finding, ...]] = OrderedDict()
        self._chars = 0
        self.hits = self.misses = 0

    def wants(self, text: str) -> bool:
        """Whether `text` is of a length the cache stores."""
        return self.min_chars <= len(text) <= self.max_chars >> 3

    def get(self, key: Key) -> list[Finding] | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return list(found)

    def put(self, key: Key, findings: list[Finding]) -> None:
        if not self.wants(key[0]):
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = tuple(findings)
            self._chars += len(key[0])
            while len(self._items) > self.max_entries or self._chars > self.max_chars:
                old, _ = self._items.popitem(last=False)
                self._chars -= len(old[0])

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._chars = 0
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def chars(self) -> int:
        return self._chars


# The process's memo (`detect` and `detect_structured` consult it).
FINDINGS = FindingsCache()
