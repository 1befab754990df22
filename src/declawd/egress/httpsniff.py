"""Incremental HTTP/1.x request-stream parser (client to server direction), pure, no I/O.

The proxy feeds it every chunk the client sends; it yields one RequestHead per request of a
keep-alive or pipelined stream and skips bodies (Content-Length or chunked) without buffering
them. Invariant: any framing a server could read differently from us (bare CR/LF, folded or
duplicate Host, CL with TE, unknown transfer codings) is an HttpViolation and the stream
stops being parsed, so every request the server acts on had its head seen here first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from declawd.egress.sni import normalize_host

MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100
MAX_CHUNK_LINE = 4096
MAX_LEADING_EMPTY_LINES = 4

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_METHOD_PREFIX = re.compile(rb"[A-Za-z]{1,20}")
_VERSION = re.compile(rb"HTTP/1\.[01]")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_FORBIDDEN_IN_HEAD = re.compile(rb"[\x00]|\r(?!\n)|(?<!\r)\n")


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str
    version: str
    host: str | None
    """Host header, lowercased, port stripped; None when absent."""
    authority: str | None = None
    """Host of an absolute-form target (the server prefers it over Host), port stripped."""
    upgrade: bool = False

    @property
    def is_connect(self) -> bool:
        return self.method == "CONNECT"

    @property
    def names(self) -> tuple[str | None, ...]:
        """Every name the server may route this request by; each must be allowed."""
        return (self.host,) if self.authority is None else (self.host, self.authority)


@dataclass(frozen=True)
class HttpViolation:
    reason: str


HttpEvent = RequestHead | HttpViolation


def starts_like_http(data: bytes) -> bool | None:
    """True once the stream opens with `LETTERS SP` (a request line), None if undecided.

    Deliberately broad: a stream that merely looks like a request is held to the HTTP
    rules rather than waved through as an opaque stream.
    """
    if not data:
        return None
    m = _METHOD_PREFIX.match(data)
    if m is None:
        return False
    if m.end() == len(data):
        return None if m.end() < 20 else False
    return data[m.end()] in b" \t"


class HttpRequestStream:
    """State machine over the bytes of one client-to-server stream."""

    def __init__(self) -> None:
        self._state = "head"
        self._head = bytearray()
        self._scanned = 0
        self._remaining = 0
        self._line = bytearray()
        self._trailer_bytes = 0
        self._empty_lines = 0
        self.requests = 0

    @property
    def pending_head_bytes(self) -> int:
        """Bytes of an incomplete request head held back: not yet safe to forward."""
        return len(self._head) if self._state == "head" else 0

    @property
    def tunnel(self) -> bool:
        """After an Upgrade request the stream is no longer HTTP and is not parsed."""
        return self._state == "tunnel"

    def feed(self, data: bytes) -> list[HttpEvent]:
        events: list[HttpEvent] = []
        view = memoryview(data)
        pos = 0
        while pos < len(view) and self._state not in ("error", "tunnel"):
            if self._state == "head":
                pos = self._feed_head(view, pos, events)
            elif self._state == "body":
                take = min(self._remaining, len(view) - pos)
                self._remaining -= take
                pos += take
                if self._remaining == 0:
                    self._state = "head"
            elif self._state == "chunk_data":
                take = min(self._remaining, len(view) - pos)
                self._remaining -= take
                pos += take
                if self._remaining == 0:
                    self._state = "chunk_crlf"
            else:
                pos = self._feed_line(view, pos, events)
        return events

    def _fail(self, events: list[HttpEvent], reason: str) -> int:
        self._state = "error"
        events.append(HttpViolation(reason))
        return 0

    def _feed_head(self, view: memoryview, pos: int, events: list[HttpEvent]) -> int:
        self._head += view[pos:]
        # RFC 9112 2.2: tolerate a few empty lines between requests.
        while self._head.startswith(b"\r\n"):
            del self._head[:2]
            self._empty_lines += 1
            if self._empty_lines > MAX_LEADING_EMPTY_LINES:
                return self._fail(events, "malformed_http")
        end = self._head.find(b"\r\n\r\n", self._scanned)
        if end < 0:
            self._scanned = max(0, len(self._head) - 3)
            if len(self._head) > MAX_HEAD_BYTES:
                self._fail(events, "header_too_large")
            return len(view)
        if end + 4 > MAX_HEAD_BYTES:
            self._fail(events, "header_too_large")
            return len(view)
        leftover = len(self._head) - (end + 4)
        head = bytes(self._head[: end + 4])
        self._head.clear()
        self._scanned = 0
        self._empty_lines = 0
        self._parse_head(head, events)
        return len(view) - leftover

    def _parse_head(self, head: bytes, events: list[HttpEvent]) -> None:
        if _FORBIDDEN_IN_HEAD.search(head):
            self._fail(events, "malformed_http")
            return
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
            self._fail(events, "malformed_request_line")
            return
        if not _VERSION.fullmatch(parts[2]):
            self._fail(events, "unsupported_version")
            return
        if len(lines) - 1 > MAX_HEADERS:
            self._fail(events, "too_many_headers")
            return
        headers: dict[str, list[bytes]] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.fullmatch(name):
                # Also catches obs-fold (leading whitespace) and "Host :" forms.
                self._fail(events, "malformed_header")
                return
            headers.setdefault(name.decode("ascii").lower(), []).append(value.strip(b" \t"))
        method = parts[0].decode("ascii")
        target = parts[1].decode("latin-1")
        host_values = headers.get("host", [])
        if len(host_values) > 1:
            self._fail(events, "duplicate_host")
            return
        host: str | None = None
        if host_values:
            host = _host_without_port(host_values[0])
            if host is None:
                self._fail(events, "malformed_host")
                return
        authority: str | None = None
        if method != "CONNECT" and not target.startswith("/") and target != "*":
            authority = _absolute_form_host(target)
            if authority is None:
                self._fail(events, "malformed_target")
                return
        if method == "CONNECT":
            authority = _host_without_port(parts[1])
        framing = self._framing(headers)
        if isinstance(framing, HttpViolation):
            self._state = "error"
            events.append(framing)
            return
        upgrade = "upgrade" in headers
        self.requests += 1
        events.append(
            RequestHead(
                method=method,
                target=target,
                version=parts[2].decode("ascii"),
                host=host,
                authority=authority,
                upgrade=upgrade,
            )
        )
        if method == "CONNECT" or upgrade:
            self._state = "tunnel"
        elif framing == "chunked":
            self._state = "chunk_size"
        elif isinstance(framing, int) and framing > 0:
            self._state, self._remaining = "body", framing
        else:
            self._state = "head"

    @staticmethod
    def _framing(headers: dict[str, list[bytes]]) -> int | str | HttpViolation:
        te = headers.get("transfer-encoding")
        cl = headers.get("content-length")
        if te is not None:
            if cl is not None:
                return HttpViolation("ambiguous_framing")
            codings = [c.strip().lower() for v in te for c in v.split(b",")]
            if codings != [b"chunked"]:
                return HttpViolation("unsupported_transfer_encoding")
            return "chunked"
        if cl is not None:
            if len(cl) != 1 or not cl[0].isdigit() or len(cl[0]) > 18:
                return HttpViolation("bad_content_length")
            return int(cl[0])
        return 0

    def _feed_line(self, view: memoryview, pos: int, events: list[HttpEvent]) -> int:
        """Chunk-size lines, the CRLF after chunk data, and trailer lines."""
        nl = bytes(view[pos:]).find(b"\n")
        if nl < 0:
            self._line += view[pos:]
            if len(self._line) > MAX_CHUNK_LINE:
                self._fail(events, "chunk_line_too_long")
            return len(view)
        self._line += view[pos : pos + nl + 1]
        line = bytes(self._line)
        self._line.clear()
        if len(line) > MAX_CHUNK_LINE or not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            return self._fail(events, "malformed_chunk")
        body = line[:-2]
        if self._state == "chunk_crlf":
            if body:
                return self._fail(events, "malformed_chunk")
            self._state = "chunk_size"
        elif self._state == "chunk_size":
            size_text = body.split(b";", 1)[0].strip(b" \t")
            if not _HEX.fullmatch(size_text):
                return self._fail(events, "malformed_chunk")
            size = int(size_text, 16)
            if size == 0:
                self._state, self._trailer_bytes = "trailers", 0
            else:
                self._state, self._remaining = "chunk_data", size
        else:  # trailers
            self._trailer_bytes += len(line)
            if self._trailer_bytes > MAX_HEAD_BYTES:
                return self._fail(events, "header_too_large")
            if not body:
                self._state = "head"
            elif _FORBIDDEN_IN_HEAD.search(line) or not _TOKEN.fullmatch(body.partition(b":")[0]):
                return self._fail(events, "malformed_chunk")
        return pos + nl + 1


def _host_without_port(raw: bytes | str) -> str | None:
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    if text.startswith("["):
        close = text.find("]")
        rest = text[close + 1 :]
        if close < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return text[: close + 1].lower()
    name, sep, port = text.partition(":")
    if sep and not port.isdigit():
        return None
    return normalize_host(name.encode("latin-1"))


def _absolute_form_host(target: str) -> str | None:
    try:
        parts = urlsplit(target)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    if "@" in parts.netloc:
        return None
    return _host_without_port(parts.netloc)
