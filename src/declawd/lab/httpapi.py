"""The HTTP API every lab host answers, over HTTP/1.1 and HTTP/2 alike.

A parsed request in, a description of the response out: the info document, `/bytes/<n>`,
`/echo`, `/anything` (the request echoed as JSON), `/status/<code>`, `/stream/<n>`,
`/sse/<n>` and the OpenAI-compatible `/v1/...` (`openai_api`). Invariant: `route` does no
I/O; a streamed answer is a tuple of pieces the protocol driver flushes one at a time,
`pace` seconds apart. `HttpService` adds the one side effect: the request log entry, on disk
before the response is written.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import gzip
import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import brotli

from declawd.lab import judge_api, openai_api
from declawd.lab.config import LabHost
from declawd.lab.requestlog import RequestLog

MAX_BODY = 64 * 1024 * 1024
MAX_BYTES = 1 << 40
MAX_PIECES = 1000
LOGGED_BODY = 4096
DEFAULT_PACE_MS = 10
_BYTES_PATH = re.compile(r"^/bytes/(\d{1,13})$")
_STATUS_PATH = re.compile(r"^/status/(\d{3})$")
_STREAM_PATH = re.compile(r"^/(stream|sse)/(\d{1,6})$")


class HttpError(Exception):
    """A request the API refuses; the driver answers `status` with a JSON error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class HttpRequest:
    """One request as either protocol delivers it; header names are lower case."""

    method: str
    target: str
    version: str  # "HTTP/1.1", "HTTP/1.0" or "HTTP/2"
    headers: tuple[tuple[str, str], ...] = ()
    authority: str | None = None  # HTTP/2 `:authority`; HTTP/1 has the Host header

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers if k == wanted), None)

    @property
    def host(self) -> str | None:
        return self.authority if self.authority is not None else self.header("host")

    @property
    def path(self) -> str:
        return self._origin_form().partition("?")[0]

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(self._origin_form().partition("?")[2], keep_blank_values=True)

    def _origin_form(self) -> str:
        """The target without scheme and authority when sent in absolute form."""
        if not self.target.lower().startswith(("http://", "https://")):
            return self.target
        parts = urlsplit(self.target)
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


@dataclass(frozen=True)
class HttpResponse:
    """What to send. Exactly one body form: `body`, `stream_bytes` zeros, or `pieces`."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    stream_bytes: int = 0
    pieces: tuple[bytes, ...] = ()  # streamed: no Content-Length, each piece flushed alone
    pace: float = 0.0  # seconds between two pieces
    close: bool = False  # HTTP/1: close the connection after this response

    @property
    def streamed(self) -> bool:
        return bool(self.pieces)

    def header_fields(self) -> list[tuple[str, str]]:
        """Content-Type, the extra headers and, unless streamed, Content-Length."""
        fields = [("content-type", self.content_type), *self.headers]
        if not self.streamed and self.status not in (204, 304):
            fields.append(("content-length", str(self.stream_bytes or len(self.body))))
        return fields


def json_response(status: int, doc: object, **kw: Any) -> HttpResponse:
    return HttpResponse(status, json.dumps(doc).encode(), **kw)


def error_response(status: int, message: str, *, close: bool = False) -> HttpResponse:
    return json_response(status, {"error": message}, close=close)


# The lab's injection judge (an OpenAI-compatible endpoint with its own, marker-based rule).
JUDGE_HOST = "judge.lab"
MAX_PAGE = 64 * 1024


def route(
    request: HttpRequest, body: bytes, *, host: LabHost | None, tls: bool, client: str
) -> HttpResponse:
    """The lab's whole HTTP API; anything unknown gets the info document."""
    try:
        return _route(request, body, host=host, tls=tls, client=client)
    except HttpError as exc:
        return error_response(exc.status, str(exc))


def _route(
    request: HttpRequest, body: bytes, *, host: LabHost | None, tls: bool, client: str
) -> HttpResponse:
    path = request.path
    if request.method == "CONNECT":
        return error_response(405, "a lab host is no proxy", close=True)
    if m := _BYTES_PATH.match(path):
        n = int(m.group(1))
        if n > MAX_BYTES:
            raise HttpError(400, "n too large")
        return HttpResponse(200, content_type="application/octet-stream", stream_bytes=n)
    if path == "/page":
        return page(request)
    if path == "/echo":
        return HttpResponse(200, body, content_type="application/octet-stream")
    if path == "/anything" or path.startswith("/anything/"):
        return anything(request, body, host=host, tls=tls, client=client)
    if m := _STATUS_PATH.match(path):
        code = int(m.group(1))
        if not 200 <= code <= 599:
            raise HttpError(400, "status must be 200-599")
        if code in (204, 304):
            return HttpResponse(code)  # these may carry no body
        return json_response(code, {"status": code})
    if m := _STREAM_PATH.match(path):
        return streamed(m.group(1), int(m.group(2)), request)
    if path.startswith("/v1/") and host is not None and host.name == JUDGE_HOST:
        verdict = judge_api.route(request.method, path, body)
        if verdict is not None:
            return json_response(verdict.status, verdict.doc)
    if path.startswith("/v1/"):
        answer = openai_api.route(request.method, path, body, now=time.time())
        if answer is not None and answer.events:
            return HttpResponse(
                answer.status,
                content_type="text/event-stream",
                headers=(("cache-control", "no-cache"),),
                pieces=answer.events,
                pace=DEFAULT_PACE_MS / 1000,
            )
        if answer is not None:
            return json_response(answer.status, answer.doc)
    info = {
        "host": request.host,
        "server": host.name if host else None,
        "path": path,
        "method": request.method,
        "tls": tls,
        "client": client,
    }
    return json_response(200, info)


def page(request: HttpRequest) -> HttpResponse:
    """`/page?b64=<base64>`: an HTML page whose body holds the decoded text (a "fetched
    page" a test chooses without the text being in the request in the clear)."""
    raw = (request.query.get("b64") or [""])[0]
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise HttpError(400, "b64: not base64 of UTF-8 text") from None
    if len(text) > MAX_PAGE:
        raise HttpError(400, "b64: page too large")
    html = f"<!doctype html><html><body><article>{text}</article></body></html>"
    return HttpResponse(200, html.encode(), content_type="text/html; charset=utf-8")


def header_map(headers: Iterable[tuple[str, str]]) -> dict[str, str | list[str]]:
    """{lower-name: value}, or a list of values for a header sent more than once."""
    out: dict[str, str | list[str]] = {}
    for name, value in headers:
        if name not in out:
            out[name] = value
        else:
            prev = out[name]
            out[name] = [*prev, value] if isinstance(prev, list) else [prev, value]
    return out


def body_fields(body: bytes) -> dict[str, Any]:
    """{"body": text, "body_base64": False}, or base64 with True when not UTF-8."""
    try:
        return {"body": body.decode("utf-8"), "body_base64": False}
    except UnicodeDecodeError:
        return {"body": base64.b64encode(body).decode(), "body_base64": True}


def anything(
    request: HttpRequest, body: bytes, *, host: LabHost | None, tls: bool, client: str
) -> HttpResponse:
    """The request echoed as JSON (httpbin's `/anything`); `?gzip=1` / `?br=1` compress it."""
    query = request.query
    fields = body_fields(body)
    parsed: Any = None
    if body and not fields["body_base64"]:
        try:
            parsed = json.loads(fields["body"])
        except json.JSONDecodeError:
            parsed = None
    doc = {
        "method": request.method,
        "path": request.path,
        "query": query,
        "headers": header_map(request.headers),
        **fields,
        "json": parsed,
        "host": request.host,
        "tls": tls,
        "http_version": request.version,
        "server": host.name if host else None,
        "client": client,
    }
    data = json.dumps(doc).encode()
    wants = [enc for enc in ("gzip", "br") if _flag(query, enc)]
    if len(wants) > 1:
        raise HttpError(400, "choose one of gzip=1 and br=1")
    if wants == ["gzip"]:
        return HttpResponse(
            200, gzip.compress(data, mtime=0), headers=(("content-encoding", "gzip"),)
        )
    if wants == ["br"]:
        return HttpResponse(200, brotli.compress(data), headers=(("content-encoding", "br"),))
    return HttpResponse(200, data)


def streamed(kind: str, n: int, request: HttpRequest) -> HttpResponse:
    """`/stream/<n>`: n JSON lines; `/sse/<n>`: n SSE events; each its own flushed piece.
    `?text=` sets the text each piece carries, `?delay_ms=` (0-2000) the pause between."""
    if not 1 <= n <= MAX_PIECES:
        raise HttpError(400, f"n must be 1-{MAX_PIECES}")
    query = request.query
    text = query.get("text", [f"lab {kind} piece"])[-1]
    delay = _int(query, "delay_ms", DEFAULT_PACE_MS, 0, 2000)
    docs = [json.dumps({"id": i, "text": text}) for i in range(n)]
    if kind == "stream":
        pieces = tuple(f"{d}\n".encode() for d in docs)
        return HttpResponse(
            200, content_type="application/x-ndjson", pieces=pieces, pace=delay / 1000
        )
    events = tuple(f"id: {i}\nevent: message\ndata: {d}\n\n".encode() for i, d in enumerate(docs))
    return HttpResponse(
        200,
        content_type="text/event-stream",
        headers=(("cache-control", "no-cache"),),
        pieces=events,
        pace=delay / 1000,
    )


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["0"])[-1].lower() in ("1", "true", "yes")


def _int(query: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name, [str(default)])[-1]
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise HttpError(400, f"{name} must be an integer {low}-{high}")
    return int(raw)


def request_entry(
    request: HttpRequest,
    body: bytes | None,
    *,
    host: str,
    client: str,
    tls: bool,
    status: int,
    at: float,
) -> dict[str, Any]:
    """The request log line: what reached the host. `body` None: refused as too large."""
    entry: dict[str, Any] = {
        "time": at,
        "host": host,
        "authority": request.host,
        "client": client,
        "tls": tls,
        "http_version": request.version,
        "method": request.method,
        "path": request.path,
        "target": request.target,
        "headers": header_map(request.headers),
        "status": status,
    }
    if body is None:
        entry.update(
            body_size=None, body_sha256=None, body_truncated=False, body="", body_base64=False
        )
        return entry
    head = body[:LOGGED_BODY]
    try:
        # a cut multi-byte character at the end is held back, not an error
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        fields: dict[str, Any] = {"body": text, "body_base64": False}
    except UnicodeDecodeError:
        fields = {"body": base64.b64encode(head).decode(), "body_base64": True}
    entry.update(
        body_size=len(body),
        body_sha256=hashlib.sha256(body).hexdigest(),
        body_truncated=len(body) > LOGGED_BODY,
        **fields,
    )
    return entry


Pace = Callable[[float], Awaitable[None]]


@dataclass
class HttpService:
    """What every HTTP connection of one lab host shares: the host, its request log and the
    pause between streamed pieces (tests substitute a gate for `asyncio.sleep`)."""

    host: LabHost | None
    log: RequestLog | None = None
    pace: Pace = asyncio.sleep

    def respond(self, request: HttpRequest, body: bytes, *, tls: bool, client: str) -> HttpResponse:
        response = route(request, body, host=self.host, tls=tls, client=client)
        self._record(request, body, tls=tls, client=client, status=response.status)
        return response

    def too_large(self, request: HttpRequest, *, tls: bool, client: str) -> HttpResponse:
        self._record(request, None, tls=tls, client=client, status=413)
        return error_response(413, f"body larger than {MAX_BODY} bytes", close=True)

    def _record(
        self, request: HttpRequest, body: bytes | None, *, tls: bool, client: str, status: int
    ) -> None:
        if self.log is None or self.host is None:
            return
        entry = request_entry(
            request,
            body,
            host=self.host.name,
            client=client,
            tls=tls,
            status=status,
            at=time.time(),
        )
        self.log.record(self.host.name, entry)
