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

Speed: each step runs only where it can change something. One `re2.Set` pass over the
lower-cased text (`_NEEDS`) says whether a leet token, a spaced run or a blank to collapse
can be there at all (each member matches a superset of what its step rewrites), and the
Unicode steps are skipped when no character they touch is present. The rewriting itself is
done by the same patterns as always (or, for ASCII leet tokens, by an RE2 scan proven to
find the same tokens), so the result is the one the plain step-by-step pipeline gives.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass

import re2

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
_ALWAYS_KEYS = re.compile("[" + "".join(chr(k) for k in _ALWAYS) + "]")
# A word with at least one look-alike letter (Latin letters around it or not). Such a match
# always starts where a run of word letters starts; the look-behind only spares the engine
# the attempts from inside a run (same matches, linear instead of quadratic per word).
_WORD_CLASS = f"a-z{_FOREIGN}\u0370-\u03ff\u0400-\u052f\u0530-\u058f"
_WORD = re.compile(f"(?<![{_WORD_CLASS}])[{_WORD_CLASS}]*[{_FOREIGN}][{_WORD_CLASS}]*")
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
# Python's `\s` without `\n` (str.isspace(); tests/unit/guard/injection checks the list).
BLANK_CHARS = (
    "\t\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_ASCII_BLANKS = str.maketrans({c: " " for c in BLANK_CHARS if c.isascii()})
_SPACES = re.compile(" {2,}")
_NEWLINE_RUN = re.compile("\n[ \n]*")


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False
    return options


# What can need work, in one pass. Each member matches wherever its step could rewrite:
# a leet token holds a letter next to a leet digit; a spaced run (after leet folding too,
# hence digits count as letters) holds four single characters apart by separators; a blank
# run to collapse is two spaces or any other blank than a space or a line end.
_LEET_AT, _SPACED_AT, _BLANKS_AT = 0, 1, 2
_SEP = r"[ .\-_*|+~]{1,3}"
_NEEDS = re2.Set.SearchSet(_re2_options())
for _source in (
    r"[a-z][013457]|[013457][a-z]",
    rf"[\pL\pN]{_SEP}[\pL\pN]{_SEP}[\pL\pN]{_SEP}[\pL\pN]",
    "  |[" + "".join(f"\\x{{{ord(c):x}}}" for c in BLANK_CHARS if c != " ") + "]",
):
    _NEEDS.Add(_source)
_NEEDS.Compile()
# In an ASCII text, the tokens `_LEET_TOKEN` rewrites (group 1): the maximal runs of
# leet-alphabet characters holding a letter and a digit that no word character precedes
# (when one does, no position inside the run can start a token either).
_LEET_RUN = re2.compile(
    r"(?:^|[^0-9A-Za-z_])([a-z013457]*(?:[a-z][013457]|[013457][a-z])[a-z013457]*)",
    _re2_options(),
)
_ALL_NEEDS = frozenset((_LEET_AT, _SPACED_AT, _BLANKS_AT))
_FEW_LEET_DIGITS = 48


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
    if text.isascii() or FORMAT.search(text) is None:
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


# The characters of the Basic Multilingual Plane with a non-zero combining class, as one
# class (a table lookup per character); astral ones are looked up one by one.
_BMP_MARKS = re.compile(
    "[" + re.escape("".join(filter(unicodedata.combining, map(chr, range(0x10000))))) + "]"
)
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def _keep_unmarked(m: re.Match[str]) -> str:
    return "" if unicodedata.combining(m.group(0)) else m.group(0)


def _drop_marks(text: str) -> str:
    """`text` without its combining marks (characters of a non-zero combining class)."""
    text = _BMP_MARKS.sub("", text)
    if text and max(text) > "\uffff":
        text = _ASTRAL.sub(_keep_unmarked, text)
    return text


def _unicode_folds(text: str) -> tuple[str, int]:
    """NFKC, format characters, case, homoglyphs and combining marks (a non-ASCII text)."""
    text = unicodedata.normalize("NFKC", text)
    text, folds = strip_format(text)
    text = text.casefold()
    if _ALWAYS_KEYS.search(text) is not None:
        text = text.translate(_ALWAYS)
    if text.isascii():
        return text, folds
    if _SCRIPT_LETTER.search(text) is not None:
        foreign = len(_SCRIPT_LETTER.findall(text))
        latin = sum(map(text.count, string.ascii_lowercase))
        text, n = _fold_words(text, mostly_latin=latin > foreign)
        folds += n
    text = unicodedata.normalize("NFKD", text)
    if not text.isascii():
        text = _drop_marks(text)
    return text, folds


def _unleet_ascii(text: str) -> tuple[str, int]:
    """`_LEET_TOKEN.sub` for an ASCII text, the tokens found by RE2 (`_LEET_RUN`)."""
    folds = 0
    out: list[str] = []
    last = 0
    for m in _LEET_RUN.finditer(text.encode("ascii")):
        start, end = m.span(1)
        token = text[start:end]
        if _leet_count(token) >= 2:
            folds += 1
        out.append(text[last:start])
        out.append(_unleet(token))
        last = end
    if not out:
        return text, 0
    out.append(text[last:])
    return "".join(out), folds


def _unleet_any(text: str) -> tuple[str, int]:
    folds = 0

    def fold(m: re.Match[str]) -> str:
        nonlocal folds
        token = m.group(0)
        if _leet_count(token) >= 2:
            folds += 1
        return _unleet(token)

    return _LEET_TOKEN.sub(fold, text), folds


def _needs(text: str) -> frozenset[int]:
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: no prefilter, every step runs
        return _ALL_NEEDS
    return frozenset(_NEEDS.Match(data) or ())


def normalise(text: str) -> Normalised:
    """The rules' view of `text` (see the module docstring)."""
    folds = 0
    if not text.isascii():
        text, folds = _unicode_folds(text)
    else:
        text = text.lower()
    ascii_text = text.isascii()
    needs = _needs(text)
    if _LEET_AT in needs:
        # RE2 finds the tokens faster unless there are many (each costs a Python step).
        few = ascii_text and sum(map(text.count, "013457")) <= _FEW_LEET_DIGITS
        text, n = _unleet_ascii(text) if few else _unleet_any(text)
        folds += n
    if _SPACED_AT in needs:
        text, n = _SPACED.subn(_join_spaced, text)
        folds += n
    if _BLANKS_AT in needs:
        if ascii_text:
            text = _SPACES.sub(" ", text.translate(_ASCII_BLANKS))
        else:
            text = _BLANKS.sub(" ", text)
    # Blanks are now single spaces: a run of blanks holding a line end becomes that line end.
    if "\n" in text:
        text = _NEWLINE_RUN.sub("\n", text.replace(" \n", "\n"))
    return Normalised(text, folds)
