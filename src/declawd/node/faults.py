"""Fault injection for tests: a `Faults` hook handed to the node fails on demand at a step.

The node calls `faults.point(name)` at each named step of create and kill. Production runs
with `NO_FAULTS` (a call costs one empty-dict lookup); the e2e fault suite starts a real
server with the test-only setting `faults` (env `DECLAWD_FAULTS`), read once at start: a
comma-separated list of `name` (raise `FaultInjected`) or `name:sleep` (block the event
loop until the process is killed, to simulate a crash mid-operation).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class FaultInjected(RuntimeError):
    """Raised at a fault point the hook was told to fail."""


def parse_faults(spec: str) -> dict[str, str]:
    """`"a.b,c.d:sleep"` → `{"a.b": "raise", "c.d": "sleep"}` (blank entries ignored)."""
    out: dict[str, str] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, action = item.partition(":")
        action = action.strip() or "raise"
        if action not in ("raise", "sleep"):
            raise ValueError(f"faults: unknown action {action!r} for {name!r} (raise or sleep)")
        out[name.strip()] = action
    return out


class Faults:
    def __init__(
        self,
        actions: Mapping[str, str] | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.actions = dict(actions or {})
        self._sleep = sleep

    @classmethod
    def from_spec(cls, spec: str) -> Faults:
        return cls(parse_faults(spec))

    def point(self, name: str) -> None:
        action = self.actions.get(name)
        if action is None:
            return
        if action == "sleep":
            # A marker line the crash tests wait for before they kill -9 the server.
            print(f"declawd fault point {name}: sleeping", file=sys.stderr, flush=True)
            log.warning("fault point %s: sleeping until killed", name)
            while True:
                self._sleep(3600)
        log.warning("fault point %s: raising", name)
        raise FaultInjected(f"injected fault at {name}")


NO_FAULTS = Faults()
