"""Fault injection for tests: `fault_point(name)` fails on demand at a named step.

`DECLAWD_FAULTS` is a comma-separated list of `name` or `name:sleep` entries, read on every
call (a test restarts the server with a different value). `name` raises `FaultInjected`;
`name:sleep` blocks the calling thread (and with it the event loop) until the process is
killed, which simulates a crash mid-operation. Unset, a call costs one dict lookup.
"""

from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger(__name__)

ENV_VAR = "DECLAWD_FAULTS"


class FaultInjected(RuntimeError):
    """Raised at a fault point named in DECLAWD_FAULTS."""


def parse_faults(spec: str) -> dict[str, str]:
    """`"a.b,c.d:sleep"` → `{"a.b": "raise", "c.d": "sleep"}` (blank entries ignored)."""
    out: dict[str, str] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, action = item.partition(":")
        out[name.strip()] = action.strip() or "raise"
    return out


def fault_point(name: str) -> None:
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return
    action = parse_faults(spec).get(name)
    if action is None:
        return
    if action == "sleep":
        # A marker line the crash tests wait for before they kill -9 the server.
        print(f"declawd fault point {name}: sleeping", file=sys.stderr, flush=True)
        log.warning("fault point %s: sleeping until killed", name)
        while True:
            time.sleep(3600)
    log.warning("fault point %s: raising", name)
    raise FaultInjected(f"injected fault at {name}")
