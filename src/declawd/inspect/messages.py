"""The protocol-neutral view of HTTP that the inspector works on, between h11 and h2.

Both HTTP/1.1 and HTTP/2 sides turn their library's events into these (lower-case header
names, no pseudo-headers, no hop-by-hop headers, no framing headers other than
content-length) and send these back out, so one exchange can cross from one protocol to
the other. Header values are latin-1 decoded: every byte round-trips unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

Headers = list[tuple[str, str]]

# RFC 9110 §7.6.1 plus what HTTP/2 forbids (RFC 9113 §8.2.2): each connection keeps its
# own; `transfer-encoding` and `host` are rebuilt by the side that sends the message. `te`
# survives only as `te: trailers` (gRPC needs it, HTTP/2 allows nothing else).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)


@dataclass(frozen=True)
class RequestHead:
    method: str
    scheme: str
    authority: str  # host[:port] from :authority or Host
    # Not in repr: after vault injection the target and headers may hold a secret.
    target: str = field(repr=False)  # origin-form path and query, or authority-form (CONNECT)
    headers: Headers = field(default_factory=list, repr=False)
    has_body: bool = False
    upgrade: str | None = None  # the h1 Upgrade header, kept apart (h1 -> h1 only)

    @property
    def url(self) -> str:
        if self.method == "CONNECT":
            return f"{self.scheme}://{self.target}"
        return f"{self.scheme}://{self.authority}{self.target}"

    def with_headers(self, headers: Headers) -> RequestHead:
        return replace(self, headers=headers)


@dataclass(frozen=True)
class ResponseHead:
    status: int
    headers: Headers = field(default_factory=list, repr=False)  # may echo a secret
    has_body: bool = True


# Events a side reports ------------------------------------------------------------------


@dataclass(frozen=True)
class HeadIn:
    sid: int
    head: RequestHead | ResponseHead


@dataclass(frozen=True)
class DataIn:
    sid: int
    data: bytes = field(repr=False)
    flow: int  # HTTP/2 flow-controlled length to acknowledge once forwarded; 0 for h1


@dataclass(frozen=True)
class EndIn:
    sid: int
    trailers: Headers | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AbortIn:
    """The peer reset this stream (HTTP/2) or the message cannot complete."""

    sid: int


@dataclass(frozen=True)
class TunnelIn:
    """A 101/CONNECT switch: from here the connection carries raw bytes; `data` came after
    the head in the same read."""

    sid: int
    head: ResponseHead | None
    data: bytes


@dataclass(frozen=True)
class GoneIn:
    """The peer will take no more requests: streams above `last_sid` were not processed
    (HTTP/2 GOAWAY), or the HTTP/1.1 connection closes after the current exchange."""

    last_sid: int | None = None


@dataclass(frozen=True)
class BrokenIn:
    """The peer violated the protocol; `can_respond`: an error response can still be sent
    (HTTP/1.1 server side before any response byte). With `sid`, only that stream is bad
    (an HTTP/2 request without its pseudo-headers): it gets a 400, the connection lives."""

    reason: str
    can_respond: bool = False
    sid: int | None = None


@dataclass(frozen=True)
class WindowIn:
    """An HTTP/2 peer opened its window: queued data may have gone out."""


SideEvent = HeadIn | DataIn | EndIn | AbortIn | TunnelIn | GoneIn | BrokenIn | WindowIn


# Header helpers -------------------------------------------------------------------------


def header(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first value of `name` (lower-case), or None."""
    return next((v for k, v in headers if k == name), None)


def without(headers: Iterable[tuple[str, str]], *names: str) -> Headers:
    drop = set(names)
    return [(k, v) for k, v in headers if k not in drop]


def set_header(headers: Iterable[tuple[str, str]], name: str, value: str) -> Headers:
    """Replace every `name` by one `name: value` (appended)."""
    return [*without(headers, name), (name, value)]


def content_length(headers: Iterable[tuple[str, str]]) -> int | None:
    raw = header(headers, "content-length")
    if raw is None or not raw.strip().isdigit():
        return None
    return int(raw.strip())


def end_to_end(raw: Iterable[tuple[str, str]]) -> Headers:
    """Lower-case names, minus hop-by-hop headers and the ones `Connection` names."""
    items = [(k.lower(), v) for k, v in raw]
    named = {token.strip().lower() for k, v in items if k == "connection" for token in v.split(",")}
    return [
        (k, v)
        for k, v in items
        if k not in HOP_BY_HOP and k not in named and (k != "te" or v.strip().lower() == "trailers")
    ]


def encode_value(value: str) -> bytes:
    """Back to bytes: latin-1 round-trips what came in; anything wider goes as UTF-8."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def decode_value(value: bytes) -> str:
    return value.decode("latin-1")
