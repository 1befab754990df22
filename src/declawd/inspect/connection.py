"""The lifecycle of an inspected connection, under the HttpInspector's exchange logic.

Holds the two ends, the exchanges in flight and the queue waiting for an upstream stream;
drives events to the subclass's handlers; answers made here (JSON errors, refused streams,
resets); when an exchange is finished (audited, forgotten) and when the connection closes.
Invariant: no call raises (an internal error resets both ends) and no log line carries an
exception's message, which h11/h2 may fill with a header value, i.e. a secret.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable

from declawd.inspect.ends import Ends
from declawd.inspect.exchange import Exchange, audit_of
from declawd.inspect.http1 import H1Client, H1Server
from declawd.inspect.http2 import H2Client, H2Server
from declawd.inspect.messages import SideEvent
from declawd.inspect.model import HttpCommand, InspectContext, InspectionPolicy, SecretSource
from declawd.inspect.pipeline import BodyPipe, GuardServices, Pipeline

log = logging.getLogger(__name__)


class InspectedConnection:
    """`HttpLayer` plumbing; `HttpInspector` (http.py) says what happens to exchanges."""

    def __init__(
        self,
        ctx: InspectContext,
        policy: InspectionPolicy,
        *,
        secrets: SecretSource,
        clock: Callable[[], float] = time.time,
        services: GuardServices | None = None,
    ) -> None:
        self._ctx, self._policy, self._clock = ctx, policy, clock
        self._pipeline = Pipeline(ctx, policy, secrets, services=services)
        self._ends = Ends(ctx)
        self._client, self._upstream = self._ends.client, self._ends.upstream
        self._by_client: dict[int, Exchange] = {}
        self._by_upstream: dict[int, Exchange] = {}
        self._queue: list[Exchange] = []  # waiting for an upstream stream
        self._tunnel = self._dead = False
        self._client_gone = False  # no more requests will come
        self._upstream_dead = False  # no more requests can go
        self._processed = 0  # highest sandbox stream answered or sent upstream

    def client_data(self, data: bytes) -> list[HttpCommand]:
        return self._step(self._client_in, data)

    def upstream_data(self, data: bytes) -> list[HttpCommand]:
        return self._step(self._upstream_in, data)

    def client_eof(self) -> list[HttpCommand]:
        return self._step(self._client_eof, b"")

    def upstream_eof(self) -> list[HttpCommand]:
        return self._step(self._upstream_eof, b"")

    @property
    def pipeline(self) -> Pipeline:
        """The stages this connection runs (issue 10 adds its own to the lists)."""
        return self._pipeline

    @property
    def scanning(self) -> bool:
        """Whether a body of an open exchange is being buffered or streamed through the
        pipeline: its next bytes may cost real CPU (the proxy then hands this connection's
        events to a worker thread, off the event loop)."""
        return any(
            (x.req_pipe is not None and type(x.req_pipe) is not BodyPipe)
            or (x.resp_pipe is not None and type(x.resp_pipe) is not BodyPipe)
            for x in self._by_client.values()
        )

    @property
    def client_backlog(self) -> int:
        return self._client.backlog if isinstance(self._client, H2Server) else 0

    @property
    def upstream_backlog(self) -> int:
        return self._upstream.backlog if isinstance(self._upstream, H2Client) else 0

    # Driving ----------------------------------------------------------------------------

    def _step(self, fn: Callable[[bytes], None], data: bytes) -> list[HttpCommand]:
        if self._dead:
            return []
        try:
            fn(data)
            self._run()
        except Exception as e:
            # The message is left out: h11/h2 errors may quote a header, i.e. a secret.
            tb = "".join(traceback.format_tb(e.__traceback__))
            log.error("inspect %s: internal %s at\n%s", self._ctx.sandbox_id, type(e).__name__, tb)
            self._reset_both("internal error")
        return self._ends.drain()

    def _client_in(self, data: bytes) -> None:
        if self._tunnel:
            self._ends.raw_to_upstream += data
        else:
            self._client.receive(data)

    def _upstream_in(self, data: bytes) -> None:
        if self._tunnel:
            self._ends.raw_to_client += data
        elif self._upstream is not None:
            self._upstream.receive(data)

    def _client_eof(self, _: bytes) -> None:
        if self._tunnel:
            self._ends.close_upstream()
        else:
            self._client.eof()

    def _upstream_eof(self, _: bytes) -> None:
        if self._tunnel:
            self._ends.close_client()
        elif self._upstream is not None:
            self._upstream.eof()

    def _run(self) -> None:
        busy = True
        while busy and not self._dead:
            busy = False
            while self._client.events and not self._dead:
                busy = True
                self._on_client(self._client.events.popleft())
            while self._upstream is not None and self._upstream.events and not self._dead:
                busy = True
                self._on_upstream(self._upstream.events.popleft())
            busy = self._start_queued() or busy
        if not self._dead:
            self._ends.release_acks(self._by_client.values())
            self._maybe_close()

    # The exchange logic (http.py) -------------------------------------------------------

    def _on_client(self, ev: SideEvent) -> None:
        raise NotImplementedError

    def _on_upstream(self, ev: SideEvent) -> None:
        raise NotImplementedError

    def _start_queued(self) -> bool:
        raise NotImplementedError

    # Answers made here, bookkeeping ---------------------------------------------------------

    def _local(self, x: Exchange, status: int, error: str, reason: str) -> None:
        """Answer the sandbox from here (nothing more goes upstream), audited as denied."""
        x.local, x.status, x.verdict, x.reason = True, status, "deny", error
        self._forget_queued(x)
        self._ends.answer(x, status, error, reason, close=self._last_response())
        self._processed = max(self._processed, x.csid)
        self._maybe_finish(x)

    def _refuse(self, x: Exchange) -> None:
        """Not processed, safe to retry: REFUSED_STREAM on HTTP/2 (not audited: nothing
        happened), a 502 that closes the connection on HTTP/1.1."""
        self._forget_queued(x)
        if not self._ends.h2_client:
            return self._local(x, 502, "upstream_closed", "the upstream closed the connection")
        self._ends.refuse(x)
        x.finished = True
        self._by_client.pop(x.csid, None)
        self._ends.ack_all(x)

    def _abort_client(self, x: Exchange) -> None:
        if not self._client.can_reset:
            return self._reset_both("the upstream failed mid-response")
        self._client.reset(x.csid)
        x.req_in_done = x.resp_done = True
        self._maybe_finish(x)

    def _reset_both(self, reason: str) -> None:
        self._abandon_all()
        self._ends.reset_both(reason)
        self._dead = True

    def _abandon_all(self) -> None:
        for x in list(self._by_client.values()):
            x.req_in_done = x.resp_done = True
            self._maybe_finish(x)
        self._queue.clear()

    def _forget_queued(self, x: Exchange) -> None:
        if x in self._queue:
            self._queue.remove(x)

    def _maybe_finish(self, x: Exchange) -> None:
        if not (x.req_in_done and x.resp_done) or x.finished:
            return
        x.finished = True
        if self._by_client.get(x.csid) is x:
            del self._by_client[x.csid]
        self._ends.ack_all(x)
        if self._policy.audit_enabled:
            self._ends.audit(audit_of(x, self._ctx.host, self._policy))

    def _last_response(self) -> bool:
        """An HTTP/1.1 sandbox must reconnect after this response."""
        closes = isinstance(self._upstream, H1Client) and self._upstream.closes_after
        return isinstance(self._client, H1Server) and (closes or self._upstream_dead)

    def _maybe_close(self) -> None:
        """Once nothing is in flight: close both ends when the sandbox is done, or when the
        upstream is (the layer cannot reopen it: the sandbox reconnects, after a GOAWAY on
        HTTP/2, a `Connection: close` or an idle close on HTTP/1.1)."""
        if self._tunnel or self._by_client:
            return
        if self._client_gone or self._client.closing or self._upstream_dead:
            quitting = not (self._client_gone or self._ends.closed_client)
            if isinstance(self._client, H2Server) and quitting:
                self._client.goaway(self._processed)
            self._ends.close_upstream()
            self._ends.close_client()
