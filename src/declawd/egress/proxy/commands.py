"""The vocabulary between the connection machine and its asyncio adapter: events the adapter
reports (bytes, EOFs, closes, dial outcomes, timers, write back-pressure, a policy change)
and commands the machine returns (send, dial, arm a timer, pause, close, reset, audit).

Invariant: the machine never touches a socket or a clock; everything it wants done is one
of these commands, executed by `server.py` in the order returned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from declawd.egress.proxy.decide import Verdict
from declawd.inspect.model import HttpAudit

# Timers (one armed at a time): the peek window, the handshake budget from the first byte,
# and the budget of both TLS handshakes of an inspected connection.
PEEK = "peek"
HANDSHAKE = "handshake"
TLS_HANDSHAKE = "tls_handshake"

# Events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientData:
    data: bytes


@dataclass(frozen=True, slots=True)
class ClientEof:
    """The sandbox half-closed (TCP FIN)."""


@dataclass(frozen=True, slots=True)
class ClientClosed:
    """The client transport is gone without an error."""


@dataclass(frozen=True, slots=True)
class ClientReset:
    """The client transport failed (a reset, an OS error)."""


@dataclass(frozen=True, slots=True)
class UpstreamConnected:
    pass


@dataclass(frozen=True, slots=True)
class UpstreamFailed:
    message: str  # short, for a 502 body: "connection refused", "timed out"


@dataclass(frozen=True, slots=True)
class UpstreamData:
    data: bytes


@dataclass(frozen=True, slots=True)
class UpstreamEof:
    pass


@dataclass(frozen=True, slots=True)
class UpstreamClosed:
    pass


@dataclass(frozen=True, slots=True)
class UpstreamReset:
    pass


@dataclass(frozen=True, slots=True)
class TimerFired:
    kind: str


@dataclass(frozen=True, slots=True)
class ClientWriteBlocked:
    """The client transport's write buffer went above its high-water mark."""


@dataclass(frozen=True, slots=True)
class ClientWriteDrained:
    pass


@dataclass(frozen=True, slots=True)
class UpstreamWriteBlocked:
    pass


@dataclass(frozen=True, slots=True)
class UpstreamWriteDrained:
    pass


@dataclass(frozen=True, slots=True)
class PolicyCut:
    """The sandbox's policy changed: `still_allowed(name, dst_ip, dst_port)`."""

    still_allowed: Callable[[str | None, str, int], bool]


Event = (
    ClientData
    | ClientEof
    | ClientClosed
    | ClientReset
    | UpstreamConnected
    | UpstreamFailed
    | UpstreamData
    | UpstreamEof
    | UpstreamClosed
    | UpstreamReset
    | TimerFired
    | ClientWriteBlocked
    | ClientWriteDrained
    | UpstreamWriteBlocked
    | UpstreamWriteDrained
    | PolicyCut
)

# Commands -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendClient:
    data: bytes


@dataclass(frozen=True, slots=True)
class SendUpstream:
    data: bytes


@dataclass(frozen=True, slots=True)
class SendClientEof:
    """Half-close towards the sandbox (FIN after what was sent)."""


@dataclass(frozen=True, slots=True)
class SendUpstreamEof:
    pass


@dataclass(frozen=True, slots=True)
class Dial:
    """Connect to this ADDRESS (never a name). `tls`: the machine will speak TLS over it
    itself (an inspected connection); the adapter dials plain TCP either way."""

    ip: str
    port: int
    tls: bool = False


@dataclass(frozen=True, slots=True)
class DropUpstream:
    """Close the upstream gracefully and report nothing more about it (its TLS failed: the
    sandbox side goes on and is answered 502)."""


@dataclass(frozen=True, slots=True)
class ArmTimer:
    """(Re)arm the connection's one timer; `TimerFired(kind)` after `delay` seconds."""

    kind: str
    delay: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    pass


@dataclass(frozen=True, slots=True)
class PauseClient:
    pass


@dataclass(frozen=True, slots=True)
class ResumeClient:
    pass


@dataclass(frozen=True, slots=True)
class PauseUpstream:
    pass


@dataclass(frozen=True, slots=True)
class ResumeUpstream:
    pass


@dataclass(frozen=True, slots=True)
class CloseBoth:
    """Graceful close of both sides: queued bytes are still delivered. Terminal."""


@dataclass(frozen=True, slots=True)
class ResetBoth:
    """Abort both sides so the peers see a TCP reset. Terminal."""


@dataclass(frozen=True, slots=True)
class Audit:
    """A connection decision (kind `connection`)."""

    verdict: Verdict


@dataclass(frozen=True, slots=True)
class AuditHttp:
    """One inspected request, from the HTTP layer (kind `http`)."""

    audit: HttpAudit


Command = (
    SendClient
    | SendUpstream
    | SendClientEof
    | SendUpstreamEof
    | Dial
    | DropUpstream
    | ArmTimer
    | CancelTimer
    | PauseClient
    | ResumeClient
    | PauseUpstream
    | ResumeUpstream
    | CloseBoth
    | ResetBoth
    | Audit
    | AuditHttp
)
TERMINAL = (CloseBoth, ResetBoth)
