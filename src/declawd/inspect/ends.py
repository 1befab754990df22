"""The two protocol ends of an inspected connection and what the inspector says to them
besides an exchange's own bytes: answers made here, flow-control acknowledgements, closes.

Invariant: received HTTP/2 data is acknowledged only once the other end's queue for that
stream is below HIGH_WATER (or the body is being buffered, bounded by the buffer limit),
so a slow reader on one side slows the writer on the other instead of filling memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from h2.errors import ErrorCodes

from declawd.inspect.exchange import HIGH_WATER, Exchange
from declawd.inspect.http1 import H1Client, H1Server
from declawd.inspect.http2 import H2Client, H2Server
from declawd.inspect.messages import ResponseHead, set_header
from declawd.inspect.model import (
    CloseClient,
    CloseUpstream,
    HttpCommand,
    InspectContext,
    ResetBoth,
    ToClient,
    ToUpstream,
)


class Ends:
    def __init__(self, ctx: InspectContext) -> None:
        self.client: H1Server | H2Server = (
            H2Server(ctx.scheme, ctx.host)
            if ctx.client_proto == "h2"
            else H1Server(ctx.scheme, ctx.host)
        )
        self.upstream: H1Client | H2Client | None = None
        if ctx.upstream_proto == "h2":
            self.upstream = H2Client()
        elif ctx.upstream_proto == "h1":
            self.upstream = H1Client()
        self.raw_to_client = bytearray()  # tunnel bytes, after the ends' own output
        self.raw_to_upstream = bytearray()
        self._audits: list[HttpCommand] = []
        self._closes: list[HttpCommand] = []
        self._closed_client = self._closed_upstream = False

    @property
    def h2_client(self) -> bool:
        return isinstance(self.client, H2Server)

    def drain(self) -> list[HttpCommand]:
        """Bytes first, then audit events, then closes (which must follow the bytes)."""
        out: list[HttpCommand] = []
        to_client = self.client.output() + bytes(self.raw_to_client)
        to_upstream = self.upstream.output() if self.upstream else b""
        to_upstream += bytes(self.raw_to_upstream)
        self.raw_to_client.clear()
        self.raw_to_upstream.clear()
        if to_client:
            out.append(ToClient(to_client))
        if to_upstream:
            out.append(ToUpstream(to_upstream))
        out += self._audits + self._closes
        self._audits, self._closes = [], []
        return out

    @property
    def closed_client(self) -> bool:
        return self._closed_client

    def audit(self, command: HttpCommand) -> None:
        self._audits.append(command)

    def close_client(self) -> None:
        if not self._closed_client:
            self._closed_client = True
            self._closes.append(CloseClient())

    def close_upstream(self) -> None:
        if not self._closed_upstream and self.upstream is not None:
            self._closed_upstream = True
            self._closes.append(CloseUpstream())

    def reset_both(self, reason: str) -> None:
        self._closes.append(ResetBoth(reason))

    # Answers made here ---------------------------------------------------------------

    def answer(self, x: Exchange, status: int, error: str, reason: str, *, close: bool) -> None:
        """A whole JSON `{"error", "reason"}` response to the sandbox."""
        body = json.dumps({"error": error, "reason": reason}).encode()
        has_body = x.head.method != "HEAD"
        self.client.send_head(
            x.csid, ResponseHead(status, json_headers(body), has_body), close=close
        )
        if has_body:
            self.client.send_data(x.csid, body)
            x.bytes_in += len(body)
            self.client.send_end(x.csid)
        x.head_sent = x.resp_done = True

    def bad_stream(self, sid: int, reason: str) -> None:
        """400 on one HTTP/2 stream whose request could not be read."""
        body = json.dumps({"error": "bad_request", "reason": reason}).encode()
        self.client.send_head(sid, ResponseHead(400, json_headers(body)))
        self.client.send_data(sid, body)
        self.client.send_end(sid)

    def refuse(self, x: Exchange) -> None:
        """REFUSED_STREAM: not processed, the HTTP/2 client may retry it elsewhere."""
        self.client.reset(x.csid, ErrorCodes.REFUSED_STREAM)
        x.req_in_done = x.resp_done = True

    # Flow control --------------------------------------------------------------------

    def upstream_ack(self, sid: int, n: int) -> None:
        if self.upstream is not None:
            self.upstream.ack(sid, n)

    def ack_all(self, x: Exchange) -> None:
        if x.unacked_client:
            self.client.ack(x.csid, x.unacked_client)
        if x.unacked_upstream and x.usid is not None:
            self.upstream_ack(x.usid, x.unacked_upstream)
        x.unacked_client = x.unacked_upstream = 0

    def release_acks(self, exchanges: Iterable[Exchange]) -> None:
        for x in exchanges:
            if x.unacked_client and self._takes(x, towards_upstream=True):
                self.client.ack(x.csid, x.unacked_client)
                x.unacked_client = 0
            if x.unacked_upstream and x.usid is not None and self._takes(x, towards_upstream=False):
                self.upstream_ack(x.usid, x.unacked_upstream)
                x.unacked_upstream = 0

    def _takes(self, x: Exchange, *, towards_upstream: bool) -> bool:
        pipe = x.req_pipe if towards_upstream else x.resp_pipe
        if pipe is not None and not pipe.head_ready:
            return True  # buffering: bounded by the buffer limit
        if not towards_upstream:
            return self.client.pending(x.csid) <= HIGH_WATER
        if x.usid is None or self.upstream is None:
            return len(x.req_out) <= HIGH_WATER
        return self.upstream.pending(x.usid) <= HIGH_WATER


def json_headers(body: bytes) -> list[tuple[str, str]]:
    return set_header([("content-type", "application/json")], "content-length", str(len(body)))
