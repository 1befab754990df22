"""Redaction tokens of one exchange and their way back: `TokenTable` (value <-> token),
`redact` (findings -> tokens), `rehydrate` (tokens -> values), and `Rehydrator` for texts
that arrive in pieces. Pure apart from the table each exchange owns.

Tokens are `[REDACTED_<TYPE>_<n>]`, numbered from 1 per type in the order first seen; one
value keeps one token for the whole exchange. Invariants: `rehydrate` replaces only tokens
the table issued (any other `[REDACTED_...]` text stays as it is), so
`rehydrate(redact(t)) == t` whenever `t` holds no token of the table; a `Rehydrator` holds
back at most the longest token's length minus one character (a possible token prefix).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import re2

from declawd.guard.pii.findings import TYPES, Finding

TOKEN = re2.compile(r"\[REDACTED_(?:" + "|".join(t.upper() for t in TYPES) + r")_\d{1,9}\]")


class TokenTable:
    """One exchange's tokens (the request issues them, its response reads them back).
    Thread-safe: the request and the response of an exchange may run on different
    workers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_value: dict[tuple[str, str], str] = {}
        self._by_token: dict[str, str] = {}
        self._counts: dict[str, int] = {}
        self._prefixes: set[str] = set()
        self._unindexed: list[str] = []  # tokens whose prefixes `_prefixes` lacks yet
        self.longest = 0

    def token_for(self, type_: str, value: str) -> str:
        with self._lock:
            token = self._by_value.get((type_, value))
            if token is None:
                n = self._counts.get(type_, 0) + 1
                self._counts[type_] = n
                token = f"[REDACTED_{type_.upper()}_{n}]"
                self._by_value[(type_, value)] = token
                self._by_token[token] = value
                self._unindexed.append(token)  # indexed when a response first asks
                if len(token) > self.longest:
                    self.longest = len(token)
            return token

    def original(self, token: str) -> str | None:
        return self._by_token.get(token)

    def is_prefix(self, text: str) -> bool:
        """`text` is a proper prefix of a token of the table."""
        if self._unindexed:
            with self._lock:
                for token in self._unindexed:
                    self._prefixes.update(token[:i] for i in range(1, len(token)))
                self._unindexed.clear()
        return text in self._prefixes

    def counts(self) -> dict[str, int]:
        """Tokens issued per type."""
        with self._lock:
            return dict(self._counts)

    def __len__(self) -> int:
        return len(self._by_token)


def redact(text: str, findings: Iterable[Finding], table: TokenTable) -> tuple[str, int]:
    """`text` with each finding (non-overlapping, sorted) replaced by its token; the count."""
    out: list[str] = []
    pos = n = 0
    for f in findings:
        out.append(text[pos : f.start])
        out.append(table.token_for(f.type, f.value))
        pos = f.end
        n += 1
    if not n:
        return text, 0
    out.append(text[pos:])
    return "".join(out), n


def rehydrate(text: str, table: TokenTable) -> tuple[str, int]:
    """The table's tokens in `text` replaced by their originals; the count."""
    if "[REDACTED_" not in text:
        return text, 0
    out: list[str] = []
    pos = n = 0
    for m in TOKEN.finditer(text):
        value = table.original(m.group(0))
        if value is None:
            continue
        out.append(text[pos : m.start()])
        out.append(value)
        pos = m.end()
        n += 1
    if not n:
        return text, 0
    out.append(text[pos:])
    return "".join(out), n


def _prefix_at(text: str, table: TokenTable) -> int:
    """Where a trailing proper prefix of one of the table's tokens starts (len: none)."""
    lo = max(0, len(text) - table.longest + 1)
    i = text.rfind("[", lo)
    if i >= 0 and table.is_prefix(text[i:]):
        return i
    return len(text)


class Rehydrator:
    """Rehydration of one body. `feed`/`flush`: a text stream (a token split between pieces
    waits for its rest). `apply`: one whole text or string value, stateless (a token cut
    between two SSE events is joined before `apply` sees it: the pipeline's SSE rewriter
    asks `tail` how much of a value's end may be a token's first part)."""

    def __init__(self, table: TokenTable) -> None:
        self._table = table
        self._held = ""
        self.count = 0

    def apply(self, text: str) -> str:
        return self._out(text)

    def tail(self, text: str) -> int:
        """Length of the suffix of `text` that is a proper prefix of one of the table's
        tokens (0: none)."""
        return len(text) - _prefix_at(text, self._table)

    def feed(self, text: str) -> str:
        text = self._held + text
        cut = _prefix_at(text, self._table)
        self._held = text[cut:]
        return self._out(text[:cut])

    def flush(self) -> str:
        rest, self._held = self._held, ""
        return rest

    def _out(self, text: str) -> str:
        out, n = rehydrate(text, self._table)
        self.count += n
        return out
