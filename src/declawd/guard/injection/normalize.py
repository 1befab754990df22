# ruff: noqa: RUF001, RUF002  (the homoglyph table is made of look-alikes on purpose)
"""Normalisation for the injection rules: one canonical, lower-case view of a text in which
look-alike spellings of the same words coincide. Pure, linear in the text.

Steps, in order: NFKC (fullwidth, mathematical alphanumerics, ligatures, enclosed letters
become their plain letters); format characters removed (zero-width, bidi controls, soft
hyphen, variation selectors, Unicode tags); case folding; homoglyph folding (`CONFUSABLES`:
Cyrillic, Greek and Armenian letters that look Latin, Latin small capitals and dotless
forms); combining marks dropped (`ïgnörë` reads `ignore`); leetspeak folding of tokens that
mix letters with `0 1 3 4 5 7`; letters spaced out one by one (`i g n o r e`) joined;
runs of blanks to one space, of line ends to one newline.
Invariant: `normalise(normalise(t).text).text == normalise(t).text` for the folds above,
and an all-ASCII text without digits or spacing tricks only changes case and blanks.
Script-aware: a Cyrillic or Greek letter is folded to Latin only inside a word that also
has Latin letters, or when the text is mostly Latin, so Russian or Greek text stays itself.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Letters that render like a Latin letter, after case folding (so only lower-case forms of
# scripts with case). Fullwidth and mathematical forms need no entry: NFKC maps them.
CONFUSABLES: dict[str, str] = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "һ": "h", "і": "i", "ї": "i", "ј": "j",
    "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t", "у": "y",
    "х": "x", "ѕ": "s", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ү": "y", "ӏ": "l", "ɡ": "g",
    "ь": "b", "п": "n", "г": "r",
    # Greek
    "α": "a", "β": "b", "γ": "y", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v",
    "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ζ": "z", "μ": "u",
    "ϲ": "c", "ϳ": "j", "ς": "c", "σ": "o",
    # Armenian
    "օ": "o", "ս": "u", "հ": "h", "ո": "n", "ց": "g", "զ": "q",
    # Latin extensions that read as basic letters
    "ı": "i", "ȷ": "j", "ɑ": "a", "ɩ": "i", "ʀ": "r", "ø": "o", "đ": "d", "ł": "l",
    "ᴀ": "a", "ʙ": "b", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ɢ": "g", "ʜ": "h", "ɪ": "i",
    "ᴊ": "j", "ᴋ": "k", "ʟ": "l", "ᴍ": "m", "ɴ": "n", "ᴏ": "o", "ᴘ": "p", "ǫ": "q",
    "ꜱ": "s", "ᴛ": "t", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ʏ": "y", "ᴢ": "z",
}  # fmt: skip
_LATIN_EXT = frozenset("ıȷɑɩʀøđłᴀʙᴄᴅᴇɢʜɪᴊᴋʟᴍɴᴏᴘǫꜱᴛᴜᴠᴡʏᴢ")
_ALWAYS = str.maketrans({k: v for k, v in CONFUSABLES.items() if k in _LATIN_EXT})
_ALL = str.maketrans(CONFUSABLES)
# Folded only where a word is mixed-script: these are ordinary letters of Russian/Greek
# (and stand for digits when spelling leet), so they never fold inside non-Latin words.
_FOREIGN = "".join(k for k in CONFUSABLES if k not in _LATIN_EXT)

FORMAT = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\U000e0000-\U000e0fff]"
)
# A word with at least one look-alike letter (Latin letters around it or not).
_WORD = re.compile(
    f"[a-z{_FOREIGN}\u0370-\u03ff\u0400-\u052f\u0530-\u058f]*[{_FOREIGN}][a-z{_FOREIGN}\u0370-\u03ff\u0400-\u052f\u0530-\u058f]*"
)
_LATIN_LETTER = re.compile("[a-z]")
_SCRIPT_LETTER = re.compile("[\u0370-\u03ff\u0400-\u052f\u0530-\u058f]")
# A token mixing letters with leet digits/symbols, in either order.
_LEET_TOKEN = re.compile(r"(?<!\w)(?:[a-z]+[013457]|[013457]+[a-z])[a-z013457]*")
_LEET = {"0": "o", "3": "e", "4": "a", "5": "s", "7": "t"}
_VOWELS = frozenset("aeiou")
# Four or more single letters apart by one separator (`i g n o r e`, `i.g.n.o.r.e`); two or
# three separators inside such a run are a word gap (`i g n o r e   a l l`).
_SPACED = re.compile(r"(?<![^\W\d_])[^\W\d_](?:[ .\-_*|+~]{1,3}[^\W\d_]){3,}(?![^\W\d_])")
_SPACED_SEP = re.compile(r"[ .\-_*|+~]")
_WORD_GAP = re.compile(r"[ .\-_*|+~]{2,3}")
_BLANKS = re.compile(r"[^\S\n]+")
_LINES = re.compile(r"\s*\n\s*")


@dataclass(frozen=True)
class Normalised:
    """The canonical view and how many obfuscation folds it took (homoglyphs in mixed-script
    words, format characters inside words, leet tokens of 2+ substitutions, spaced runs)."""

    text: str
    folds: int = 0


def _unleet(token: str) -> str:
    out: list[str] = []
    for i, c in enumerate(token):
        if c == "1":
            prev = out[-1] if out else ""
            nxt = token[i + 1] if i + 1 < len(token) else ""
            vowel_before = prev != "" and prev in _VOWELS
            as_l = prev == "l" or (vowel_before and (nxt not in ("l", "") or len(token) > 3))
            out.append("l" if as_l and nxt != "l" else "i")
        else:
            out.append(_LEET.get(c, c))
    return "".join(out)


def _leet_count(token: str) -> int:
    return sum(1 for c in token if c in "013457")


def _join_spaced(m: re.Match[str]) -> str:
    # Two separators mark a word gap (`i g n o r e  a l l`); one joins letters.
    words = _WORD_GAP.split(m.group(0))
    return " ".join(_SPACED_SEP.sub("", w) for w in words)


def strip_format(text: str) -> tuple[str, int]:
    """`text` without format characters; the count of those found between two letters."""
    if text.isascii():
        return text, 0
    inside = 0
    for m in FORMAT.finditer(text):
        i, j = m.start(), m.end()
        if i > 0 and j < len(text) and text[i - 1].isalpha() and text[j].isalpha():
            inside += 1
    return FORMAT.sub("", text), inside


def _fold_words(text: str, *, mostly_latin: bool) -> tuple[str, int]:
    """Homoglyphs folded in each word that mixes Latin with look-alike letters and, in a
    mostly Latin text, in each word made of look-alikes only (`рау` for `pay`); a word with
    other Cyrillic/Greek letters (`инструкции`) is a foreign word and stays."""
    n = 0

    def one(m: re.Match[str]) -> str:
        nonlocal n
        word = m.group(0)
        foreign_only = _LATIN_LETTER.search(word) is None
        if foreign_only and (not mostly_latin or any(c not in CONFUSABLES for c in word)):
            return word
        n += 1
        return word.translate(_ALL)

    return _WORD.sub(one, text), n


def normalise(text: str) -> Normalised:
    """The rules' view of `text` (see the module docstring)."""
    folds = 0
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
        text, inside = strip_format(text)
        folds += inside
        text = text.casefold()
        text = text.translate(_ALWAYS)
        if not text.isascii():
            latin = len(_LATIN_LETTER.findall(text))
            foreign = len(_SCRIPT_LETTER.findall(text))
            if foreign:
                text, n = _fold_words(text, mostly_latin=latin > foreign)
                folds += n
            decomposed = unicodedata.normalize("NFKD", text)
            text = "".join(c for c in decomposed if not unicodedata.combining(c))
    else:
        text = text.lower()
    if any(c in text for c in "013457"):

        def fold(m: re.Match[str]) -> str:
            nonlocal folds
            token = m.group(0)
            if _leet_count(token) >= 2:
                folds += 1
            return _unleet(token)

        text = _LEET_TOKEN.sub(fold, text)
    text, n = _SPACED.subn(_join_spaced, text)
    folds += n
    text = _LINES.sub("\n", _BLANKS.sub(" ", text))
    return Normalised(text, folds)
