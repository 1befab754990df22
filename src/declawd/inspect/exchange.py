"""One request/response exchange as the HttpInspector tracks it across the two ends.

An exchange is born with the sandbox's request head, gets an upstream stream once its
request head may go (a buffered body must be complete first), and is finished (audited,
forgotten) once the sandbox's request ended and the response was sent or abandoned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from declawd.inspect.messages import Headers, RequestHead, ResponseHead
from declawd.inspect.model import HttpAudit, InspectionPolicy
from declawd.inspect.pipeline import BodyPipe, ExchangeState
from declawd.inspect.vaultinject import mask_url

# Data received from one side is acknowledged (HTTP/2 WINDOW_UPDATE) only while the other
# side's queue for the stream stays below this: per-stream memory is bounded by it plus
# the stream window.
HIGH_WATER = 256 * 1024


@dataclass(eq=False)
class Exchange:
    """Fields that can hold a secret in flight (the injected request, queued bytes) are
    left out of repr."""

    csid: int  # stream id on the sandbox side
    head: RequestHead  # as the sandbox sent it
    started: float  # clock() at the request head
    state: ExchangeState = field(default_factory=ExchangeState)
    request: RequestHead | None = field(default=None, repr=False)  # after the pipeline
    req_pipe: BodyPipe | None = None
    usid: int | None = None  # stream id on the upstream side
    req_out: bytearray = field(default_factory=bytearray, repr=False)  # waits for `usid`
    req_trailers: Headers | None = field(default=None, repr=False)
    req_in_done: bool = False  # the sandbox finished its request
    req_out_done: bool = False  # we finished the upstream request
    resp_head: ResponseHead | None = field(default=None, repr=False)  # after the pipeline
    resp_pipe: BodyPipe | None = None
    head_sent: bool = False
    resp_done: bool = False  # the sandbox has the whole response (or was reset)
    upstream_done: bool = False  # nothing more comes from the upstream stream
    local: bool = False  # answered here: nothing (more) goes upstream
    discard: bool = False  # the sandbox left: read the upstream's response, drop it
    finished: bool = False
    status: int = 0
    verdict: Literal["allow", "deny"] = "allow"
    reason: str = "inspected"
    unacked_client: int = 0  # HTTP/2 flow-controlled bytes not yet acknowledged
    unacked_upstream: int = 0
    bytes_out: int = 0  # request body bytes sent upstream
    bytes_in: int = 0  # response body bytes sent to the sandbox


def audit_of(x: Exchange, host: str, policy: InspectionPolicy) -> HttpAudit:
    """The `http` audit event of a finished exchange: the SDK's `AuditEntry` fields plus
    ours; the URL masked (injected secrets, masked env values)."""
    request = x.request or x.head
    record: dict[str, Any] = {
        "timestamp": datetime.fromtimestamp(x.started, UTC).isoformat(),
        "method": x.head.method,
        "url": mask_url(request.url, policy, x.state.injected),
        "status_code": x.status,
        "direction": "outbound",
        "pii_redactions": x.state.pii_redactions,
        "injection_blocks": x.state.injection_blocks,
        "transformations_applied": x.state.transformations_applied,
        "vault_injections": x.state.vault_injections,
        "bytes_out": x.bytes_out,
        "bytes_in": x.bytes_in,
        "host": host,
    }
    if x.state.unscanned:
        record["unscanned"] = x.state.unscanned
    if x.state.invisible_text:
        record["invisible_text"] = x.state.invisible_text
    scans = x.state.scratch.get("scan_results")
    if scans:
        record["scan_results"] = scans  # what each guard found: types and counts, no values
    verdicts = x.state.scratch.get("policy")
    if verdicts:
        record["policy"] = verdicts  # the content package's, per direction
    return HttpAudit(record=record, verdict=x.verdict, reason=x.reason)
