"""Serving the internal APIs over mutual TLS, with the peer's identity in each request.

uvicorn verifies the client certificate against the cluster CA (`ssl_cert_reqs`) but does
not put it in the ASGI scope; `PeerH11Protocol` copies the verified certificate's common
name into the connection's state, so a route reads it as `request.state.peer` (empty for a
client without one, where the server allows that: the control plane's join route).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from uvicorn.protocols.http.h11_impl import H11Protocol

from declawd.cluster.ca import Identity
from declawd.errors import Forbidden


def peer_common_name(conn: asyncio.BaseTransport | asyncio.StreamWriter) -> str:
    """The common name of the verified client certificate of a TLS connection ('' without one)."""
    cert: Any = conn.get_extra_info("peercert") or {}
    peer = ""
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                peer = str(value)
    return peer


class PeerH11Protocol(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Per connection: every request on it sees the same verified peer.
        self.app_state = {**self.app_state, "peer": peer_common_name(transport)}


def peer_of(request: Request) -> str:
    return str(getattr(request.state, "peer", "") or "")


def require_peer(request: Request, *allowed: str) -> str:
    """The verified peer's common name, which must be one of `allowed` (any when empty)."""
    peer = peer_of(request)
    if not peer or (allowed and peer not in allowed):
        raise Forbidden(
            f"this internal route does not take calls from '{peer or 'no certificate'}'"
        )
    return peer


def tls_server(
    app: FastAPI, identity: Identity, host: str, port: int, *, require_client: bool
) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=PeerH11Protocol,
        ssl_certfile=str(identity.cert),
        ssl_keyfile=str(identity.key),
        ssl_ca_certs=str(identity.ca),
        ssl_cert_reqs=ssl.CERT_REQUIRED if require_client else ssl.CERT_OPTIONAL,
        log_level="warning",
        timeout_graceful_shutdown=3,
        lifespan="off",
    )
    return _QuietServer(config)


class _QuietServer(uvicorn.Server):
    """Leaves signals to the process that runs it (the API server, or the agent)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def reload_cert(server: uvicorn.Server, identity: Identity) -> None:
    """Serve a renewed certificate to new connections without a restart."""
    ctx = server.config.ssl
    if ctx is not None:
        ctx.load_cert_chain(identity.cert, identity.key)
