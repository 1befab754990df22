"""Request-body and query validation with messages that name the offending field.

FastAPI's own validation answers 422 with `{"detail": [...]}`, which the Declaw SDK shows
as raw JSON. We parse bodies by hand instead, so every bad input becomes a 400 whose
`message` says which field is wrong and why.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from declawd.errors import InvalidInput, TooLarge

MAX_JSON_BODY = 16 * 2**20

_MISSING = object()


async def json_body(request: Request, *, allow_empty: bool = False) -> dict[str, Any]:
    raw = await read_limited(request, MAX_JSON_BODY)
    if not raw.strip():
        if allow_empty:
            return {}
        raise InvalidInput("request body", "a JSON object is required")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput("request body", f"malformed JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InvalidInput("request body", "must be a JSON object")
    return data


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body: larger than the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body: larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        dict: "an object",
        list: "an array",
    }
    if isinstance(t, tuple):
        if set(t) == {int, float}:
            return "a number"
        return " or ".join(names.get(x, x.__name__) for x in t)
    return names.get(t, t.__name__)


def field(
    body: dict[str, Any],
    name: str,
    typ: type | tuple[type, ...],
    *,
    required: bool = False,
    default: Any = None,
    prefix: str = "",
) -> Any:
    value = body.get(name, _MISSING)
    label = prefix + name
    if value is _MISSING or value is None:
        if required:
            raise InvalidInput(label, "is required")
        return default
    ok = isinstance(value, typ)
    # bool is an int in Python; never accept true/false where a number is expected.
    if ok and isinstance(value, bool) and bool not in (typ if isinstance(typ, tuple) else (typ,)):
        ok = False
    if not ok:
        raise InvalidInput(label, f"must be {_type_name(typ)}")
    return value


def str_map(body: dict[str, Any], name: str, *, prefix: str = "") -> dict[str, str]:
    value = field(body, name, dict, default={}, prefix=prefix)
    for k, v in value.items():
        if not isinstance(v, str):
            raise InvalidInput(f"{prefix}{name}.{k}", "must be a string")
        if "\x00" in k or "\x00" in v:
            raise InvalidInput(f"{prefix}{name}.{k}", "must not contain NUL")
    return dict(value)


def str_list(body: dict[str, Any], name: str, *, prefix: str = "") -> list[str]:
    value = field(body, name, list, default=[], prefix=prefix)
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise InvalidInput(f"{prefix}{name}[{i}]", "must be a string")
    return list(value)


def abs_path(value: Any, label: str = "path") -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(label, "is required")
    if not value.startswith("/"):
        raise InvalidInput(label, f"must be an absolute path, got {value!r}")
    if "\x00" in value:
        raise InvalidInput(label, "must not contain NUL")
    return value


def int_query(
    value: str | None, label: str, *, minimum: int | None = None, maximum: int | None = None
) -> int | None:
    if value is None or value == "":
        return None
    try:
        n = int(value)
    except ValueError as exc:
        raise InvalidInput(label, "must be an integer") from exc
    if minimum is not None and n < minimum:
        raise InvalidInput(label, f"must be at least {minimum}")
    if maximum is not None and n > maximum:
        raise InvalidInput(label, f"must be at most {maximum}")
    return n
