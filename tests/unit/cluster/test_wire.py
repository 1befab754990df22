"""Domain errors cross the internal API as the same class, message and code."""

from __future__ import annotations

from declawd import errors
from declawd.cluster.wire import error_body, error_from_body


def test_errors_round_trip() -> None:
    for exc in (
        errors.NotFound("sandbox 'x' not found"),
        errors.Conflict("paused", code="sandbox_paused"),
        errors.Busy("later", retry_after=3.0),
        errors.InvalidInput("timeout", "must be positive"),
    ):
        back = error_from_body(409, error_body(exc))
        assert type(back) is type(exc)
        assert (back.message, back.code) == (exc.message, exc.code)
    assert error_from_body(409, error_body(errors.Busy("b", retry_after=3.0))).retry_after == 3.0  # type: ignore[attr-defined]
    unknown = error_from_body(500, {"message": "boom", "error": "Nope"})
    assert type(unknown) is errors.Internal and unknown.message == "boom"
