"""detect: each type found in context, each near miss left alone, overlaps resolved."""

from __future__ import annotations

import itertools

import pytest

from declawd.guard.pii import NER, STRUCTURED, TYPES, Finding, detect
from declawd.guard.pii.findings import resolve


def found(text: str, types: tuple[str, ...] = TYPES) -> list[tuple[str, str]]:
    return [(f.type, f.value) for f in detect(text, types)]


@pytest.mark.parametrize(
    ("text", "type_", "value"),
    [
        ("my SSN is 123-45-6789.", "ssn", "123-45-6789"),
        ("ssn: 123456789", "ssn", "123456789"),
        ("card 4111 1111 1111 1111 exp 04/27", "credit_card", "4111 1111 1111 1111"),
        ("pay with 4111111111111111", "credit_card", "4111111111111111"),
        ("mail bob.smith@example.com today", "email", "bob.smith@example.com"),
        ("call (415) 555-2671 after 5", "phone", "(415) 555-2671"),
        ("phone 4155552671", "phone", "4155552671"),
        ("ring +44 20 7946 0958", "phone", "+44 20 7946 0958"),
        ("login from 203.0.113.9 blocked", "ip_address", "203.0.113.9"),
        ("src=2001:db8::1 dst", "ip_address", "2001:db8::1"),
        (
            "key sk-proj-abcDEF123ghiJKL456mnoPQR789stu",
            "api_key",
            "sk-proj-abcDEF123ghiJKL456mnoPQR789stu",
        ),
        (
            "token ghp_" + "a1B2c3D4e5" * 3 + "a1B2c3",
            "api_key",
            "ghp_" + "a1B2c3D4e5" * 3 + "a1B2c3",
        ),
        ("AKIAQYLPMN5HHHFPZAM2 in env", "api_key", "AKIAQYLPMN5HHHFPZAM2"),
        ('{"api_key": "Zx8kq2LmP9vT4rW7yB3nC6dF"}', "api_key", "Zx8kq2LmP9vT4rW7yB3nC6dF"),
        ("Dear John Smith, thanks", "person_name", "John Smith"),
        (
            "Ship to 123 Main Street, Springfield, IL 62704 please",
            "address",
            "123 Main Street, Springfield, IL 62704",
        ),
    ],
)
def test_positive(text: str, type_: str, value: str) -> None:
    assert (type_, value) in found(text)


@pytest.mark.parametrize(
    "text",
    [
        "order 123-45-6789 shipped",  # ssn format, order context
        "My SSN is 000-12-3456",  # invalid area
        "user id 483920174 logged in",  # bare 9 digits, no ssn cue
        "card 4111 1111 1111 1112",  # Luhn fails
        "IMEI 490154203237518 registered",  # Luhn-valid, not a card context
        "ISBN 978-0-306-40615-7",
        "assets/logo@2x.png missing",
        "git clone git@github.com:org/repo.git",
        "pin lodash@4.17.21",
        "Order #4155552671 has shipped",
        "ts=1700000000 level=info",
        "released on 2024-01-15",
        "upgraded to version 1.2.3.4",
        "release v10.0.0.1 is out",
        "OID 1.3.6.1.4.1.2021.1",
        "at 12:30:45 mac 00:1a:2b:3c:4d:5e std::vector",
        "commit 9fceb02d0ae598e95dc970b74767f19372d61af8 fixed it",
        '{"request_id": "a9fd4fcf-1294-498c-85d1-2819f06cd7ea"}',
        "export OPENAI_API_KEY=sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "the task-management-dashboard-redesign branch",
        "Machine Learning is a growing field.",
    ],
)
def test_near_miss(text: str) -> None:
    assert found(text) == []


def test_types_filter_and_unknown() -> None:
    text = "bob@example.com 123-45-6789"
    assert found(text, ("email",)) == [("email", "bob@example.com")]
    assert found(text, ("ssn",)) == [("ssn", "123-45-6789")]
    assert found(text, ()) == []
    with pytest.raises(ValueError, match="unknown"):
        detect(text, ("passport",))


def test_ner_only_when_asked() -> None:
    text = "Dear John Smith, your SSN 123-45-6789"
    assert [f.type for f in detect(text, STRUCTURED)] == ["ssn"]
    assert [f.type for f in detect(text, NER)] == ["person_name"]


def test_ner_budget_caps_model_calls() -> None:
    text = " ".join(f"Dear Anna{chr(97 + i % 26)} Smith." for i in range(200))
    assert len(detect(text, ("person_name",), ner_budget=5)) <= 5
    assert len(detect(text, ("person_name",))) <= 48


def test_findings_never_overlap_and_specific_wins() -> None:
    text = "contact Dear bob@example.com or 4111 1111 1111 1111"
    fs = detect(text)
    for a, b in itertools.pairwise(fs):
        assert a.end <= b.start
    r = resolve(
        [
            Finding("person_name", 0, 10, "x" * 10),
            Finding("email", 5, 20, "y" * 15),
            Finding("phone", 18, 25, "z" * 7),
            Finding("ssn", 30, 41, "w" * 11),
        ]
    )
    assert [f.type for f in r] == ["email", "ssn"]


def test_offsets_with_non_ascii_text() -> None:
    text = "héllo wörld — mail bob@example.com ✓ ssn 123-45-6789"
    for f in detect(text):
        assert text[f.start : f.end] == f.value
    assert {f.type for f in detect(text)} == {"email", "ssn"}


def test_linear_on_adversarial_input() -> None:
    import time

    text = ("1-" * 20000) + ("a@" * 20000) + ("Aa " * 20000) + ("1.1." * 20000)
    start = time.perf_counter()
    detect(text)
    assert time.perf_counter() - start < 5.0
