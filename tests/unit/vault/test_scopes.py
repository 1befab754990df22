"""Scope validation (400s naming `scopes[i].<field>`), matching and the built-in presets."""

from __future__ import annotations

from typing import Any

import pytest

from declawd.errors import InvalidInput
from declawd.inspect.model import VaultScope
from declawd.vault.presets import PRESETS, preset
from declawd.vault.scopes import parse_scope, parse_scopes


def test_an_empty_injection_type_is_bearer() -> None:
    for raw in ({"domain_regex": "a"}, {"domain_regex": "a", "injection_type": ""}):
        assert parse_scope(raw, "s").injection_type == "bearer"
    assert parse_scope({"domain_regex": "a", "injection_type": None}, "s") == VaultScope("a")


def test_every_field_is_kept() -> None:
    raw = {
        "domain_regex": r"api\.example\.com",
        "injection_type": "header",
        "header_name": "X-Api-Key",
        "value_prefix": "Key ",
        "basic_username": "",
        "extra_headers": {"X-Version": "2"},
        "query_params": {},
    }
    scope = parse_scope(raw, "scopes[0]")
    assert scope.to_wire() == {**raw, "query_params": {}}


def test_a_query_scope_needs_params_and_keeps_them() -> None:
    scope = parse_scope(
        {"domain_regex": "x", "injection_type": "query", "query_params": {"key": ""}}, "s"
    )
    assert dict(scope.query_params) == {"key": ""}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("nope", "scopes[0]: must be an object"),
        ({}, "scopes[0].domain_regex: is required (a regular expression for the host)"),
        (
            {"domain_regex": ""},
            "scopes[0].domain_regex: is required (a regular expression for the host)",
        ),
        (
            {"domain_regex": 5},
            "scopes[0].domain_regex: is required (a regular expression for the host)",
        ),
        (
            {"domain_regex": "(?=api)x"},
            "scopes[0].domain_regex: invalid regular expression (invalid perl operator: (?=)",
        ),
        (
            {"domain_regex": r"(a)\1"},
            "scopes[0].domain_regex: invalid regular expression (invalid escape sequence: \\1)",
        ),
        (
            {"domain_regex": "["},
            "scopes[0].domain_regex: invalid regular expression (missing ]: [)",
        ),
        ({"domain_regex": "a" * 1025}, "scopes[0].domain_regex: longer than 1024 characters"),
        (
            {"domain_regex": "a", "injection_type": "sigv4"},
            "scopes[0].injection_type: unsupported injection type 'sigv4'"
            " (supported: bearer, header, basic, query)",
        ),
        (
            {"domain_regex": "a", "injection_type": "Bearer"},
            "scopes[0].injection_type: unsupported injection type 'Bearer'"
            " (supported: bearer, header, basic, query)",
        ),
        ({"domain_regex": "a", "injection_type": 1}, "scopes[0].injection_type: must be a string"),
        (
            {"domain_regex": "a", "injection_type": "header"},
            "scopes[0].header_name: is required for injection_type 'header'",
        ),
        (
            {"domain_regex": "a", "injection_type": "header", "header_name": "X Key"},
            "scopes[0].header_name: not a valid HTTP header name",
        ),
        (
            {"domain_regex": "a", "injection_type": "header", "header_name": "Content-Length"},
            "scopes[0].header_name: cannot inject into 'content-length'",
        ),
        (
            {"domain_regex": "a", "injection_type": "header", "header_name": "Host"},
            "scopes[0].header_name: cannot inject into 'host'",
        ),
        (
            {"domain_regex": "a", "value_prefix": "Bearer\r\nX-Evil: 1"},
            "scopes[0].value_prefix: must not contain control characters",
        ),
        (
            {"domain_regex": "a", "value_prefix": "clé "},
            "scopes[0].value_prefix: must be ASCII (it is sent in a header)",
        ),
        (
            {"domain_regex": "a", "injection_type": "basic", "basic_username": "a:b"},
            "scopes[0].basic_username: must not contain ':' (RFC 7617)",
        ),
        (
            {"domain_regex": "a", "injection_type": "query"},
            "scopes[0].query_params: at least one parameter is required for injection_type 'query'",
        ),
        (
            {"domain_regex": "a", "injection_type": "query", "query_params": {"": "x"}},
            "scopes[0].query_params: a parameter name must not be empty",
        ),
        (
            {"domain_regex": "a", "extra_headers": ["x"]},
            "scopes[0].extra_headers: must be an object of strings",
        ),
        (
            {"domain_regex": "a", "extra_headers": {"X-A": 1}},
            "scopes[0].extra_headers.X-A: must be a string",
        ),
        (
            {"domain_regex": "a", "extra_headers": {"Transfer-Encoding": "chunked"}},
            "scopes[0].extra_headers.Transfer-Encoding: cannot inject into 'transfer-encoding'",
        ),
        (
            {"domain_regex": "a", "extra_headers": {"X-A": "1\n2"}},
            "scopes[0].extra_headers.X-A: must not contain control characters",
        ),
        ({"domain_regex": "a", "regex": "b"}, "scopes[0].regex: unknown field"),
    ],
)
def test_a_bad_scope_is_a_400_naming_its_field(raw: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_scopes([raw])
    assert info.value.message == message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "scopes: must be an array of scope objects"),
        ({"domain_regex": "a"}, "scopes: must be an array of scope objects"),
        ([], "scopes: at least one scope is required"),
        ([{"domain_regex": "a"}] * 33, "scopes: at most 32 scopes"),
    ],
)
def test_the_scope_list_itself(raw: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_scopes(raw)
    assert info.value.message == message


def test_the_index_in_the_message_is_the_bad_scopes() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_scopes([{"domain_regex": "a"}, {"domain_regex": "b", "injection_type": "oidc"}])
    assert info.value.field == "scopes[1].injection_type"


@pytest.mark.parametrize(
    ("regex", "host", "expected"),
    [
        (r"api\.openai\.com", "api.openai.com", True),
        (r"api\.openai\.com", "API.OpenAI.COM", True),  # case-insensitive
        (r"api\.openai\.com", "api.openai.com.evil.example", False),  # full match only
        (r"api\.openai\.com", "xapi.openai.com", False),
        (r".*\.example\.com", "a.b.example.com", True),
        (r"(a+)+$", "a" * 5000 + "!", False),  # linear time: no catastrophic backtracking
    ],
)
def test_domain_regex_is_a_case_insensitive_full_match(
    regex: str, host: str, expected: bool
) -> None:
    assert parse_scope({"domain_regex": regex}, "s").matches(host) is expected


@pytest.mark.parametrize("p", PRESETS, ids=lambda p: p.key)
def test_every_preset_scope_passes_validation_unchanged(p: Any) -> None:
    for scope in p.scopes:
        assert parse_scope(scope.to_wire(), "preset") == scope
    wire = p.to_wire()
    assert set(wire) == {"key", "name", "category", "key_hint", "docs_url", "scopes"}


def test_the_required_presets_inject_as_their_apis_expect() -> None:
    openai = preset("openai").scopes
    assert [(s.domain_regex, s.injection_type) for s in openai] == [(r"api\.openai\.com", "bearer")]
    (anthropic,) = preset("anthropic").scopes
    assert (anthropic.injection_type, anthropic.header_name) == ("header", "x-api-key")
    assert dict(anthropic.extra_headers) == {"anthropic-version": "2023-06-01"}
    assert anthropic.matches("api.anthropic.com") and not anthropic.matches("anthropic.com")
    github = preset("GitHub").scopes
    for host in ("api.github.com", "uploads.github.com", "raw.githubusercontent.com"):
        assert any(s.matches(host) for s in github), host
    assert not any(s.matches("github.com.evil.example") for s in github)


def test_an_unknown_provider_names_the_field_and_the_known_ones() -> None:
    with pytest.raises(InvalidInput) as info:
        preset("nope")
    assert info.value.message == (
        "provider: unknown provider 'nope' (presets: anthropic, gemini, github, groq, mistral,"
        " openai)"
    )
