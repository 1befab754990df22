"""The structured fast path finds exactly what the plain passes find, the NANP shortcut
answers exactly as libphonenumber, and the findings memo stays bounded and correct."""

from __future__ import annotations

import random
import threading

import phonenumbers
import pytest

from declawd.guard.pii import STRUCTURED, TYPES, Finding, detect, validators
from declawd.guard.pii import structured as st
from declawd.guard.pii.cache import FINDINGS, FindingsCache
from declawd.guard.pii.findings import resolve

_FRAGMENTS = (
    "123-45-6789",
    "ssn 123456789",
    "4111 1111 1111 1111",
    "card 4111111111111111",
    "(415) 555-2671",
    "+44 20 7946 0958",
    "0044 20 7946 0958",
    "1-800-555-0199",
    "415.555.2671 ext. 45",
    "call 415-555-2671x123",
    "192.168.0.1",
    "version 1.2.3.4",
    "fe80::1%eth0",
    "2001:db8::8a2e:370:7334",
    "bob.smith@example.com",
    "git@github.com:org/repo.git",
    "logo@2x.png",
    "AKIAABCDEFGH12345678",
    "xoxb-12345abcde",
    "é 415.555.2671",
)
_NOISE = "0123456789" * 3 + " .-()+,x:e@_/=~abAZ" + " extension ssn card phone call ip v "
_KEY_CLASSES = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+/=.~",
    "abcdefghijklmnopqrstuvwxyz+/=.~",
    "abcdefghijklmnopqrstuvwxyz7",
    "0123456789abcdef",
)
_KEY_CONTEXTS = ("api_key=", "token: ", "Bearer ", '"secret": "', "sk-", "ghp_", "eyJ", "")


def _texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 8)):
            r = rng.random()
            if r < 0.2:
                cls = rng.choice(_KEY_CLASSES)
                body = "".join(rng.choice(cls) for _ in range(rng.randint(10, 45)))
                parts.append(rng.choice(_KEY_CONTEXTS) + body)
            elif r < 0.5:
                parts.append(rng.choice(_FRAGMENTS))
            else:
                parts.append("".join(rng.choice(_NOISE) for _ in range(rng.randint(1, 30))))
        out.append(rng.choice(("", " ", "-", "x", ".", "\n")).join(parts))
    return out


def _key(f: Finding) -> tuple[int, int, str]:
    return f.start, f.end, f.type


@pytest.mark.parametrize(
    "types",
    [STRUCTURED, ("phone",), ("ssn", "credit_card"), ("ip_address",), ("api_key",)],
)
def test_triage_and_segments_find_what_the_whole_passes_find(types: tuple[str, ...]) -> None:
    FINDINGS.clear()
    seen = 0
    for text in _texts(11, 1500):
        fast = sorted(st.detect_structured(text, types, cache=False), key=_key)
        whole = sorted(st.detect_structured(text, types, triage=False), key=_key)
        assert fast == whole, text
        seen += len(fast)
    assert seen > 100  # the texts do hold findings of these types


def test_segments_are_bounded_by_characters_no_candidate_has() -> None:
    text = "order 12 34 56 78 90 12 or (415) 555-2671 and 4111-1111-1111-1111."
    spans = st._segments(text, text.encode())
    assert spans is not None and len(spans) == 3
    for s, e in spans:
        assert s == 0 or text[s - 1] not in st._DIGIT_ALPHABET
        assert e == len(text) or text[e] not in st._DIGIT_ALPHABET


def test_a_text_without_cues_for_the_passes_is_not_scanned() -> None:
    prose = "Inside truth maybe mother model affect key, responsibility and administration."
    assert st._TRIAGE is not None and not st._TRIAGE(prose.encode())
    assert st.detect_structured(prose, STRUCTURED) == []
    # the shortest provider key still reaches its pass
    assert [f.value for f in detect("slack xoxb-12345abcde ok", ("api_key",))] == [
        "xoxb-12345abcde"
    ]


def test_nanp_shortcut_agrees_with_libphonenumber() -> None:
    rng = random.Random(5)
    numbers = [
        f"{npa}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"
        for npa in range(200, 1000)
        for _ in range(6)
    ]
    numbers += [f"{rng.randint(2, 9)}{rng.randint(0, 10**9 - 1):09d}" for _ in range(3000)]
    valid = 0
    for digits in numbers:
        number = phonenumbers.PhoneNumber(country_code=1, national_number=int(digits))
        expected = phonenumbers.is_valid_number(number)
        assert validators.nanp_valid(digits) is expected, digits
        # the `+1` form takes the same shortcut; parse it the long way to compare
        parsed = phonenumbers.parse("+1" + digits, None)
        assert validators.phone("+1 " + digits) is phonenumbers.is_valid_number(parsed)
        valid += expected
    assert 0.2 * len(numbers) < valid < 0.9 * len(numbers)


def test_resolve_keeps_disjoint_findings_and_resolves_overlaps() -> None:
    a, b = Finding("email", 0, 5, "a@b.c"), Finding("phone", 5, 9, "1234")
    assert resolve([b, a]) == [a, b]
    wide = Finding("person_name", 0, 9, "a@b.c1234")
    assert resolve(iter([wide, b, a])) == [a, b]


def test_cache_is_bounded_by_entries_and_characters() -> None:
    c = FindingsCache(max_entries=3, max_chars=800, min_chars=10)
    f = [Finding("email", 0, 5, "a@b.c")]
    for i in range(5):
        c.put((f"{i:02d}" + "x" * 20, STRUCTURED, -1), f)
    assert len(c) == 3 and c.chars == 66
    assert c.get(("00" + "x" * 20, STRUCTURED, -1)) is None  # the oldest went first
    assert c.get(("04" + "x" * 20, STRUCTURED, -1)) == f
    c.put(("short", STRUCTURED, -1), f)  # under min_chars
    c.put(("y" * 101, STRUCTURED, -1), f)  # over max_chars / 8
    assert len(c) == 3
    for i in range(3):
        c.put((f"{i}" + "z" * 99, STRUCTURED, -1), f)
    assert c.chars <= 800 and len(c) <= 3


def test_cache_hands_back_a_new_list_and_counts() -> None:
    c = FindingsCache(min_chars=1)
    key = ("some text long enough", TYPES, 48)
    c.put(key, [Finding("email", 0, 5, "a@b.c")])
    first = c.get(key)
    assert first is not None
    first.clear()
    assert c.get(key) == [Finding("email", 0, 5, "a@b.c")]
    assert (c.hits, c.misses) == (2, 0)


def test_detect_with_and_without_the_memo_agree() -> None:
    letter = (
        "Dear John Smith, please send it to 1600 Pennsylvania Avenue NW, Washington, DC 20500"
        " or call (415) 555-2671; my mail is john.smith@example.com " * 2
    )
    texts = [*_texts(3, 200), letter]
    FINDINGS.clear()
    cold = [detect(t, TYPES) for t in texts]
    warm = [detect(t, TYPES) for t in texts]  # hits now
    assert warm == cold
    assert FINDINGS.hits > 0
    for t, found in zip(texts, cold, strict=True):
        FINDINGS.clear()
        assert sorted(st.detect_structured(t, STRUCTURED, triage=False), key=_key) == sorted(
            st.detect_structured(t, STRUCTURED), key=_key
        )
        assert detect(t, TYPES) == found


def test_cache_is_thread_safe() -> None:
    c = FindingsCache(max_entries=50, max_chars=1 << 20, min_chars=1)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(3000):
                text = f"value {rng.randint(0, 200)} " * 4
                key = (text, STRUCTURED, -1)
                want = [Finding("phone", 0, len(text), text)]
                got = c.get(key)
                if got is None:
                    c.put(key, want)
                else:
                    assert got == want
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(c) <= 50
    assert c.chars == sum(len(k[0]) for k in c._items)
