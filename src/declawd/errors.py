"""One exception type for everything the API reports to a client.

Services raise `ApiError` (or a subclass) with the HTTP status, a message that names the
field or resource concerned, and optionally a machine-readable `code` (the SDK reads
`body["code"]`). The API layer turns it into `{"message": ..., "code": ...}`.
"""

from __future__ import annotations


class ApiError(Exception):
    status: int = 500

    def __init__(self, message: str, *, status: int | None = None, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.code = code

    def body(self) -> dict[str, str]:
        out = {"message": self.message}
        if self.code:
            out["code"] = self.code
        return out


class BadRequest(ApiError):
    status = 400


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class RequestTimeout(ApiError):
    status = 408


class PayloadTooLarge(ApiError):
    status = 413


class NotImplementedYet(ApiError):
    status = 501


class Unavailable(ApiError):
    status = 503
