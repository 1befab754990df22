# ruff: noqa: RUF001  (look-alike letters on purpose)
"""The detector's fast paths give what the plain step-by-step pipeline gives.

`normalise` skips steps by a prefilter and rewrites ASCII leet tokens by RE2; `decode_runs`
finds base64/hex runs by RE2 and skips decoders by a prefilter; the stream does not rescan
a held clause. Each is checked here against a straightforward reference on random texts
drawn from an alphabet of the characters those paths treat specially, and by counting scans.
"""

from __future__ import annotations

import random
import re
import unicodedata

import pytest

from declawd.guard.injection import decode as D
from declawd.guard.injection import normalize as N
from declawd.guard.injection.config import InjectionGuard
from declawd.guard.injection.detect import Scan
from declawd.guard.injection.stage import STEP, InjectionStage, _InjectionPass
from declawd.inspect.pipeline import ExchangeState

_LINES = re.compile(r"\s*\n\s*")
PIECES = [
    *"abcdeiorsxyzABCXZ0134579_ .-*|+~\n\t\r\x0b\x0c\x1c\x1f,:;'\"\\%&#=/",
    *"аеорсіοαжé\u0301ıſKİǅ\u200b\u00ad\u2060\xa0\u3000\u2028\x85ﬁｉᴀɡ中—’",
    "𝐚",
    "\U0001d167",
    "😀",
    "\\x41",
    "0x",
    "%41",
    "&#105;",
    "\\u0041",
    "vtaber",
    "cerıvbhf",
    "CERİVBHF",
    "flfgrz",
    "rot13",
    "aGVsbG8gd29ybGQgYWdhaW4=",
    "69676e6f726520616c6c",
    "69:67:6e:6f:72:65:20:61:6c:6c",
    "i g n o r e",
    "1gn0r3",
    "pr3v10us",
    "a11",
]


def _texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        t = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 40)))
        out.append(t.encode("ascii", "ignore").decode() if rng.random() < 0.4 else t)
    return out


def reference_normalise(text: str) -> N.Normalised:
    """Every step, in order, on every text (the pipeline the module docstring describes)."""
    folds = 0
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
        inside = 0
        for m in N.FORMAT.finditer(text):
            i, j = m.start(), m.end()
            if i > 0 and j < len(text) and text[i - 1].isalpha() and text[j].isalpha():
                inside += 1
        text = N.FORMAT.sub("", text)
        folds += inside
        text = text.casefold().translate(N._ALWAYS)
        if not text.isascii():
            latin = len(N._LATIN_LETTER.findall(text))
            foreign = len(N._SCRIPT_LETTER.findall(text))
            if foreign:
                text, n = N._fold_words(text, mostly_latin=latin > foreign)
                folds += n
            decomposed = unicodedata.normalize("NFKD", text)
            text = "".join(c for c in decomposed if not unicodedata.combining(c))
    else:
        text = text.lower()

    def fold(m: re.Match[str]) -> str:
        nonlocal folds
        if N._leet_count(m.group(0)) >= 2:
            folds += 1
        return N._unleet(m.group(0))

    text = N._LEET_TOKEN.sub(fold, text)
    text, n = N._SPACED.subn(N._join_spaced, text)
    folds += n
    text = _LINES.sub("\n", N._BLANKS.sub(" ", text))
    return N.Normalised(text, folds)


def test_blank_chars_are_pythons_whitespace_but_the_line_end() -> None:
    blanks = "".join(c for c in map(chr, range(0x110000)) if c.isspace() and c != "\n")
    assert blanks == N.BLANK_CHARS


@pytest.mark.parametrize("seed", range(4))
def test_normalise_equals_the_step_by_step_pipeline(seed: int) -> None:
    for text in _texts(seed, 3000):
        assert N.normalise(text) == reference_normalise(text), repr(text)


def test_normalise_keeps_the_pipeline_on_lone_surrogates() -> None:
    text = "1gn0r3 \ud800 a  b\t\n\n c i g n o r e"
    assert N.normalise(text) == reference_normalise(text)


@pytest.mark.parametrize("seed", range(4))
def test_ascii_leet_scan_finds_the_same_tokens(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(3000):
        text = "".join(rng.choice("ab_2Z0137 .-é") for _ in range(rng.randint(0, 30))).lower()
        text = text.encode("ascii", "ignore").decode()
        assert N._unleet_ascii(text) == N._unleet_any(text), repr(text)


def _reference_level(text: str) -> list[tuple[str, str]]:
    out = []
    for m in D._B64.finditer(text):
        s = D._b64(m.group(0))
        if s is not None:
            out.append((s, "base64"))
    for m in D._HEX.finditer(text):
        s = D._hex(m.group(0))
        if s is not None:
            out.append((s, "hex"))
    if len(D._URL_ESC.findall(text, 0, 1 << 16)) >= 4 and D.unquote(text) != text:
        out.append((D.unquote(text), "url"))
    if len(D._ENTITY.findall(text, 0, 1 << 16)) >= 3 and D.html.unescape(text) != text:
        out.append((D.html.unescape(text), "html"))
    if len(D._JSON_ESC.findall(text, 0, 1 << 16)) >= 3 and D._json_unescape(text) != text:
        out.append((D._json_unescape(text), "json"))
    if D._ROT13_HINT.search(text) is not None:
        out.append((D._rot13(text), "rot13"))
    return out[: D.MAX_RUNS]


@pytest.mark.parametrize("seed", range(4))
def test_decoder_prefilter_and_re2_runs_equal_the_python_scan(seed: int) -> None:
    for text in [*_texts(seed, 3000), "x \ud800 aGVsbG8gd29ybGQgYWdhaW4= vtaber"]:
        got = [(d.text, d.how) for d in D._one_level(text)]
        assert got == _reference_level(text), repr(text)


def test_rot13_hint_found_with_letters_pythons_ignorecase_equates() -> None:
    for word in ("CERİVBHF", "cerıvbhf", "Flfgrz"):
        assert [d.how for d in D.decode_runs(f"say {word} now", 1)] == ["rot13"]


def _counting_stream(action: str) -> tuple[list[str], _InjectionPass]:
    x = ExchangeState()
    p = InjectionStage(InjectionGuard(action=action, domains=("h",)), "h").start(x, "inbound")  # type: ignore[arg-type]
    assert isinstance(p, _InjectionPass)
    scanned: list[str] = []
    check = p.check

    def counting(text: str) -> Scan:
        scanned.append(text)
        return check(text)

    p.check = counting  # type: ignore[method-assign]
    return scanned, p


@pytest.mark.parametrize("action", ["block", "log_only"])
def test_stream_scans_once_per_step_of_new_text(action: str) -> None:
    # No clause end: under block the last HOLD characters wait for each next piece.
    text = "".join(f"word{i} " for i in range(1500))
    scanned, p = _counting_stream(action)
    s = p.stream()
    out = "".join(s.feed(c) for c in text) + s.flush()
    assert out == text
    assert len(scanned) <= len(text) // STEP + 1
    assert len(set(scanned)) == len(scanned)  # no window twice


def test_flush_does_not_rescan_a_held_clause() -> None:
    scanned, p = _counting_stream("block")
    s = p.stream()
    out = s.feed("benign words without an end " * 20)
    assert len(scanned) == 1 and out
    assert out + s.flush() == "benign words without an end " * 20
    assert len(scanned) == 1
