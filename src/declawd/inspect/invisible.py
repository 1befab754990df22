"""Invisible text: characters a person does not see but a model reads (Unicode tags, zero-width
and bidi controls, variation-selector runs), found, counted per class and stripped. Pure.

`scan` decides each candidate character from its two neighbours only, so it is linear (one C
regex pass finds candidates; each costs O(1)) and a stream needs a hold-back of one character
(`InvisibleStream`). Invariant: `strip` removes exactly the counted characters; every other
character, and each legitimate joiner or variation selector, stays as it was.

The rule (docs/inspection.md, "Invisible text"):
- tag (U+E0000-E007F) and bidi controls (U+202A-202E, U+2066-2069, U+200E/F, U+061C): always.
- zero_width: U+200B, U+2060-2064, U+180E always; U+FEFF except as the first character of
  a body; U+200C/U+200D (ZWNJ/ZWJ) unless both neighbours are visible non-ASCII letters,
  marks, numbers or symbols (emoji ZWJ sequences, Indic and Persian joining), a kept
  variation selector counting as visible on the left.
- variation_selector: one selector directly after a base that takes it is kept: U+FE0E/FE0F
  after a visible non-ASCII character or a keycap base (0-9 # *), U+FE00-FE0D after a
  visible non-ASCII character, U+E0100-E01EF after a CJK ideograph. Any other selector is
  counted, and so is every selector of a run of two or more (one base carries one selector:
  a run is the payload of "emoji smuggling").
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NoReturn

if TYPE_CHECKING:
    from declawd.inspect.model import InvisibleTextGuard
    from declawd.inspect.pipeline import ExchangeState, TextPass, TextStream, Way

CLASSES: tuple[str, ...] = ("tag", "zero_width", "bidi", "variation_selector")
Action = Literal["strip", "block", "log_only"]
ACTIONS: tuple[str, ...] = ("strip", "block", "log_only")

_CANDIDATE = re.compile(
    "[\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069"
    "\ufe00-\ufe0f\ufeff\U000e0000-\U000e007f\U000e0100-\U000e01ef]"
)
_BIDI = frozenset((0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)))
_JOINERS = frozenset((0x200C, 0x200D))
_KEYCAP_BASES = frozenset("0123456789#*")
# Unified and compatibility ideographs, the bases the Ideographic Variation Database registers.
_IDEOGRAPHS = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3FFFF))


def _is_vs(c: str | None) -> bool:
    if not c:
        return False
    o = ord(c)
    return 0xFE00 <= o <= 0xFE0F or 0xE0100 <= o <= 0xE01EF


def class_of(c: str) -> str:
    """The class of a candidate character (one `_CANDIDATE` matches)."""
    o = ord(c)
    if 0xE0000 <= o <= 0xE007F:
        return "tag"
    if _is_vs(c):
        return "variation_selector"
    return "bidi" if o in _BIDI else "zero_width"


def _visible(c: str | None) -> bool:
    """A visible non-ASCII letter, mark, number or symbol: what a joiner or selector binds."""
    if not c or ord(c) < 0x80 or _CANDIDATE.match(c):
        return False
    return unicodedata.category(c)[0] in "LMNS"


def _legit(c: str, prev: str | None, prev_kept: bool, nxt: str | None, first: bool) -> bool:
    o = ord(c)
    if o == 0xFEFF:
        return first
    if o in _JOINERS:
        return (_visible(prev) or (prev_kept and _is_vs(prev))) and _visible(nxt)
    if not _is_vs(c) or prev is None or _is_vs(nxt):
        return False
    if o >= 0xE0100:
        p = ord(prev)
        return any(lo <= p <= hi for lo, hi in _IDEOGRAPHS)
    if o >= 0xFE0E and prev in _KEYCAP_BASES:
        return True
    return _visible(prev)


def needs_next(c: str) -> bool:
    """Whether the verdict on `c` depends on the character after it."""
    return ord(c) in _JOINERS or _is_vs(c)


@dataclass(frozen=True)
class Scan:
    """One text scanned: `text` with the counted characters removed, the counts per class,
    and whether the text's last character is a kept candidate (context for what follows)."""

    text: str
    counts: Mapping[str, int]
    last_kept: bool = False

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def scan(
    text: str,
    *,
    before: str | None = None,
    before_kept: bool = False,
    after: str | None = None,
    first: bool = False,
) -> Scan:
    """Find the invisible characters of `text`. `before`/`after`: the characters around it
    (None: the text's edge), `before_kept`: `before` is a kept joiner or selector, `first`:
    the text starts a body (a U+FEFF there is a byte order mark)."""
    counts: dict[str, int] = {}
    pieces: list[str] = []
    pos, kept_at, last = 0, -1 if before_kept else -2, len(text) - 1
    for m in _CANDIDATE.finditer(text):
        i = m.start()
        c = text[i]
        prev = text[i - 1] if i else before
        nxt = text[i + 1] if i < last else after
        if _legit(c, prev, kept_at == i - 1, nxt, first and i == 0):
            kept_at = i
            continue
        cls = class_of(c)
        counts[cls] = counts.get(cls, 0) + 1
        pieces.append(text[pos:i])
        pos = i + 1
    if not counts:
        return Scan(text, counts, kept_at == last >= 0)
    pieces.append(text[pos:])
    return Scan("".join(pieces), counts, kept_at == last >= 0)


class InvisibleStream:
    """`scan` over text that arrives in pieces: a trailing joiner or selector waits for the
    next piece (its verdict needs it), so a sequence split anywhere is judged as if whole.
    `found` gets each piece's counts."""

    def __init__(self, found: Callable[[Scan], None] | None = None) -> None:
        self._found = found
        self._held = ""
        self._before: str | None = None
        self._before_kept = False
        self._first = True

    def feed(self, text: str) -> str:
        buf = self._held + text
        if buf and needs_next(buf[-1]):
            self._held = buf[-1]
            return self._scan(buf[:-1], self._held)
        self._held = ""
        return self._scan(buf, None)

    def flush(self) -> str:
        body, self._held = self._held, ""
        return self._scan(body, None)

    def _scan(self, body: str, after: str | None) -> str:
        if not body:
            return ""
        s = scan(
            body, before=self._before, before_kept=self._before_kept, after=after, first=self._first
        )
        self._first = False
        self._before, self._before_kept = body[-1], s.last_kept
        if s.counts and self._found is not None:
            self._found(s)
        return s.text


def describe(counts: Mapping[str, int]) -> str:
    """`invisible text: 3 tag, 1 bidi` (the block reason; no character of the text)."""
    parts = [f"{counts[c]} {c}" for c in CLASSES if counts.get(c)]
    return "invisible text: " + ", ".join(parts)


# The pipeline stage (a `BodyStage`, structurally) -------------------------------------------


class InvisibleTextStage:
    """Both directions, for the hosts the guard applies to. Counts land in the exchange's
    `invisible_text` (`{"action", "outbound": {class: n}, "inbound": {...}}`); `refuse` is
    called (and must raise the pipeline's `Blocked`) on the first finding under `block`."""

    def __init__(
        self,
        guard: InvisibleTextGuard | None,
        host: str,
        refuse: Callable[[Mapping[str, int]], NoReturn],
    ) -> None:
        self._guard = guard if guard is not None and guard.applies_to(host) else None
        self._refuse = refuse

    def start(self, x: ExchangeState, way: Way) -> TextPass | None:
        if self._guard is None:
            return None
        return _InvisiblePass(self._guard.action, x, way, self._refuse)


class _InvisiblePass:
    def __init__(
        self,
        action: Action,
        x: ExchangeState,
        way: Way,
        refuse: Callable[[Mapping[str, int]], NoReturn],
    ) -> None:
        self._action, self._x, self._way, self._refuse = action, x, way, refuse
        self._first = True

    def apply(self, text: str) -> str:
        s = scan(text, first=self._first)
        self._first = False
        if s.counts:
            self._found(s)
        return s.text if self._action == "strip" else text

    def stream(self) -> TextStream:
        return _ActionStream(self._action, InvisibleStream(self._found))

    def _found(self, s: Scan) -> None:
        record = self._x.invisible_text
        record["action"] = self._action
        mine: dict[str, int] = record.setdefault(self._way, {})
        for cls, n in s.counts.items():
            mine[cls] = mine.get(cls, 0) + n
        if self._action == "block":
            self._refuse(mine)


class _ActionStream:
    """strip and block: the scanner's output (under block it raises before anything found
    passes). log_only: the input as it came, scanned on the way."""

    def __init__(self, action: Action, inner: InvisibleStream) -> None:
        self._log_only, self._inner = action == "log_only", inner

    def feed(self, text: str) -> str:
        out = self._inner.feed(text)
        return text if self._log_only else out

    def flush(self) -> str:
        out = self._inner.flush()
        return "" if self._log_only else out
