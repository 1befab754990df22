"""The structured PII types (ssn, credit_card, email, phone, ip_address, api_key) on a
linear-time path: RE2 candidate patterns, then the validators, then context words. Pure.

A text first meets one RE2 pattern, the union of the enabled types' candidates: a text none
matches (most JSON string values) costs that one search. Otherwise each enabled type's own
pattern runs from the first candidate on; every candidate is validated (validators.py) and
judged by the nearest cue word in the 48 characters before it (`_cue`: +1 a word that names
the type, -1 one that names something else, such as "order" or "version"). Invariant: the
work is linear in the text (RE2 scans; each candidate's checks are bounded by its length,
which the patterns bound, plus the fixed cue window).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import re2

from declawd.guard.pii import validators
from declawd.guard.pii.cache import FINDINGS
from declawd.guard.pii.findings import Finding

_CUE_WINDOW = 48

_EMAIL = (
    r"[A-Za-z0-9][A-Za-z0-9._%+'\-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)+"
)
_SSN = r"\b\d{3}[- ]\d{2}[- ]\d{4}\b|\b\d{9}\b"
_CARD = r"\b\d(?:[ \-]?\d){11,18}\b"
_PHONE = (
    r"(?:\+\d{1,3}[ .\-]?|\b00\d{1,3}[ .\-]?|\b1[ .\-])?(?:\(\d{1,4}\)[ .\-]?|\d{1,4}[ .\-]?)"
    r"\d{1,5}(?:[ .\-]?\d{2,5}){0,5}(?:[ ,]*(?:x|ext\.?|extension)[ .]?\d{1,6})?\b"
)
_IPV4 = r"\b(?:\d{1,3}\.){3}\d{1,3}\b"
_IPV6 = (
    r"(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|\d{1,3}(?:\.\d{1,3}){3})?"
    r"(?:%[0-9A-Za-z]{1,15})?"
)
# Provider formats (prefix and body as the providers document or issue them).
_PROVIDER_KEYS = (
    r"sk-ant-(?:api|admin|sid)\d{2}-[A-Za-z0-9_\-]{20,200}",  # Anthropic
    r"sk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_\-]{20,200}",  # OpenAI
    r"gh[pousr]_[A-Za-z0-9]{36,76}",  # GitHub classic/OAuth/app/refresh tokens
    r"github_pat_[A-Za-z0-9_]{50,100}",  # GitHub fine-grained
    r"(?:AKIA|ASIA|ABIA|ACCA|AROA|AIDA)[A-Z0-9]{16}",  # AWS access key id
    r"AIza[0-9A-Za-z_\-]{35}",  # Google API key
    r"ya29\.[0-9A-Za-z_\-]{20,300}",  # Google OAuth access token
    r"xox[abposre]-[A-Za-z0-9\-]{10,100}",  # Slack
    r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,120}",  # Stripe secret / restricted
    r"whsec_[A-Za-z0-9]{24,64}",  # Stripe webhook secret
    r"glpat-[A-Za-z0-9_\-]{20,40}",  # GitLab
    r"hf_[A-Za-z0-9]{30,40}",  # Hugging Face
    r"npm_[A-Za-z0-9]{36}",  # npm
    r"pypi-[A-Za-z0-9_\-]{50,300}",  # PyPI upload token
    r"SG\.[A-Za-z0-9_\-]{16,32}\.[A-Za-z0-9_\-]{30,64}",  # SendGrid
    r"SK[0-9a-f]{32}",  # Twilio API key
    r"dop_v1_[a-f0-9]{64}",  # DigitalOcean
    r"shp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}",  # Shopify
    r"AGE-SECRET-KEY-1[0-9A-Z]{58}",  # age
    r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",  # JWT
)
_API_KEY = "|".join(_PROVIDER_KEYS)
# A secret named by its context: `api_key=...`, `"token": "..."`, `Authorization: Bearer ...`.
_GENERIC_KEY = (
    r"(?i:api[_\-]?key|apikey|secret|token|bearer|passw(?:or)?d|credential|access[_\-]?key"
    r"|private[_\-]?key|auth)[A-Za-z0-9_\-]{0,20}[\\\"']{0,2}\s{0,3}(?:[:=]|=>)?\s{0,3}[\\\"']{0,2}"
    r"(?:(?i:bearer|token|basic)\s+)?([A-Za-z0-9_\-+/=.~]{20,300})"
)

_PATTERNS: dict[str, str] = {
    "email": _EMAIL,
    "ssn": _SSN,
    "credit_card": _CARD,
    "phone": _PHONE,
    "ip_address": f"{_IPV4}|{_IPV6}",
    "api_key": _API_KEY,
}


def _rx(pattern: str) -> re2._Regexp:
    return re2.compile(pattern)


_COMPILED = {t: _rx(p) for t, p in _PATTERNS.items()}
_COMPILED_GENERIC = _rx(_GENERIC_KEY)


def _cues(positive: str, negative: str) -> re2._Regexp:
    # words end at any non-alphanumeric character, `_` included (`remote_addr`, `tel=`)
    return _rx(rf"(?i:(?:^|[^a-z0-9])(?:({positive})|({negative}))(?:[^a-z0-9]|$))")


_SSN_CUES = _cues(
    r"ssn|ss#|ssns|social\s+security(?:\s+(?:number|no|#))?|social|taxpayer|tin|itin|sin",
    r"order|invoice|ref|reference|part|sku|tracking|serial|ticket|case|zip|po|id|account"
    r"|acct|routing|isbn|phone|tel|fax|call|batch|lot|build",
)
_CARD_CUES = _cues(
    r"card|cards|credit|debit|visa|mastercard|amex|american\s+express|discover|jcb|diners"
    r"|cc|ccn|pan|payment|pay|paid|charge|charged|billing|cardholder|card_number|cardnumber",
    r"order|invoice|imei|tracking|serial|isbn|ean|upc|gtin|account|acct|iban|routing|ref"
    r"|reference|transaction|txn|id|ticket|sku|barcode|number_id|timestamp|ts|epoch|nonce",
)
_PHONE_CUES = _cues(
    r"phone|phones|tel|telephone|mobile|cell|cellphone|fax|call|called|calling|text|sms"
    r"|whatsapp|contact|reach|dial|ring|number|hotline|helpline|landline|ph|mob",
    r"order|invoice|ref|reference|sku|tracking|serial|isbn|ean|upc|id|account|acct|ticket"
    r"|case|transaction|txn|timestamp|ts|epoch|build|version|zip|po|batch|lot|part|item"
    r"|employee|customer|user|uid|pid|port",
)
_IP_CUES = _cues(
    r"ip|ips|ipv4|ipv6|addr|address|host|server|client|from|src|dst|source|destination"
    r"|remote|peer|gateway|dns|nameserver|subnet|connect|connected|ping|listen|bind|inet",
    r"v|ver|version|versions|release|build|firmware|fw|os|chrome|firefox|safari|edge|rev"
    r"|revision|tag|oid|semver|upgrade|upgraded|update|updated|patch",
)
_KEY_CUES = _cues(
    r"key|keys|token|secret|api|apikey|bearer|auth|authorization|credential|credentials"
    r"|password",
    r"example|placeholder|sample|dummy|fake|redacted",
)


def _cue(rx: re2._Regexp, text: str, start: int) -> int:
    """+1/-1 for the last positive/negative cue word before `start` (0: none)."""
    window = text[max(0, start - _CUE_WINDOW) : start]
    last = 0
    if _UNANCHORED is None or not window.isascii():
        for spans in _scan(rx, window):
            last = 1 if spans[1][0] >= 0 else -1
        return last
    # `_scan`'s loop, inline: one call or two per checked candidate
    data, pos, end, prog = window.encode(), 0, len(window), rx._regexp
    while pos <= end:
        spans = prog.Match(_UNANCHORED, data, pos, end)
        s, e = spans[0]
        if s < 0:
            break
        last = 1 if spans[1][0] >= 0 else -1
        pos = e if e > s else e + 1
    return last


def _left(text: str, start: int, bad: str) -> bool:
    """The character before `start` is not a letter, digit or one of `bad`."""
    if not start:
        return True
    c = text[start - 1]
    return not (c.isalnum() or c in bad)


def _right(text: str, end: int, bad: str) -> bool:
    """The text after `end` does not continue the token: no letter or digit, and none of
    `bad` followed by a letter or digit (`1.2.3.4.5`, `12-34`)."""
    if end >= len(text):
        return True
    c = text[end]
    if c.isalnum():
        return False
    return not (c in bad and end + 1 < len(text) and text[end + 1].isalnum())


# One checker per type: (text, match start, match end) -> the finding there, if any.
Checker = Callable[[str, int, int], Finding | None]


def _email(text: str, s: int, e: int) -> Finding | None:
    if not _left(text, s, "._%+'-@/"):
        return None
    value = text[s:e]
    # `git@github.com:org/repo.git`: an scp-style remote, not a mailbox.
    if e < len(text) and text[e] == ":" and value.split("@")[0] in ("git", "hg", "svn"):
        return None
    if validators.email(value):
        return Finding("email", s, e, value, 0.95)
    return None


def _ssn(text: str, s: int, e: int) -> Finding | None:
    if not _left(text, s, "-./$+_") or not _right(text, e, "-./"):
        return None
    value = text[s:e]
    if not validators.ssn(value):
        return None
    cue = _cue(_SSN_CUES, text, s)
    if cue < 0 or (cue == 0 and "-" not in value):
        return None
    return Finding("ssn", s, e, value, 0.95 if cue > 0 else 0.75)


def _card(text: str, s: int, e: int) -> Finding | None:
    if not _left(text, s, "-./#$+_") or not _right(text, e, "-./"):
        return None
    raw = text[s:e]
    sep = next((c for c in raw if not c.isdigit()), "")
    candidates = [raw]
    if sep:  # a card followed by more digits: its leading groups
        groups = raw.split(sep)
        candidates += [sep.join(groups[:k]) for k in range(len(groups) - 1, 2, -1)]
    for value in candidates:
        if validators.credit_card(value):
            cue = _cue(_CARD_CUES, text, s)
            if cue < 0 or (cue == 0 and not sep and len(value) != 16):
                return None
            return Finding("credit_card", s, s + len(value), value, 0.95 if cue > 0 else 0.8)
    return None


def _dotted_quad(value: str) -> bool:
    """`value` is 4 runs of 1-3 ASCII digits joined by dots (an IPv4 address or a version,
    not a phone number)."""
    parts = value.split(".")
    return len(parts) == 4 and all(0 < len(p) <= 3 and p.isascii() and p.isdigit() for p in parts)


def _phone(text: str, s: int, e: int) -> Finding | None:
    value = text[s:e]
    if not _left(text, s, "-./#$_") or not _right(text, e, "-./"):
        return None
    digits = sum(map(str.isdigit, value))
    if not 7 <= digits <= 18 or _dotted_quad(value):
        return None
    intl = value.startswith(("+", "00"))
    if not intl and digits < 10:
        return None  # a national number has an area code (US: 10 digits)
    if not validators.phone(value):
        return None
    cue = _cue(_PHONE_CUES, text, s)
    core = value.split("x")[0].split("ext")[0]
    bare = core.strip().isdigit()
    if cue < 0 or (bare and cue <= 0 and not intl):
        return None
    return Finding("phone", s, e, value, 0.95 if cue > 0 else 0.8)


def _ip(text: str, s: int, e: int) -> Finding | None:
    value = text[s:e]
    v6 = ":" in value
    if v6:
        if not _left(text, s, ":_-") or (e < len(text) and (text[e].isalnum() or text[e] in "_")):
            return None
        if value.count(":") < 2 or not validators.ip_address(value):
            return None
        if sum(c in "0123456789abcdefABCDEF" for c in value) < 3 and value != "::1":
            return None
    else:
        if not _left(text, s, "._-/@") or not _right(text, e, ".-"):
            return None
        if not validators.ip_address(value):
            return None
    cue = _cue(_IP_CUES, text, s)
    if cue < 0:
        return None
    return Finding("ip_address", s, e, value, 0.95 if cue > 0 else 0.85)


_FIXED_KEY_PREFIXES = ("AKIA", "ASIA", "ABIA", "ACCA", "AROA", "AIDA", "AGE-SECRET-KEY-1")


def _api_key(text: str, s: int, e: int) -> Finding | None:
    if not _left(text, s, "_-"):
        return None
    if e < len(text) and (text[e].isalnum() or text[e] in "_-"):
        return None
    value = text[s:e]
    if not value.startswith(_FIXED_KEY_PREFIXES):
        if len(set(value)) < 12 or validators.entropy(value) < 3.0:
            return None  # sk-xxxxxxxx..., a placeholder
        if value.startswith("sk-") and not any(c.isdigit() for c in value):
            return None  # sk-some-long-hyphenated-words
    return Finding("api_key", s, e, value, 0.99)


_CHECKERS: dict[str, Checker] = {
    "email": _email,
    "ssn": _ssn,
    "credit_card": _card,
    "phone": _phone,
    "ip_address": _ip,
    "api_key": _api_key,
}


_KEYS = _rx(f"(?P<api_key>{_API_KEY})|(?P<generic>{_GENERIC_KEY})")
_PROVIDER_GROUP = _KEYS.groupindex["api_key"]
_GENERIC_SECRET = _KEYS.groupindex["generic"] + 1  # the secret inside the generic match
Spans = tuple[tuple[int, int], ...]
_UNANCHORED = getattr(getattr(re2, "_Anchor", None), "UNANCHORED", None)
_DIGIT_OR_COLON = frozenset("0123456789:")
_NEEDS_DIGIT = ("ssn", "credit_card", "phone")

# Triage: one RE2 pass (a set of patterns) says which passes can find anything. Each
# pattern matches somewhere in every text that has a finding of its type:
# - ssn, credit_card: their own candidate patterns;
# - phone: 6 digits in a row, each pair apart by at most 2 of ` .()-` (a national number
#   has 10, an international one at least 6: a country code and the shortest national
#   number libphonenumber knows; the extension's digits are extra);
# - ip_address: a dotted quad, or two colons with at most 4 hex digits between them;
# - api_key: 15 characters a key is made of, one of them an uppercase letter, a digit, `_`
#   or `-` (Slack's `xox?-` and 10 is the shortest provider key, and every provider's
#   prefix has one; a secret named by its context has 20, with a digit or an uppercase
#   letter).
_CLUSTER = r"\d(?:[ .()\-]{0,2}\d){5}"
_TRIAGE_PATTERNS = {
    "ssn": _SSN,
    "credit_card": _CARD,
    "phone": _CLUSTER,
    "ip_address": r"(?:\d{1,3}\.){3}\d{1,3}|:[0-9A-Fa-f]{0,4}:",
    # the first such character at offset i of the 15, for each i
    "api_key": "|".join(
        rf"[a-z+/=.~]{{{i}}}[A-Z0-9_\-][A-Za-z0-9_\-+/=.~]{{{14 - i}}}" for i in range(15)
    ),
}
_FLAG = {t: i for i, t in enumerate(_TRIAGE_PATTERNS)}
_F_IP, _F_KEY = _FLAG["ip_address"], _FLAG["api_key"]
_KEY_MIN = 15


def _triage() -> Callable[[bytes], list[int]] | None:
    if not hasattr(re2, "Set"):
        return None
    rs = re2.Set.SearchSet()
    for pattern in _TRIAGE_PATTERNS.values():
        rs.Add(pattern)
    rs.Compile()
    raw = getattr(rs, "_set", None)
    match = getattr(raw, "Match", None)
    return match if callable(match) else lambda data: rs.Match(data) or []


_TRIAGE = _triage()
_EVERY = tuple(_FLAG.values())

# The characters an SSN, card or phone candidate can be made of (the phone's extension
# words included): no candidate crosses any other character, so when two or more digit
# types are to be scanned, they are scanned only in the runs of these characters that
# hold a digit cluster (`_SEGMENT`).
_DIGIT_ALPHABET = frozenset("0123456789 +.-(),extnsio")
_SEGMENT = _rx(rf"[0-9 +.\-(),extnsio]*{_CLUSTER}[0-9 +.\-(),extnsio]*")


@dataclass(frozen=True)
class _Plan:
    """What `detect_structured` does for one tuple of types."""

    email: bool
    digits: tuple[tuple[int, re2._Regexp, Checker], ...]  # (triage flag, pattern, checker)
    ip: bool
    key: bool
    triaged: bool  # any of the last three


@functools.lru_cache(maxsize=64)
def _plan(types: tuple[str, ...]) -> _Plan:
    digits = tuple((_FLAG[t], _COMPILED[t], _CHECKERS[t]) for t in _NEEDS_DIGIT if t in types)
    ip, key = "ip_address" in types, "api_key" in types
    return _Plan("email" in types, digits, ip, key, bool(digits) or ip or key)


def _scan(rx: re2._Regexp, text: str, data: bytes | None = None) -> Iterator[Spans]:
    """The spans (whole match, then each group; (-1, -1) unset) of each match of `rx`.
    An ASCII text goes to RE2 as its bytes (`data`, when the caller has them), offsets
    unchanged, without the wrapper's per-match offset translation (a third of the cost);
    any other text via `finditer`."""
    if _UNANCHORED is not None and text.isascii():
        yield from _spans(rx, text.encode() if data is None else data, 0, len(text))
        return
    groups = rx.groups
    for m in rx.finditer(text):
        yield tuple(m.span(i) for i in range(groups + 1))


def _spans(rx: re2._Regexp, data: bytes, pos: int, end: int) -> Iterator[Spans]:
    """`_scan` over `data[pos:end]` of an ASCII text, the rest of it as context (RE2 sees
    the characters around the range for `\\b` and `$`)."""
    prog = rx._regexp
    while pos <= end:
        spans = prog.Match(_UNANCHORED, data, pos, end)
        s, e = spans[0]
        if s < 0:
            return
        yield tuple(spans)
        pos = e if e > s else e + 1


def _segments(text: str, data: bytes) -> list[tuple[int, int]] | None:
    """The runs of `_DIGIT_ALPHABET` characters that hold a digit cluster, each whole;
    None if a run found is not bounded by characters outside the alphabet (then the caller
    scans the whole text)."""
    out = []
    n = len(text)
    for (s, e), *_ in _spans(_SEGMENT, data, 0, n):
        if (s and text[s - 1] in _DIGIT_ALPHABET) or (e < n and text[e] in _DIGIT_ALPHABET):
            return None
        out.append((s, e))
    return out


def _emails(text: str, data: bytes | None, out: list[Finding]) -> None:
    """The email pass, each RE2 search started at most 64 characters (the longest local
    part) before the next `@`, so the text after the last mailbox is not scanned."""
    rx = _COMPILED["email"]
    if data is None:
        for (s, e), *_ in _scan(rx, text):
            if (f := _email(text, s, e)) is not None:
                out.append(f)
        return
    prog, n, pos = rx._regexp, len(text), 0
    at = text.find("@")
    while at >= 0:
        s, e = prog.Match(_UNANCHORED, data, max(pos, at - 64), n)[0]
        if s < 0:
            return
        if (f := _email(text, s, e)) is not None:
            out.append(f)
        pos = e
        at = text.find("@", pos)


def _digit_types(
    text: str,
    data: bytes | None,
    wanted: Sequence[tuple[int, re2._Regexp, Checker]],
    out: list[Finding],
    *,
    segments: bool,
) -> None:
    """The ssn, credit_card and phone passes of `wanted`: over the segments that can hold
    a finding (an ASCII text, with `segments`), else over the whole text. Both find the
    same: a segment is bounded by characters no candidate contains, so the matches of a
    whole-text scan are those of the segments plus matches elsewhere, which lack a digit
    cluster and so pass no checker."""
    ranges = _segments(text, data) if segments and data is not None else None
    if ranges is None:
        for _, rx, check in wanted:
            for (s, e), *_ in _scan(rx, text, data):
                if (f := check(text, s, e)) is not None:
                    out.append(f)
        return
    assert data is not None
    for start, end in ranges:
        for _, rx, check in wanted:
            for (s, e), *_ in _spans(rx, data, start, end):
                if (f := check(text, s, e)) is not None:
                    out.append(f)


def _generic(text: str, s: int, e: int) -> Finding | None:
    value = text[s:e].rstrip(".")
    e = s + len(value)
    if e < len(text) and (text[e].isalnum() or text[e] in "_-+/="):
        return None
    if _cue(_KEY_CUES, text, s) < 0:
        return None
    if validators.secret_like(value):
        return Finding("api_key", s, e, value, 0.8)
    return None


def detect_structured(
    text: str, types: tuple[str, ...], *, triage: bool = True, cache: bool = True
) -> list[Finding]:
    """Every validated structured finding of `types` in `text`, possibly overlapping (the
    caller resolves). Types not structured are ignored.

    One RE2 pass per type (a union of all was slower: its DFA outgrows RE2's state cache on
    real text), skipped when the text lacks what every candidate of the type has: `@` for
    email; for the others the triage pass (`_TRIAGE`), itself skipped for a text shorter
    than a key without an ASCII digit or `:`. `triage=False` runs every pass over the whole
    text (the reference the fast path must equal). A text that gets past triage is looked
    up in (and then stored in) the process's memo (cache.py) unless `cache` is False."""
    out: list[Finding] = []
    at = "@" in text
    short = len(text) < _KEY_MIN and _DIGIT_OR_COLON.isdisjoint(text)
    if triage and short and not at:
        return out  # the common short value: a role, a model name, an id
    plan = _plan(types)
    email = plan.email and at
    data = text.encode() if _UNANCHORED is not None and text.isascii() else None
    flags: Sequence[int] = ()
    if not triage:
        flags = _EVERY
    elif plan.triaged and not short:
        flags = _EVERY if _TRIAGE is None else _TRIAGE(text.encode() if data is None else data)
    if not (flags or email):
        return out
    if triage and cache and FINDINGS.wants(text):
        key = (text, types, -1)  # -1: structured only, not resolved
        hit = FINDINGS.get(key)
        if hit is not None:
            return hit
        out = _passes(text, plan, data, flags, email, triage)
        FINDINGS.put(key, out)
        return out
    return _passes(text, plan, data, flags, email, triage)


def _passes(
    text: str, plan: _Plan, data: bytes | None, flags: Sequence[int], email: bool, triage: bool
) -> list[Finding]:
    """The passes `detect_structured` decided on."""
    out: list[Finding] = []
    if email:
        _emails(text, data if triage else None, out)
    if plan.digits and flags:
        wanted = [d for d in plan.digits if d[0] in flags]
        if wanted:
            _digit_types(text, data, wanted, out, segments=triage and len(wanted) > 1)
    if plan.ip and _F_IP in flags:
        for (s, e), *_ in _scan(_COMPILED["ip_address"], text, data):
            if (f := _ip(text, s, e)) is not None:
                out.append(f)
    if plan.key and _F_KEY in flags:
        for spans in _scan(_KEYS, text, data):
            if spans[_PROVIDER_GROUP][0] >= 0:
                f = _api_key(text, *spans[0])
            else:
                f = _generic(text, *spans[_GENERIC_SECRET])
            if f is not None:
                out.append(f)
    return out
