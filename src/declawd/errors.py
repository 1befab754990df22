"""The domain errors of declawd: what went wrong, never how HTTP says it.

Every package raises these (or subclasses); `declawd.api.errors` holds the one table that
maps each class to a status code. A message names the field or resource it is about, once:
`InvalidInput("network.allow_out[0]", "invalid entry 'x'")` reads
`network.allow_out[0]: invalid entry 'x'`. `code` is the machine-readable tag the SDK reads
(`body["code"]`), empty when there is none.

    DeclawdError
    ├── InvalidInput(field, reason)   a request field is wrong
    ├── Unauthorized                  no key, or a key that does not authenticate
    ├── Forbidden                     a policy of the sandbox refuses the call
    ├── NotFound                      no such resource for this caller
    ├── Conflict                      the resource is in a state that forbids the call
    │   └── Busy                      ... only for now: retry after `retry_after` seconds
    ├── Mismatch                      the same idempotency key with other parameters
    ├── TooLarge                      a body, file or quota limit
    ├── TimedOut                      an operation ran past the time it was given
    ├── NotSupported                  a documented feature this server does not build
    ├── Unreachable                   a component behind us (envd, gateway) does not answer
    ├── Unavailable                   the service cannot take the call right now
    └── Internal                      a failure of ours (a create step, a runtime)
"""

from __future__ import annotations


class DeclawdError(Exception):
    """Base of every domain error; `message` is what a user reads."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class InvalidInput(DeclawdError):
    """A request field is wrong. `field` is its dotted path (`network.allow_out[0]`), or
    `request body` when the body itself is."""

    def __init__(self, field: str, reason: str, *, code: str = "") -> None:
        super().__init__(f"{field}: {reason}" if field else reason, code=code)
        self.field = field
        self.reason = reason

    def renamed(self, field: str) -> InvalidInput:
        """The same error about another name of the field (e.g. under a prefix)."""
        out = type(self).__new__(type(self))
        InvalidInput.__init__(out, field, self.reason, code=self.code)
        return out


class Unauthorized(DeclawdError):
    pass


class Forbidden(DeclawdError):
    """A policy of the sandbox (custom_policy's Rego) refuses the call; the message names
    the rule(s)."""


class NotFound(DeclawdError):
    pass


class Conflict(DeclawdError):
    pass


class Busy(Conflict):
    """The call conflicts with work still in progress; the same call may succeed later."""

    def __init__(self, message: str, *, code: str = "", retry_after: float = 1.0) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class Mismatch(DeclawdError):
    pass


class TooLarge(DeclawdError):
    pass


class TimedOut(DeclawdError):
    pass


class NotSupported(DeclawdError):
    pass


class Unreachable(DeclawdError):
    pass


class Unavailable(DeclawdError):
    pass


class Internal(DeclawdError):
    pass


__all__ = [
    "Busy",
    "Conflict",
    "DeclawdError",
    "Forbidden",
    "Internal",
    "InvalidInput",
    "Mismatch",
    "NotFound",
    "NotSupported",
    "TimedOut",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
]
