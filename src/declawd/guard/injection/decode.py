"""Decoding of encoded runs for the injection scan: base64, hex, URL-encoding, HTML
entities, JSON string escapes and rot13, decoded (nested up to a depth) so that an instruction hidden in an
encoding is scanned as text too. Pure.

What is decoded: base64 runs (20+ characters of the standard or URL-safe alphabet), hex runs
(10+ bytes, plain, `\\x41` or separated by spaces/colons), a text with 4+ `%xx` escapes or 3+
numeric HTML entities or 3+ JSON escapes (`\\u0441`, `\\"`: the whole text,
unescaped), and a text carrying rot13 forms of the
rules' key words. A decoding is kept only when it is text: valid UTF-8, at least 85%
printable, with a letter in it. Invariant: bounded work per text: at most `MAX_RUNS`
decodings and `max_chars` decoded characters in all, whatever the depth.

Speed: one `re2.Set` pass (`_CANDIDATES`) over a text's UTF-8 says whether a base64 run, a
hex run or a rot13 key word can be there at all; base64 and hex runs are then found by RE2
over the same bytes (the runs are ASCII, and RE2's leftmost-first matches are the ones the
Python patterns, kept for texts that are not valid UTF-8, give); escapes are counted and
the rot13 hint looked for only when the set saw them.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import html
import re
from dataclasses import dataclass
from urllib.parse import unquote

import re2

MAX_RUNS = 32
MAX_DECODED = 256 * 1024  # characters, whatever the text's length

_B64 = re.compile(r"[A-Za-z0-9+/_-]{20,}={0,2}")
_HEX = re.compile(
    r"(?:\\x[0-9a-fA-F]{2}){6,}|(?:0x)?(?:[0-9a-fA-F]{2}){10,}|"
    r"(?:[0-9a-fA-F]{2}[ :,]){9,}[0-9a-fA-F]{2}"
)
_HEX_JUNK = re.compile(r"\\x|0x|[ :,]")
_URL_ESC = re.compile(r"%[0-9a-fA-F]{2}")
_JSON_ESC = re.compile(r'\\(?:u[0-9a-fA-F]{4}|["\\/bfnrt])')
_ENTITY = re.compile(r"&#(?:[0-9]{1,7}|[xX][0-9a-fA-F]{1,6});")
# rot13 of: ignore, previous, instructions, disregard, system, prompt, secret, password.
_ROT13_HINT = re.compile(
    r"(?i)\b(?:vtaber|cerivbhf|vafgehpgvbaf?|qvfertneq|flfgrz|cebzcg|frperg|cnffjbeq|"
    r"rot-?13)\b"
)


_B64_AT, _HEX_AT, _URL_AT, _ENTITY_AT, _JSON_AT, _ROT13_AT = range(6)
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False
_CANDIDATES = re2.Set.SearchSet(_OPTIONS)
for _source in (
    _B64.pattern,
    _HEX.pattern,
    _URL_ESC.pattern,
    _ENTITY.pattern,
    _JSON_ESC.pattern,
    # The rot13 hint without its word bounds, and with the non-ASCII letters that Python's
    # case-insensitive `i` also matches: a superset of where `_ROT13_HINT` can match.
    r"(?i)(?:vtaber|cer[i\x{131}\x{130}]vbhf|vafgehpgvbaf?|qvfertneq|flfgrz|cebzcg|frperg|cnffjbeq|"
    r"rot-?13)",
):
    _CANDIDATES.Add(_source)
_CANDIDATES.Compile()
_EVERY = frozenset(range(6))
_B64_RE2 = re2.compile(_B64.pattern, _OPTIONS)
_HEX_RE2 = re2.compile(_HEX.pattern, _OPTIONS)


@dataclass(frozen=True)
class Decoded:
    """One decoded run: its text and how it was decoded (`base64`, `hex>rot13`...)."""

    text: str
    how: str


def _is_text(s: str) -> bool:
    if not s or not any(c.isalpha() for c in s):
        return False
    if s.isprintable():
        return True
    printable = sum(1 for c in s if c.isprintable() or c in "\n\r\t")
    return printable >= 0.85 * len(s)


def _bytes_text(raw: bytes) -> str | None:
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return s if _is_text(s) else None


def _b64(run: str) -> str | None:
    body = run.rstrip("=")
    if len(body) % 4 == 1:
        return None
    if body.isalpha() and (body.islower() or body.isupper()):
        return None  # a plain word or identifier, not an encoding
    padded = body + "=" * (-len(body) % 4)
    try:
        if "-" in padded or "_" in padded:
            raw = base64.urlsafe_b64decode(padded)
        else:
            raw = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None
    return _bytes_text(raw)


def _hex(run: str) -> str | None:
    digits = _HEX_JUNK.sub("", run)
    if len(digits) % 2:
        digits = digits[:-1]
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        return None
    return _bytes_text(raw)


def _json_unescape(text: str) -> str:
    def one(m: re.Match[str]) -> str:
        esc = m.group(0)
        if esc[1] == "u":
            return chr(int(esc[2:], 16))
        return {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}.get(esc[1], esc[1])

    return _JSON_ESC.sub(one, text)


def _rot13(text: str) -> str:
    return codecs.decode(text, "rot13")


def _runs(pattern: re.Pattern[str], fast: re2._Regexp, text: str, data: bytes | None) -> list[str]:
    if data is None:
        return [m.group(0) for m in pattern.finditer(text)]
    return [m.group(0).decode("ascii") for m in fast.finditer(data)]


def _one_level(text: str) -> list[Decoded]:
    out: list[Decoded] = []
    data: bytes | None
    try:
        data = text.encode("utf-8")
        found = frozenset(_CANDIDATES.Match(data) or ())
    except UnicodeEncodeError:  # lone surrogates: the Python patterns, no prefilter
        data, found = None, _EVERY
    tried: dict[str, str | None] = {}  # a run repeated decodes the same
    if _B64_AT in found:
        for run in _runs(_B64, _B64_RE2, text, data):
            s = tried[run] if run in tried else tried.setdefault(run, _b64(run))
            if s is not None:
                out.append(Decoded(s, "base64"))
            if len(out) >= MAX_RUNS:
                return out
    if _HEX_AT in found:
        tried.clear()
        for run in _runs(_HEX, _HEX_RE2, text, data):
            s = tried[run] if run in tried else tried.setdefault(run, _hex(run))
            if s is not None:
                out.append(Decoded(s, "hex"))
            if len(out) >= MAX_RUNS:
                return out
    if _URL_AT in found and len(_URL_ESC.findall(text, 0, 1 << 16)) >= 4:
        s = unquote(text)
        if s != text:
            out.append(Decoded(s, "url"))
    if _ENTITY_AT in found and len(_ENTITY.findall(text, 0, 1 << 16)) >= 3:
        s = html.unescape(text)
        if s != text:
            out.append(Decoded(s, "html"))
    if _JSON_AT in found and len(_JSON_ESC.findall(text, 0, 1 << 16)) >= 3:
        s = _json_unescape(text)
        if s != text:
            out.append(Decoded(s, "json"))
    if _ROT13_AT in found and _ROT13_HINT.search(text) is not None:
        out.append(Decoded(_rot13(text), "rot13"))
    return out


def decode_runs(text: str, depth: int, max_chars: int = MAX_DECODED) -> list[Decoded]:
    """The decodings of `text`, nested up to `depth` levels (0: none), breadth first."""
    found: list[Decoded] = []
    budget = min(max_chars, MAX_DECODED)
    frontier = [Decoded(text, "")]
    for _ in range(depth):
        nxt: list[Decoded] = []
        for parent in frontier:
            for d in _one_level(parent.text):
                if len(found) >= MAX_RUNS or len(d.text) > budget:
                    return found
                budget -= len(d.text)
                how = f"{parent.how}>{d.how}" if parent.how else d.how
                child = Decoded(d.text, how)
                found.append(child)
                nxt.append(child)
        if not nxt:
            break
        frontier = nxt
    return found
