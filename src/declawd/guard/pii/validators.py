"""Validators for the structured PII types: what a candidate span must satisfy to count. Pure.

Each function takes the candidate exactly as matched and answers from the value alone (context
words are the detector's business). Invariant: no validator raises on any string and none
does more than linear work in its input's length (inputs are bounded by the candidate
patterns anyway).
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
from collections import Counter

import phonenumbers

# Issuer prefixes (IIN ranges) of the card networks a 13-19 digit number may belong to:
# (low, high) over the leading `len(str(low))` digits, and the lengths the network issues.
_IIN: tuple[tuple[int, int, tuple[int, ...]], ...] = (
    (4, 4, (13, 16, 19)),  # Visa
    (51, 55, (16,)),  # Mastercard
    (2221, 2720, (16,)),  # Mastercard 2-series
    (34, 34, (15,)),  # American Express
    (37, 37, (15,)),
    (300, 305, (14, 16, 19)),  # Diners Club
    (36, 36, (14, 16, 19)),
    (38, 39, (14, 16, 19)),
    (6011, 6011, (16, 19)),  # Discover
    (644, 649, (16, 19)),
    (65, 65, (16, 19)),
    (3528, 3589, (16, 19)),  # JCB
    (62, 62, (16, 17, 18, 19)),  # UnionPay
    (5018, 5018, (12, 13, 14, 15, 16, 17, 18, 19)),  # Maestro
    (5020, 5020, (12, 13, 14, 15, 16, 17, 18, 19)),
    (5038, 5038, (12, 13, 14, 15, 16, 17, 18, 19)),
    (5893, 5893, (12, 13, 14, 15, 16, 17, 18, 19)),
    (6304, 6304, (12, 13, 14, 15, 16, 17, 18, 19)),
    (6759, 6759, (12, 13, 14, 15, 16, 17, 18, 19)),
    (6761, 6763, (12, 13, 14, 15, 16, 17, 18, 19)),
)


def luhn(digits: str) -> bool:
    """The Luhn (mod 10) check over a string of ASCII digits (False for anything else)."""
    if not digits or not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_network(digits: str) -> bool:
    """Whether `digits` start with an issuer prefix of a card network at a length it issues."""
    n = len(digits)
    for low, high, lengths in _IIN:
        width = len(str(low))
        if n in lengths and n > width and low <= int(digits[:width]) <= high:
            return True
    return False


def card_grouping(raw: str) -> bool:
    """A card number as people write it: digits only, or one separator (space or hyphen)
    used throughout in the groupings cards are printed with (4-4-4-4[-3], 4-6-5, 4-6-4)."""
    seps = {c for c in raw if not c.isdigit()}
    if not seps:
        return True
    if len(seps) != 1 or seps - {" ", "-"}:
        return False
    groups = tuple(len(g) for g in raw.split(seps.pop()))
    if any(n == 0 for n in groups):
        return False
    if all(n == 4 for n in groups[:-1]) and len(groups) >= 3 and 1 <= groups[-1] <= 4:
        return True
    return groups in ((4, 6, 5), (4, 6, 4), (4, 4, 5), (4, 5, 4, 4))


def credit_card(raw: str) -> bool:
    digits = "".join(c for c in raw if c.isdigit())
    if not 13 <= len(digits) <= 19 or len(set(digits)) < 2:
        return False
    return card_grouping(raw) and card_network(digits) and luhn(digits)


def ssn(raw: str) -> bool:
    """The SSA's structural rules: 9 digits, area not 000, 666 or 900-999, group not 00,
    serial not 0000, not one digit repeated; separators, if any, both `-` or both space."""
    if len(raw) == 11 and raw[3] == raw[6] and raw[3] in "- ":
        digits = raw[:3] + raw[4:6] + raw[7:]
    elif len(raw) == 9:
        digits = raw
    else:
        return False
    if not (digits.isascii() and digits.isdigit()):
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    return len(set(digits)) > 1


def phone(raw: str, region: str = "US") -> bool:
    """A number the numbering plan assigns: parsed in `region` unless it starts with `+` (or
    `00`, international), then `phonenumbers.is_valid_number` (libphonenumber's metadata).
    An extension (`x123`, `ext. 45`) is not part of the check."""
    text = raw.strip()
    for mark in ("ext", "x", "X", ","):
        text = text.partition(mark)[0]
    intl = text.startswith(("+", "00"))
    digits = "".join(filter(str.isdigit, text))
    if intl and text.startswith("00"):
        digits = digits[2:]
    return _valid(digits, intl, region)


@functools.lru_cache(maxsize=4096)
def _valid(digits: str, intl: bool, region: str) -> bool:
    """Cached: a conversation resends its numbers with every request."""
    if not intl and region == "US":
        if len(digits) == 11 and digits[0] == "1":
            digits = digits[1:]
        if len(digits) != 10 or digits[0] in "01" or digits[3] in "01":
            return False  # NANP: NXX area code, NXX exchange
        return nanp_valid(digits)
    if intl and len(digits) == 11 and digits[0] == "1" and digits[1] not in "01":
        return nanp_valid(digits[1:])  # +1 NXX...: parses to exactly these 10 digits
    try:
        number = phonenumbers.parse(("+" if intl else "") + digits, None if intl else region)
    except phonenumbers.NumberParseException:
        return False
    return _libphonenumber_valid(number)


def _libphonenumber_valid(number: phonenumbers.PhoneNumber) -> bool:
    if number.country_code == 1 and phonenumbers.is_valid_number_for_region(number, "US"):
        return True  # the common case, without trying every NANP region
    return phonenumbers.is_valid_number(number)


# The number types libphonenumber tries, in its order (`_number_type_helper`).
_DESCS = (
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
    "fixed_line",
    "mobile",
)


class _Nanp:
    """`phonenumbers.is_valid_number` for a 10-digit number of country code 1, as one regex
    match instead of up to 25 regions times 11 number types.

    libphonenumber takes the first region of the NANP list that either has leading digits
    the number starts with, or (having none) validates the number; the number is valid if
    it is valid for that region. `_first` is that list as one ordered alternation (Python's
    `re` takes the first alternative that matches): `v<i>` for region i validating it,
    `l<i>` for region i's leading digits; `_valid[i]` is region i's own validity pattern.
    A region validates a number when its general pattern and one of its type patterns
    match the whole number, each pattern counted only if it admits length 10."""

    def __init__(self) -> None:
        from phonenumbers import PhoneMetadata
        from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE

        alternatives: list[str] = []
        self._valid: dict[str, re.Pattern[str] | None] = {}
        for i, region in enumerate(COUNTRY_CODE_TO_REGION_CODE[1]):
            md = PhoneMetadata.metadata_for_region(region.upper(), None)
            if md is None:
                continue
            own = _region_pattern(md)
            self._valid[f"l{i}"] = None if own is None else re.compile(own)
            if md.leading_digits is not None:
                alternatives.append(f"(?P<l{i}>(?:{md.leading_digits})\\d*\\Z)")
            elif own is not None:
                alternatives.append(f"(?P<v{i}>{own})")
        self._first = re.compile("|".join(alternatives))

    def __call__(self, digits: str) -> bool:
        m = self._first.match(digits)
        if m is None or m.lastgroup is None:
            return False
        if m.lastgroup[0] == "v":
            return True
        own = self._valid[m.lastgroup]
        return own is not None and own.match(digits) is not None


def _region_pattern(md: object) -> str | None:
    """The pattern (anchored at both ends) of the 10-digit numbers a region validates, None
    for none."""

    def usable(desc: object) -> str | None:
        if desc is None:
            return None
        lengths = getattr(desc, "possible_length", None) or ()
        pattern = getattr(desc, "national_number_pattern", None)
        if (lengths and 10 not in lengths) or not pattern:
            return None
        return str(pattern)

    general = usable(getattr(md, "general_desc", None))
    if general is None:
        return None
    names = _DESCS[:-1] if getattr(md, "same_mobile_and_fixed_line_pattern", False) else _DESCS
    types = [p for p in (usable(getattr(md, n, None)) for n in names) if p is not None]
    if not types:
        return None
    return f"(?=(?:{general})\\Z)(?:" + "|".join(f"(?:{p})\\Z" for p in types) + ")"


@functools.cache
def _nanp() -> _Nanp | None:
    try:
        return _Nanp()
    except (AttributeError, KeyError, TypeError, re.error):  # metadata not as expected
        return None


def nanp_valid(digits: str) -> bool:
    """`phonenumbers.is_valid_number` of +1 `digits` (10 ASCII digits, the first 2-9)."""
    fast = _nanp()
    if fast is not None:
        return fast(digits)
    return _libphonenumber_valid(
        phonenumbers.PhoneNumber(country_code=1, national_number=int(digits))
    )


# Extensions of files and assets whose names look like `name@2x.png` (not a mail domain).
_FILE_EXTENSIONS = (
    "png jpg jpeg gif svg webp ico bmp tif tiff css js mjs ts tsx jsx py rb go rs java kt "
    "json yaml yml toml lock md txt csv xml html htm pdf zip gz tgz bin exe dll so map wasm "
    "mp3 mp4 wav mov"
)
_FILE_TLDS = frozenset(_FILE_EXTENSIONS.split())


def email(raw: str) -> bool:
    """RFC 5321 shape, the everyday subset: local part of atext and inner dots, a domain of
    LDH labels (1-63, no edge hyphen), a letters-only TLD that is not a file extension."""
    local, at, domain = raw.rpartition("@")
    if not at or not local or len(local) > 64 or len(domain) > 253:
        return False
    if local[0] == "." or local[-1] == "." or ".." in local:
        return False
    labels = domain.split(".")
    if len(labels) < 2:
        return False
    for label in labels:
        if not 1 <= len(label) <= 63 or label[0] == "-" or label[-1] == "-":
            return False
    tld = labels[-1]
    return tld.isalpha() and tld.lower() not in _FILE_TLDS


def ip_address(raw: str) -> bool:
    """A valid IPv4 (dotted quad, no leading zeros) or IPv6 address (`ipaddress`), the
    unspecified IPv6 `::` excepted (it is the C++ scope operator as often as an address)."""
    text = raw.split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return False
    return not (addr.version == 6 and text == "::")


def entropy(s: str) -> float:
    """Shannon entropy of `s` in bits per character."""
    if not s:
        return 0.0
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def secret_like(token: str, *, min_len: int = 20, min_entropy: float = 3.3) -> bool:
    """A generic secret: long, high entropy, letters and digits mixed, not a UUID or a
    dotted/slashed path (those are identifiers, not credentials)."""
    if len(token) < min_len:
        return False
    if token.count("/") > 1 or token.count(".") > 2:
        return False
    if _uuid(token):
        return False
    has_digit = any(c.isdigit() for c in token)
    has_alpha = any(c.isalpha() for c in token)
    mixed_case = any(c.isupper() for c in token) and any(c.islower() for c in token)
    if not ((has_digit and has_alpha) or (mixed_case and len(token) >= 24)):
        return False
    return entropy(token) >= min_entropy


def _uuid(token: str) -> bool:
    parts = token.split("-")
    if [len(p) for p in parts] != [8, 4, 4, 4, 12]:
        return False
    return all(c in "0123456789abcdefABCDEF" for p in parts for c in p)
