"""HttpInspector: the HTTP layer the proxy stacks on an inspected connection (`HttpLayer`).

Plaintext from the sandbox goes into an h11/h2 server, plaintext from the upstream into an
h11/h2 client (`Ends`); exchanges cross between them (h1 <-> h2 through `messages`) and
through the `Pipeline`; what comes out is commands. Sans-IO. Invariants: every request is
answered, refused as retryable, or the connection reset, and no call raises; every
finished exchange is one `HttpAudit` (if the policy audits) with no secret in it. After a
101/CONNECT the connection is a raw, unscanned tunnel.
"""

from __future__ import annotations

import json

from h2.errors import ErrorCodes

from declawd.inspect.connection import InspectedConnection
from declawd.inspect.exchange import Exchange
from declawd.inspect.http1 import H1Server
from declawd.inspect.http2 import H2Client
from declawd.inspect.messages import (
    AbortIn,
    BrokenIn,
    DataIn,
    EndIn,
    GoneIn,
    HeadIn,
    RequestHead,
    ResponseHead,
    SideEvent,
    TunnelIn,
    without,
)
from declawd.inspect.pipeline import Blocked, BodyPipe, InspectionFailed

__all__ = ["HttpInspector"]


class HttpInspector(InspectedConnection):
    """One inspected connection: `HttpInspector(ctx, policy, secrets=..., clock=...)`.
    `client_backlog`/`upstream_backlog`: bytes waiting for an HTTP/2 peer's window; the
    proxy may stop reading the other side while they are high. `pipeline`: its stages.
    Raises InvalidInput (at construction) if the policy's rules do not compile."""

    # From the sandbox ---------------------------------------------------------------------

    def _on_client(self, ev: SideEvent) -> None:
        if isinstance(ev, HeadIn) and isinstance(ev.head, RequestHead):
            self._on_request(ev.sid, ev.head)
        elif isinstance(ev, DataIn):
            self._on_request_data(ev)
        elif isinstance(ev, EndIn):
            self._on_request_end(ev)
        elif isinstance(ev, AbortIn):
            self._on_client_abort(ev.sid)
        elif isinstance(ev, BrokenIn):
            self._on_client_broken(ev)
        elif isinstance(ev, GoneIn):
            self._client_gone = True
            if self._ends.h2_client:  # h2 ends the whole connection on GOAWAY or EOF
                for x in list(self._by_client.values()):
                    self._on_client_abort(x.csid)

    def _on_request(self, sid: int, head: RequestHead) -> None:
        x = self._by_client[sid] = Exchange(sid, head, self._clock())
        if self._upstream is None:
            reason = self._ctx.upstream_error or "the upstream could not be reached"
            return self._local(x, 502, "upstream_unavailable", reason)
        if self._upstream_dead:
            return self._refuse(x)
        h1_both = self._ctx.client_proto == "h1" and self._ctx.upstream_proto == "h1"
        if head.method == "CONNECT" and not h1_both:
            return self._local(
                x, 501, "not_supported", "CONNECT is relayed between HTTP/1.1 ends only"
            )
        if not h1_both and head.upgrade is not None:
            head = RequestHead(
                head.method, head.scheme, head.authority, head.target, head.headers, head.has_body
            )  # HTTP/2 has no Upgrade
        try:
            x.state, x.request = self._pipeline.request(head, x.state)
        except InspectionFailed as e:
            return self._local(x, 502, "inspection_failed", str(e))
        except Blocked as e:
            return self._local(x, e.status, e.error, e.reason)
        if x.request.has_body:
            try:
                x.req_pipe = self._pipeline.body(x.state, x.request.headers, "outbound")
            except Blocked as e:  # the content package, asked before a body it cannot hold
                return self._local(x, e.status, e.error, e.reason)
        else:
            x.req_pipe = BodyPipe(x.state, None)
        self._queue.append(x)

    def _on_request_data(self, ev: DataIn) -> None:
        x = self._by_client.get(ev.sid)
        if x is None or x.local or x.req_pipe is None:
            self._client.ack(ev.sid, ev.flow)
            return
        x.unacked_client += ev.flow
        try:
            self._to_upstream(x, x.req_pipe.feed(ev.data))
        except (InspectionFailed, Blocked) as e:
            self._fail_request(x, e)

    def _on_request_end(self, ev: EndIn) -> None:
        x = self._by_client.get(ev.sid)
        if x is None:
            return
        x.req_in_done, x.req_trailers = True, ev.trailers
        if not x.local and x.req_pipe is not None:
            try:
                self._to_upstream(x, x.req_pipe.finish())
            except (InspectionFailed, Blocked) as e:
                return self._fail_request(x, e)
            if x.usid is not None:
                self._end_upstream_request(x)
        self._maybe_finish(x)

    def _on_client_abort(self, sid: int) -> None:
        x = self._by_client.get(sid)
        if x is None:
            return
        x.req_in_done = x.resp_done = True
        self._forget_queued(x)
        if x.usid is not None and x.usid in self._by_upstream:
            if self._upstream is not None and self._upstream.can_reset:
                self._drop_upstream_stream(x)
            elif x.req_out_done:
                x.discard = True  # read the rest of the HTTP/1.1 response, pass nothing on
            else:
                self._lose_upstream()  # an HTTP/1.1 request cannot be cut short
        self._maybe_finish(x)

    def _on_client_broken(self, ev: BrokenIn) -> None:
        if ev.sid is not None:
            self._ends.bad_stream(ev.sid, ev.reason)
            return
        if isinstance(self._client, H1Server) and ev.can_respond:
            body = json.dumps({"error": "bad_request", "reason": ev.reason}).encode()
            if not self._client.reject(400, body):
                return self._reset_both(f"sandbox sent a {ev.reason}")
        elif isinstance(self._client, H1Server):
            return self._reset_both(f"sandbox sent a {ev.reason}")
        # HTTP/1.1 answered 400, or h2 queued its GOAWAY: both ends close.
        self._abandon_all()
        self._ends.close_client()
        self._ends.close_upstream()

    # Towards the upstream -------------------------------------------------------------------

    def _start_queued(self) -> bool:
        started = False
        for x in list(self._queue):
            if self._upstream is None or not self._upstream.can_start:
                break
            if x.req_pipe is not None and x.req_pipe.head_ready:
                self._queue.remove(x)
                self._start(x)
                started = True
        return started

    def _start(self, x: Exchange) -> None:
        assert self._upstream is not None and x.request is not None and x.req_pipe is not None
        head, length = x.request, x.req_pipe.length
        if head.has_body:
            headers = without(head.headers, "content-length")
            if length is not None:
                headers.append(("content-length", str(length)))
            head = head.with_headers(headers)
        x.usid = self._upstream.start(head, length)
        x.req_out_done = not head.has_body
        self._by_upstream[x.usid] = x
        self._processed = max(self._processed, x.csid)
        self._to_upstream(x, b"")
        if x.req_in_done:
            self._end_upstream_request(x)

    def _to_upstream(self, x: Exchange, data: bytes) -> None:
        if x.usid is None or self._upstream is None:
            x.req_out += data
            return
        data, x.req_out = bytes(x.req_out) + data, bytearray()
        if data:
            self._upstream.send_data(x.usid, data)
            x.bytes_out += len(data)

    def _end_upstream_request(self, x: Exchange) -> None:
        if not x.req_out_done and x.usid is not None and self._upstream is not None:
            x.req_out_done = True
            self._upstream.send_end(x.usid, x.req_trailers)
            self._settle(x)

    def _settle(self, x: Exchange) -> None:
        """Forget the upstream stream once it is over both ways. An HTTP/2 stream answered
        early stays known while the request still goes, to hear its RST_STREAM."""
        over = x.req_out_done or (self._upstream is not None and not self._upstream.can_reset)
        if x.upstream_done and over and x.usid is not None:
            self._by_upstream.pop(x.usid, None)

    def _fail_request(self, x: Exchange, e: InspectionFailed | Blocked) -> None:
        self._forget_queued(x)
        if x.usid is not None:
            self._drop_upstream_stream(x)
        if x.head_sent:
            return self._abort_client(x)
        if isinstance(e, Blocked):
            self._local(x, e.status, e.error, e.reason)
        else:
            self._local(x, 502, "inspection_failed", str(e))

    # From the upstream --------------------------------------------------------------------

    def _on_upstream(self, ev: SideEvent) -> None:
        if isinstance(ev, HeadIn) and isinstance(ev.head, ResponseHead):
            self._on_response(ev.sid, ev.head)
        elif isinstance(ev, DataIn):
            self._on_response_data(ev)
        elif isinstance(ev, EndIn):
            self._on_response_end(ev)
        elif isinstance(ev, AbortIn):
            self._on_upstream_abort(ev.sid)
        elif isinstance(ev, TunnelIn):
            self._on_tunnel(ev)
        elif isinstance(ev, GoneIn):
            self._on_upstream_gone(ev.last_sid)
        elif isinstance(ev, BrokenIn):
            self._lose_upstream()

    def _on_response(self, sid: int, head: ResponseHead) -> None:
        x = self._by_upstream.get(sid)
        if x is None or x.discard:
            return
        x.status = head.status
        try:
            x.resp_head = self._pipeline.response(x.state, head)
            if head.has_body:
                x.resp_pipe = self._pipeline.body(
                    x.state, x.resp_head.headers, "inbound", status=head.status
                )
            else:
                x.resp_pipe = BodyPipe(x.state, None)
        except Blocked as e:  # the content package's deny, before anything was sent
            return self._block_response(x, e)
        self._send_head_if_ready(x)

    def _send_head_if_ready(self, x: Exchange) -> None:
        pipe, head = x.resp_pipe, x.resp_head
        if x.head_sent or head is None or pipe is None or not pipe.head_ready:
            return
        if head.has_body:
            headers = without(head.headers, "content-length")
            if pipe.length is not None:
                headers.append(("content-length", str(pipe.length)))
            head = ResponseHead(head.status, headers, True)
        x.head_sent = True
        self._client.send_head(x.csid, head, close=self._last_response())

    def _on_response_data(self, ev: DataIn) -> None:
        x = self._by_upstream.get(ev.sid)
        if x is None or x.discard or x.resp_pipe is None:
            self._ends.upstream_ack(ev.sid, ev.flow)
            return
        x.unacked_upstream += ev.flow
        try:
            out = x.resp_pipe.feed(ev.data)
        except InspectionFailed as e:
            return self._fail_response(x, str(e))
        except Blocked as e:
            return self._block_response(x, e)
        self._send_head_if_ready(x)
        self._to_client(x, out)

    def _on_response_end(self, ev: EndIn) -> None:
        x = self._by_upstream.get(ev.sid)
        if x is None:
            return
        x.upstream_done = True
        self._settle(x)
        if not (x.discard or x.resp_done or x.resp_pipe is None):
            try:
                out = x.resp_pipe.finish()
            except InspectionFailed as e:
                return self._fail_response(x, str(e))
            except Blocked as e:
                return self._block_response(x, e)
            self._send_head_if_ready(x)
            self._to_client(x, out)
            self._client.send_end(x.csid, ev.trailers)
            x.resp_done = True
        self._maybe_finish(x)

    def _to_client(self, x: Exchange, data: bytes) -> None:
        if data and x.head_sent:
            self._client.send_data(x.csid, data)
            x.bytes_in += len(data)

    def _on_upstream_abort(self, sid: int) -> None:
        x = self._by_upstream.pop(sid, None)
        if x is None:
            return
        x.upstream_done = True
        if not x.resp_done:
            return self._fail_response(x, "the upstream reset the stream")
        # Answered before the request ended: the rest of the request is not wanted.
        x.local = True
        if not x.req_in_done and self._client.can_reset:
            self._client.reset(x.csid, ErrorCodes.NO_ERROR)
            x.req_in_done = True
        self._maybe_finish(x)

    def _fail_response(self, x: Exchange, reason: str) -> None:
        if x.usid is not None and not x.upstream_done:
            self._drop_upstream_stream(x)
        if x.head_sent:
            self._abort_client(x)
        else:
            self._local(x, 502, "upstream_failed", reason)

    def _block_response(self, x: Exchange, e: Blocked) -> None:
        """An inbound stage refused the response: the sandbox gets the refusal in its place
        while the head is unsent; after it (a stream), the stream is reset."""
        if x.usid is not None and not x.upstream_done:
            self._drop_upstream_stream(x)
        if not x.head_sent:
            return self._local(x, e.status, e.error, e.reason)
        x.verdict, x.reason = "deny", e.error
        self._abort_client(x)

    def _on_tunnel(self, ev: TunnelIn) -> None:
        x = self._by_upstream.pop(ev.sid, None)
        if x is None or ev.head is None or not isinstance(self._client, H1Server):
            return self._reset_both("unexpected protocol switch")
        x.status = ev.head.status
        self._ends.raw_to_upstream += self._client.switch(self._pipeline.response(x.state, ev.head))
        self._ends.raw_to_client += ev.data
        self._tunnel = True
        x.req_in_done = x.resp_done = x.upstream_done = x.head_sent = True
        self._maybe_finish(x)

    def _on_upstream_gone(self, last_sid: int | None) -> None:
        """No more requests can go. h2 drops every stream on GOAWAY (theirs or ours), so on
        HTTP/2 all in flight fail; those the upstream never saw are refused (retryable)."""
        self._upstream_dead = True
        for x in list(self._by_upstream.values()):
            unseen = last_sid is not None and x.usid is not None and x.usid > last_sid
            if isinstance(self._upstream, H2Client) or unseen:
                self._by_upstream.pop(x.usid or 0, None)
                x.upstream_done = True
                if unseen and not x.head_sent:
                    self._refuse(x)
                else:
                    self._fail_response(x, "the upstream closed the connection")
        for x in list(self._queue):
            self._refuse(x)

    def _lose_upstream(self) -> None:
        """The upstream connection is unusable: fail what is in flight, close it."""
        self._on_upstream_gone(None)
        for x in list(self._by_upstream.values()):
            self._by_upstream.pop(x.usid or 0, None)
            x.upstream_done = True
            if not x.discard:
                self._fail_response(x, "the upstream broke the protocol")
        self._ends.close_upstream()

    def _drop_upstream_stream(self, x: Exchange) -> None:
        """Stop an exchange's upstream stream: a reset on HTTP/2; an HTTP/1.1 exchange cut
        short leaves the connection unusable."""
        assert x.usid is not None
        complete = x.upstream_done and x.req_out_done
        self._by_upstream.pop(x.usid, None)
        x.upstream_done = True
        if complete or self._upstream is None:
            return
        if self._upstream.can_reset:
            self._upstream.reset(x.usid)
        else:
            self._lose_upstream()
