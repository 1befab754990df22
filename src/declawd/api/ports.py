"""`/sandboxes/{id}/ports/{port}/...`: HTTP, SSE and WebSocket into a sandbox (§12.6).

Raw ASGI endpoints (not FastAPI handlers): the request body streams to the sandbox while
the response streams back, and the only reader of the client's `receive` is the proxy
itself, which is how a client that goes away is noticed (Starlette's StreamingResponse
would consume the body messages looking for the disconnect).

Who may pass: an API key of the sandbox's team (`X-API-Key` or `Authorization: Bearer`;
another team's sandbox is a plain 404), or, on this route only, the sandbox's traffic
access token in `X-Declaw-Traffic-Token` or `?token=`; a sandbox created with
`allow_public_traffic=false` has no token. Invariant: the sandbox's server never sees one
of our credentials (ports/headers.py), and every proxied response carries the sandbox CSP.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import h11
from fastapi import APIRouter
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import Message, Receive, Scope, Send
from wsproto.events import AcceptConnection

from declawd.api.app import Services
from declawd.api.errors import body_of, headers_of, status_of
from declawd.errors import DeclawdError, Unauthorized, Unreachable
from declawd.node.node import Need
from declawd.ports.headers import (
    TOKEN_HEADER,
    TOKEN_QUERY,
    Forwarding,
    bearer_of,
    masked_host,
    parse_port,
    request_headers,
    response_headers,
    route_prefix,
    upstream_target,
)
from declawd.ports.upstream import (
    HttpUpstream,
    UpstreamBroken,
    connect_in_netns,
)
from declawd.ports.websocket import Rejected, WsUpstream, bridge
from declawd.store import SandboxRecord, TrafficAccess

MISSING_CREDENTIALS = (
    "missing credentials: send an API key (X-API-Key or Authorization: Bearer) or the"
    " sandbox's traffic access token (X-Declaw-Traffic-Token header or token query parameter)"
)


class Connect(Protocol):
    """Opens the connection to `port` inside the sandbox (upstream.connect_in_netns)."""

    def __call__(
        self, netns: str, port: int, addresses: Sequence[tuple[int, str]], *, what: str
    ) -> Awaitable[Any]: ...


@dataclass(frozen=True)
class Admitted:
    """A request allowed through to a sandbox's port."""

    rec: SandboxRecord
    port: int
    access: TrafficAccess | None
    strip_authorization: bool  # Authorization carried one of our API keys

    @property
    def what(self) -> str:
        return f"sandbox {self.rec.sandbox_id}"


def _services(conn: HTTPConnection) -> Services:
    svc: Services = conn.app.state.services
    return svc


def _token_valid(access: TrafficAccess | None, token: str) -> bool:
    if access is None or access.token is None or not access.allow_public_traffic:
        return False
    return hmac.compare_digest(access.token.encode(), token.encode())


async def admit(conn: HTTPConnection) -> Admitted:
    """Authenticate and find the running sandbox (401, 404, 409 while paused/creating)."""
    sandbox_id = conn.path_params["sandbox_id"]
    port = parse_port(conn.path_params["port"])
    svc = _services(conn)
    store, node = svc.store, svc.node
    api_key = conn.headers.get("x-api-key", "")
    bearer = bearer_of(conn.headers.get("authorization", ""))
    team_id: str | None = None
    strip_authorization = False
    if bearer:
        found = await asyncio.to_thread(store.authenticate, bearer)
        if found:
            team_id, strip_authorization = found["team_id"], True
    if api_key:
        found = await asyncio.to_thread(store.authenticate, api_key)
        if not found:
            raise Unauthorized("invalid or revoked API key")
        team_id = found["team_id"]
    if team_id is not None:
        rec = await node.lookup(team_id, sandbox_id, Need.RUNNING)
        access = await asyncio.to_thread(store.get_traffic, sandbox_id)
        return Admitted(rec, port, access, strip_authorization)
    token = conn.headers.get(TOKEN_HEADER) or conn.query_params.get(TOKEN_QUERY)
    if not token:
        # A bearer that is not one of our keys may be the app's own: with a token it passes.
        raise Unauthorized("invalid or revoked API key" if bearer else MISSING_CREDENTIALS)
    access = await asyncio.to_thread(store.get_traffic, sandbox_id)
    owner = await asyncio.to_thread(store.get_sandbox, sandbox_id)
    if owner is None or not _token_valid(access, token):
        # The same answer whether the sandbox exists or not: a token reveals nothing.
        raise Unauthorized(
            f"traffic access token not valid for sandbox '{sandbox_id}' (a sandbox created"
            " with allow_public_traffic=false takes an API key only)"
        )
    rec = await node.lookup(owner.team_id, sandbox_id, Need.RUNNING)
    return Admitted(rec, port, access, strip_authorization)


def forwarding(conn: HTTPConnection, admitted: Admitted) -> Forwarding:
    scheme = {"ws": "http", "wss": "https"}.get(conn.url.scheme, conn.url.scheme)
    host = conn.headers.get("host") or conn.url.netloc
    mask = admitted.access.mask_request_host if admitted.access else None
    return Forwarding(
        prefix=route_prefix(admitted.rec.sandbox_id, admitted.port),
        scheme=scheme,
        host=host,
        client=conn.client.host if conn.client else None,
        upstream_host=masked_host(mask, admitted.port) if mask else host,
        strip_authorization=admitted.strip_authorization,
    )


def _target(scope: Scope) -> bytes:
    raw_path = scope.get("raw_path") or quote(scope["path"]).encode()
    return upstream_target(raw_path, scope.get("query_string", b""))


async def _open(connect: Connect, conn: HTTPConnection) -> tuple[Admitted, Any]:
    admitted = await admit(conn)
    # Here: `connect` in the sandbox's netns; in cluster mode: a tunnel to its node.
    sock = await _services(conn).node.connect_port(admitted.rec, admitted.port, connect)
    return admitted, sock


async def _error_response(scope: Scope, receive: Receive, send: Send, exc: DeclawdError) -> None:
    response = JSONResponse(body_of(exc), status_code=status_of(exc), headers=headers_of(exc))
    await response(scope, receive, send)


class PortsHttp:
    """The HTTP side: one upstream connection per request, streamed both ways."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn = HTTPConnection(scope)
        try:
            admitted, sock = await _open(self._connect, conn)
            up = await HttpUpstream.over(sock)
        except DeclawdError as exc:
            await _error_response(scope, receive, send, exc)
            return
        await proxy_http(scope, receive, send, up, forwarding(conn, admitted), admitted)


def _framing(headers: Sequence[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], bool]:
    """How the request body is framed toward the sandbox, and whether there is one."""
    length = next((v for n, v in headers if n.lower() == b"content-length"), None)
    if any(n.lower() == b"transfer-encoding" for n, _ in headers):
        return [(b"transfer-encoding", b"chunked")], True
    if length is not None:
        return [(b"content-length", length.strip())], length.strip() not in (b"", b"0")
    return [], False


async def proxy_http(
    scope: Scope,
    receive: Receive,
    send: Send,
    up: HttpUpstream,
    fwd: Forwarding,
    admitted: Admitted,
) -> None:
    """Send the client's request to the sandbox and its response back, both streamed; stop
    as soon as the client goes away. Errors before the response started answer as JSON
    (502 for a server that does not speak HTTP); after, the connection is cut."""
    started = False
    framing, has_body = _framing(scope["headers"])

    async def pump() -> None:
        """Client body → sandbox; then wait for the client's disconnect."""
        forwarding_body = has_body
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            if message["type"] != "http.request" or not forwarding_body:
                continue
            try:
                chunk = message.get("body", b"")
                if chunk:
                    await up.send_data(chunk)
                if not message.get("more_body", False):
                    forwarding_body = False
                    await up.end_request()
            except (OSError, h11.LocalProtocolError):
                forwarding_body = False  # the server stopped reading: it may answer anyway

    async def send_checked(message: Message) -> None:
        nonlocal started
        started = True
        await send(message)

    async def respond() -> None:
        try:
            event = await up.next_event()
        except (h11.RemoteProtocolError, OSError) as exc:
            raise Unreachable(
                f"the server on port {admitted.port} in {admitted.what} did not answer in"
                f" HTTP/1.1: {exc}"
            ) from exc
        if not isinstance(event, h11.Response):
            raise Unreachable(
                f"the server on port {admitted.port} in {admitted.what} closed the connection"
                " without answering"
            )
        await send_checked(
            {
                "type": "http.response.start",
                "status": event.status_code,
                "headers": response_headers(event.headers, fwd),
            }
        )
        while True:
            try:
                event = await up.next_event()
            except (h11.RemoteProtocolError, OSError) as exc:
                raise UpstreamBroken(f"{admitted.what}, port {admitted.port}: {exc}") from exc
            if isinstance(event, h11.Data):
                await send({"type": "http.response.body", "body": event.data, "more_body": True})
            elif isinstance(event, h11.EndOfMessage):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            else:
                raise UpstreamBroken(f"{admitted.what}, port {admitted.port}: {event!r}")

    try:
        await up.send_request(
            scope["method"].encode(),
            _target(scope),
            [*request_headers(scope["headers"], fwd), *framing],
        )
        if not has_body:
            await up.end_request()
    except (OSError, h11.LocalProtocolError) as exc:
        await up.close()
        bad = Unreachable(f"port {admitted.port} in {admitted.what}: {exc}")
        await _error_response(scope, receive, send, bad)
        return
    pumping = asyncio.create_task(pump())
    responding = asyncio.create_task(respond())
    try:
        done, _ = await asyncio.wait({pumping, responding}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (pumping, responding):
            task.cancel()
        await asyncio.gather(pumping, responding, return_exceptions=True)
        await up.close()
    if responding in done:
        failure = responding.exception()
        if isinstance(failure, DeclawdError) and not started:
            await _error_response(scope, receive, send, failure)
        elif failure is not None:
            raise failure
    else:
        failure = pumping.exception()
        if failure is not None:
            raise failure
    # else: the client went away; the sandbox's response was dropped with the connection.


class PortsWebSocket:
    """The WebSocket side: the upstream handshake first, then the client is accepted."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        first = await receive()
        if first["type"] != "websocket.connect":
            return
        conn = HTTPConnection(scope)
        try:
            admitted, sock = await _open(self._connect, conn)
            up = await WsUpstream.over(sock)
        except DeclawdError as exc:
            await _deny_error(scope, send, exc)
            return
        fwd = forwarding(conn, admitted)
        try:
            try:
                answer = await up.handshake(
                    fwd.upstream_host,
                    _target(scope).decode("latin-1"),
                    scope.get("subprotocols") or [],
                    request_headers(scope["headers"], fwd, websocket=True),
                    what=f"the server on port {admitted.port} in {admitted.what}",
                )
            except (OSError, DeclawdError) as exc:
                bad = exc if isinstance(exc, DeclawdError) else Unreachable(str(exc))
                await _deny_error(scope, send, bad)
                return
            if isinstance(answer, Rejected) and answer.status < 300:
                # Not a refusal the client could act on: the server is no WebSocket server.
                bad = Unreachable(
                    f"the server on port {admitted.port} in {admitted.what} answered the"
                    f" WebSocket upgrade with HTTP {answer.status}"
                )
                await _deny_error(scope, send, bad)
                return
            if isinstance(answer, Rejected):
                headers = response_headers(answer.headers, fwd)
                await _deny(scope, send, answer.status, headers, answer.body)
                return
            await send(_accept(answer, fwd))
            await bridge(receive, send, up)
        finally:
            await up.close()


def _accept(answer: AcceptConnection, fwd: Forwarding) -> Message:
    headers = [
        (name, value)
        for name, value in response_headers(answer.extra_headers, fwd)
        if not name.startswith(b"sec-websocket-")
    ]
    return {"type": "websocket.accept", "subprotocol": answer.subprotocol, "headers": headers}


async def _deny(
    scope: Scope, send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    """Refuse the upgrade with an HTTP response where the server can send one (uvicorn
    can), else close with 4000 + status (the 4xxx codes are the application's)."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 4000 + status, "reason": ""})
        return
    kept = [(n, v) for n, v in headers if n != b"content-length"]
    kept.append((b"content-length", str(len(body)).encode()))
    with contextlib.suppress(OSError, RuntimeError):
        await send({"type": "websocket.http.response.start", "status": status, "headers": kept})
        await send({"type": "websocket.http.response.body", "body": body})


async def _deny_error(scope: Scope, send: Send, exc: DeclawdError) -> None:
    body = JSONResponse(body_of(exc)).body
    headers = [(b"content-type", b"application/json"), *_encoded(headers_of(exc))]
    await _deny(scope, send, status_of(exc), headers, body)


def _encoded(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in headers.items()]


def ports_router(connect: Connect = connect_in_netns) -> APIRouter:
    """The routes; `connect` opens the connection in the sandbox (tests pass their own)."""
    router = APIRouter()
    http, ws = PortsHttp(connect), PortsWebSocket(connect)
    base = "/sandboxes/{sandbox_id}/ports/{port}"
    for path in (base, base + "/{path:path}"):
        router.routes.append(Route(path, http, include_in_schema=False))
        router.routes.append(WebSocketRoute(path, ws))
    return router


router = ports_router()

__all__ = ["Connect", "ports_router", "router"]
