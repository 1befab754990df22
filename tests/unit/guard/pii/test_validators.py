"""The validators, each rule on its own."""

from __future__ import annotations

import pytest

from declawd.guard.pii import validators as v


def test_luhn() -> None:
    assert v.luhn("4111111111111111")
    assert v.luhn("378282246310005")
    assert not v.luhn("4111111111111112")
    assert not v.luhn("")
    assert not v.luhn("4111-1111")


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        ("4111 1111 1111 1111", True),
        ("4111-1111-1111-1111", True),
        ("4111111111111111", True),
        ("3782 822463 10005", True),  # amex 4-6-5
        ("5555555555554444", True),
        ("6011111111111117", True),
        ("4111 1111-1111 1111", False),  # mixed separators
        ("41 11 11 11 11 11 11 11", False),  # not a card's grouping
        ("4111111111111112", False),  # Luhn
        ("1234567812345670", False),  # Luhn-valid, no network starts with 1
        ("9111111111111111", False),
        ("0000000000000000", False),
    ],
)
def test_credit_card(raw: str, ok: bool) -> None:
    assert v.credit_card(raw) is ok


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        ("123-45-6789", True),
        ("123 45 6789", True),
        ("123456789", True),
        ("000-12-3456", False),
        ("666-12-3456", False),
        ("912-12-3456", False),
        ("123-00-4567", False),
        ("123-45-0000", False),
        ("123-45 6789", False),
        ("12-345-6789", False),
        ("1234567890", False),
    ],
)
def test_ssn(raw: str, ok: bool) -> None:
    assert v.ssn(raw) is ok


def test_ssn_one_digit_repeated() -> None:
    assert not v.ssn("222-22-2222")


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        ("(415) 555-2671", True),
        ("415.555.2671", True),
        ("+1 415 555 2671", True),
        ("+44 20 7946 0958", True),
        ("+4915123456789", True),
        ("0044 20 7946 0958", True),
        ("415-555-2671 x123", True),
        ("(123) 456-7890", False),  # area codes start 2-9
        ("555-123-4567", False),
        ("555-2671", False),  # no area code
        ("+1 999 555 0100", False),
    ],
)
def test_phone(raw: str, ok: bool) -> None:
    assert v.phone(raw) is ok


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        ("bob@example.com", True),
        ("bob.smith+news@mail.example.co.uk", True),
        ("logo@2x.png", False),
        ("a..b@example.com", False),
        (".a@example.com", False),
        ("a@localhost", False),
        ("a@-bad.com", False),
        ("a@example.c0m", False),
    ],
)
def test_email(raw: str, ok: bool) -> None:
    assert v.email(raw) is ok


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        ("10.0.0.1", True),
        ("255.255.255.255", True),
        ("2001:db8::1", True),
        ("::1", True),
        ("fe80::1%eth0", True),
        ("256.1.1.1", False),
        ("01.02.03.04", False),
        ("::", False),
        ("12:30:45", False),
        ("00:1a:2b:3c:4d:5e", False),
    ],
)
def test_ip_address(raw: str, ok: bool) -> None:
    assert v.ip_address(raw) is ok


def test_entropy_and_secret_like() -> None:
    assert v.entropy("") == 0.0
    assert v.entropy("aaaa") == 0.0
    assert v.entropy("abcd") == pytest.approx(2.0)
    assert v.secret_like("Zx8kq2LmP9vT4rW7yB3nC6dF")
    assert v.secret_like("kxwBrORypZzBsohUeZneuXxQhSe")  # mixed case, no digit, long
    assert not v.secret_like("aaaaaaaaaaaaaaaaaaaaaaaa1")
    assert not v.secret_like("short1A")
    assert not v.secret_like("a9fd4fcf-1294-498c-85d1-2819f06cd7ea")  # a UUID
    assert not v.secret_like("path/to/some/file1234567890")
