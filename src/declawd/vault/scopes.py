"""Validation of a secret's injection scopes (the SDK's `VaultScope` dicts) into `VaultScope`s.

Everything the proxy will later do with a scope is checked here, at secret create or scope
update, so a bad scope is a 400 naming `scopes[i].<field>` and never a surprise in flight:
`domain_regex` compiles with RE2 (linear time; matched case-insensitively against the whole
host), the injection type is one we build, and every header name and value is one HTTP/1.1
and HTTP/2 can carry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import re2

from declawd.errors import InvalidInput
from declawd.inspect.model import INJECTION_TYPES, VaultScope

MAX_SCOPES = 32
MAX_REGEX_CHARS = 1024
MAX_MAP_ENTRIES = 16
MAX_TEXT_CHARS = 1024
_FIELDS = (
    "domain_regex",
    "injection_type",
    "header_name",
    "value_prefix",
    "basic_username",
    "extra_headers",
    "query_params",
)
# RFC 9110 token: what a header name may be.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Headers that frame or route the message: injecting into them would let a scope break the
# request or smuggle another one, so no scope may name them.
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te",
        "trailer",
        "expect",
        "content-encoding",
    }
)
# The injection types whose absence means bearer (the SDK sends "" or nothing for it).
_DEFAULT_TYPE = "bearer"


def compile_domain_regex(pattern: str) -> Any:
    """The RE2 program `VaultScope.matches` runs (same options: case-insensitive, silent);
    re2.error if the pattern is not one RE2 accepts."""
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False
    return re2.compile(pattern, options)


def parse_scopes(raw: Any, field: str = "scopes") -> tuple[VaultScope, ...]:
    """The validated scopes of a request body; at least one is required."""
    if not isinstance(raw, list):
        raise InvalidInput(field, "must be an array of scope objects")
    if not raw:
        raise InvalidInput(field, "at least one scope is required")
    if len(raw) > MAX_SCOPES:
        raise InvalidInput(field, f"at most {MAX_SCOPES} scopes")
    return tuple(parse_scope(s, f"{field}[{i}]") for i, s in enumerate(raw))


def parse_scope(raw: Any, field: str) -> VaultScope:
    if not isinstance(raw, Mapping):
        raise InvalidInput(field, "must be an object")
    unknown = sorted(str(k) for k in raw if k not in _FIELDS)
    if unknown:
        raise InvalidInput(f"{field}.{unknown[0]}", "unknown field")
    regex = _domain_regex(raw.get("domain_regex"), f"{field}.domain_regex")
    kind = _text(raw, "injection_type", field) or _DEFAULT_TYPE
    if kind not in INJECTION_TYPES:
        raise InvalidInput(
            f"{field}.injection_type",
            f"unsupported injection type {kind!r} (supported: {', '.join(INJECTION_TYPES)})",
        )
    header_name = _text(raw, "header_name", field)
    value_prefix = _text(raw, "value_prefix", field, header=True)
    basic_username = _text(raw, "basic_username", field)
    extra_headers = _str_map(raw, "extra_headers", field, header=True)
    query_params = _str_map(raw, "query_params", field)
    if header_name:
        _header_name(header_name, f"{field}.header_name")
    if kind == "header" and not header_name:
        raise InvalidInput(f"{field}.header_name", "is required for injection_type 'header'")
    if ":" in basic_username:
        raise InvalidInput(f"{field}.basic_username", "must not contain ':' (RFC 7617)")
    if kind == "query" and not query_params:
        raise InvalidInput(
            f"{field}.query_params", "at least one parameter is required for injection_type 'query'"
        )
    for name in extra_headers:
        _header_name(name, f"{field}.extra_headers.{name}")
    for name in query_params:
        if not name:
            raise InvalidInput(f"{field}.query_params", "a parameter name must not be empty")
    return VaultScope(
        domain_regex=regex,
        injection_type=kind,
        header_name=header_name,
        value_prefix=value_prefix,
        basic_username=basic_username,
        extra_headers=extra_headers,
        query_params=query_params,
    )


def _domain_regex(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(field, "is required (a regular expression for the host)")
    if len(value) > MAX_REGEX_CHARS:
        raise InvalidInput(field, f"longer than {MAX_REGEX_CHARS} characters")
    try:
        compile_domain_regex(value)
    except re2.error as exc:
        raise InvalidInput(field, f"invalid regular expression ({_re2_reason(exc)})") from None
    return value


def _re2_reason(exc: re2.error) -> str:
    arg = exc.args[0] if exc.args else ""
    text = arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)
    return text or "not supported by RE2"


def _header_name(name: str, field: str) -> None:
    if not _TOKEN.fullmatch(name):
        raise InvalidInput(field, "not a valid HTTP header name")
    if name.lower() in _RESERVED_HEADERS:
        raise InvalidInput(field, f"cannot inject into {name.lower()!r}")


def _text(raw: Mapping[str, Any], key: str, field: str, *, header: bool = False) -> str:
    value = raw.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{field}.{key}", "must be a string")
    _printable(value, f"{field}.{key}", header=header)
    return value


def _str_map(
    raw: Mapping[str, Any], key: str, field: str, *, header: bool = False
) -> dict[str, str]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{field}.{key}", "must be an object of strings")
    if len(value) > MAX_MAP_ENTRIES:
        raise InvalidInput(f"{field}.{key}", f"at most {MAX_MAP_ENTRIES} entries")
    out: dict[str, str] = {}
    for k, v in value.items():
        label = f"{field}.{key}.{k}"
        if not isinstance(v, str):
            raise InvalidInput(label, "must be a string")
        _printable(str(k), label)
        _printable(v, label, header=header)
        out[str(k)] = v
    return out


def _printable(value: str, field: str, *, header: bool = False) -> None:
    # No CR/LF (header injection) or other control characters, bounded; what goes into a
    # header verbatim is also ASCII, the one charset every HTTP stack sends unchanged.
    if len(value) > MAX_TEXT_CHARS:
        raise InvalidInput(field, f"longer than {MAX_TEXT_CHARS} characters")
    if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
        raise InvalidInput(field, "must not contain control characters")
    if header and not value.isascii():
        raise InvalidInput(field, "must be ASCII (it is sent in a header)")
