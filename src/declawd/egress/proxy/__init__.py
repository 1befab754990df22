"""The gateway's transparent L7 proxy for TCP the datapath redirects here.

For most sandboxes that is TCP to addresses they resolved for an allowed name; for one whose
policy needs inspection it is all its TCP. A sans-IO machine per connection (`machine`)
peeks the first bytes (TLS ClientHello / HTTP request / nothing), decides with the pure
functions of `decide`, dials the original destination address (never re-resolving) and
splices, or intercepts (`intercept`, `tls`) for the HTTP layer; `server` is the asyncio
adapter. Invariant: bytes reach the upstream only after the name the server will route by
was checked against the sandbox's policy and its own DNS answers; every refusal is a reset.
"""

from declawd.egress.proxy.commands import Command, Event
from declawd.egress.proxy.decide import (
    SandboxView,
    Verdict,
    decide_http,
    decide_opaque,
    decide_tls,
    speaks_http,
)
from declawd.egress.proxy.intercept import Interception, LayerFactory, LeafContexts
from declawd.egress.proxy.machine import HANDSHAKE_TIMEOUT_S, PEEK_TIMEOUT_S, Connection
from declawd.egress.proxy.server import SO_ORIGINAL_DST, SniProxy, so_original_dst
from declawd.egress.proxy.tls import TlsEnd, TlsFailure

__all__ = [
    "HANDSHAKE_TIMEOUT_S",
    "PEEK_TIMEOUT_S",
    "SO_ORIGINAL_DST",
    "Command",
    "Connection",
    "Event",
    "Interception",
    "LayerFactory",
    "LeafContexts",
    "SandboxView",
    "SniProxy",
    "TlsEnd",
    "TlsFailure",
    "Verdict",
    "decide_http",
    "decide_opaque",
    "decide_tls",
    "so_original_dst",
    "speaks_http",
]
