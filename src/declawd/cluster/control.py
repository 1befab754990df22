"""The control plane's internal API (port 8443): join, renewal, registration, heartbeat,
and the vault values a node's gateway injects (`vault/secret`, docs/cluster.md).

TLS with a server certificate of the cluster CA; client certificates are asked for and
verified, and every route but `ca` and `join` needs one (the node's id is its common
name). `join` is authenticated by a single-use join token instead: the node has no
certificate yet.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from declawd.cluster import ca as cca
from declawd.cluster.tls import require_peer
from declawd.cluster.wire import error_body
from declawd.config import Settings
from declawd.errors import DeclawdError, Forbidden, InvalidInput, NotFound
from declawd.store import Store
from declawd.threads import Lane
from declawd.vault.crypto import MasterKey, master_key_path
from declawd.vault.store import VaultRecords

API = "/internal/v1"


def sign_node_csr(
    ca: cca.ClusterCA, csr_pem: str, node_id: str, names: list[str], hours: float
) -> str:
    """The PEM certificate of node `node_id` for the key of `csr_pem` (pure)."""
    if not node_id or len(node_id) > 64 or not all(c.isalnum() or c in "-_." for c in node_id):
        raise InvalidInput("node_id", "letters, digits, '-', '_' and '.', at most 64")
    csr = cca.load_csr(csr_pem)
    cert = ca.sign(
        csr,
        common_name=node_id,
        names=[str(n) for n in names][:8],
        lifetime=datetime.timedelta(hours=hours),
    )
    return cca.pem(cert).decode()


def control_app(settings: Settings, store: Store, ca: cca.ClusterCA) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    beats = Lane("heartbeats", 2)  # never queued behind the shared pool's slow calls

    @app.exception_handler(DeclawdError)
    async def _domain_error(request: Request, exc: DeclawdError) -> JSONResponse:
        from declawd.api.errors import status_of

        return JSONResponse(error_body(exc), status_code=status_of(exc))

    def node_of(request: Request) -> str:
        peer = require_peer(request)
        if peer == cca.CONTROL_PLANE:
            raise Forbidden("the control plane's certificate is not a node's")
        return peer

    @app.get(f"{API}/ca")
    async def ca_cert() -> Response:
        return Response(ca.cert_pem, media_type="application/x-pem-file")

    @app.post(f"{API}/join")
    async def join(request: Request) -> Any:
        body = await request.json()
        node_id = str(body.get("node_id") or "")
        if node_id == cca.CONTROL_PLANE:
            raise InvalidInput("node_id", f"'{cca.CONTROL_PLANE}' is reserved")
        cert = sign_node_csr(
            ca, str(body.get("csr") or ""), node_id, list(body.get("names") or []),
            settings.node_cert_hours,
        )  # fmt: skip
        if not await asyncio.to_thread(store.use_join_token, str(body.get("token") or ""), node_id):
            raise Forbidden("join token unknown, expired or already used")
        return {"cert": cert, "ca": ca.cert_pem.decode()}

    @app.post(f"{API}/renew")
    async def renew(request: Request) -> Any:
        node_id = node_of(request)
        body = await request.json()
        cert = sign_node_csr(
            ca, str(body.get("csr") or ""), node_id, list(body.get("names") or []),
            settings.node_cert_hours,
        )  # fmt: skip
        return {"cert": cert}

    @app.post(f"{API}/register")
    async def register(request: Request) -> Any:
        node_id = node_of(request)
        body = await request.json()
        node = await asyncio.to_thread(
            store.register_node, node_id, str(body["name"]), str(body["url"])
        )
        return {"state": node.state}

    @app.post(f"{API}/heartbeat")
    async def heartbeat(request: Request) -> Any:
        node_id = node_of(request)
        body = await request.json()
        node = await beats.run(store.heartbeat_node, node_id, dict(body.get("capacity") or {}))
        if node is None:
            raise NotFound(f"node '{node_id}' is not registered")
        return {"state": node.state}

    @app.post(f"{API}/drain")
    async def drain(request: Request) -> Any:
        node_id = node_of(request)
        if not await asyncio.to_thread(store.set_node_state, node_id, "draining"):
            raise NotFound(f"node '{node_id}' is not registered")
        return {"state": "draining"}

    vault = VaultRecords.of(store)
    keys: list[MasterKey] = []  # loaded on first need: a cluster may have no secret yet

    def master_key() -> MasterKey:
        if not keys:
            keys.append(MasterKey.load(master_key_path(settings.keys_dir)))
        return keys[0]

    @app.post(f"{API}/vault/secret")
    async def vault_secret(request: Request) -> Any:
        """A secret's current value for the calling node's gateway: only if it is bound to a
        live sandbox on that node (else one 404 for every reason). A caller that sends the
        version it holds gets `unchanged` without the value while it is current."""
        node_id = node_of(request)
        body = await request.json()
        secret_id = str(body.get("secret_id") or "")
        held = body.get("version")
        row = await asyncio.to_thread(vault.value_for_node, secret_id, node_id)
        if row is None:
            raise NotFound("no such secret for this node")
        version, blob = row
        if type(held) is int and held == version:
            return {"version": version, "unchanged": True}
        value = await asyncio.to_thread(lambda: master_key().decrypt(blob, secret_id).reveal())
        return {"version": version, "value": value}

    return app
