"""Teardown that reports what it could not undo: every step runs, failures come back together.

A teardown is a list of idempotent steps, each of which treats "already gone" as success.
`undo_all` (and its blocking twin) runs them in order whatever fails, logs each failure with
what it was undoing, and raises: the one error itself, or `TeardownFailed` holding all of
them (E2B's errors.Join). Cancellation is never swallowed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from declawd.errors import Internal

log = logging.getLogger(__name__)


class TeardownFailed(Internal):
    """Several steps of one teardown failed; every other step still ran."""

    def __init__(self, what: str, failures: Sequence[Exception]) -> None:
        super().__init__(f"{what}: {len(failures)} steps failed: " + "; ".join(map(str, failures)))
        self.what = what
        self.failures = list(failures)


def _raise(what: str, failures: list[Exception]) -> None:
    if len(failures) == 1:
        raise failures[0]
    if failures:
        raise TeardownFailed(what, failures) from failures[0]


async def undo_all(what: str, *steps: Callable[[], Awaitable[object]]) -> None:
    """Await every step in order, past failures; then raise what failed (if anything)."""
    failures: list[Exception] = []
    for step in steps:
        try:
            await step()
        except Exception as exc:
            log.error("tearing down %s: %s", what, exc)
            failures.append(exc)
    _raise(what, failures)


def undo_all_sync(what: str, *steps: Callable[[], object]) -> None:
    """The blocking twin of `undo_all`."""
    failures: list[Exception] = []
    for step in steps:
        try:
            step()
        except Exception as exc:
            log.error("tearing down %s: %s", what, exc)
            failures.append(exc)
    _raise(what, failures)
