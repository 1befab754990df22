"""The one table that says how each domain error answers over HTTP.

Domain code raises `declawd.errors` classes, which know nothing of HTTP; this module maps
each to its status (declaw-api.md §1.5 and §11.2) and the body `{"message", "code"?}` the
SDK reads. A class not in the table answers by its nearest listed base class.
"""

from __future__ import annotations

from declawd.errors import (
    Busy,
    Conflict,
    DeclawdError,
    Forbidden,
    Internal,
    InvalidInput,
    Mismatch,
    NotFound,
    NotSupported,
    TimedOut,
    TooLarge,
    Unauthorized,
    Unavailable,
    Unreachable,
)

STATUS: dict[type[DeclawdError], int] = {
    InvalidInput: 400,
    Unauthorized: 401,
    Forbidden: 403,  # the SDK raises AuthenticationException with our message
    NotFound: 404,
    TimedOut: 408,  # the SDK raises TimeoutException and does not retry
    Conflict: 409,
    Busy: 409,
    TooLarge: 413,
    Mismatch: 422,
    Internal: 500,
    NotSupported: 501,
    Unreachable: 502,
    Unavailable: 503,
}


def status_of(exc: DeclawdError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def body_of(exc: DeclawdError) -> dict[str, str]:
    out = {"message": exc.message}
    if exc.code:
        out["code"] = exc.code
    return out


def headers_of(exc: DeclawdError) -> dict[str, str]:
    if isinstance(exc, Busy):
        return {"Retry-After": f"{max(1, round(exc.retry_after))}"}
    return {}
