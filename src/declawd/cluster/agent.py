"""The node agent (`declawd node`): one machine's `Node` behind an mTLS internal API.

Start-up, in order: an identity (a key made here, 0600, and a certificate the control
plane signs: on the first start with the join token, later over mTLS), the `Node` on the
shared store (which reconciles: what the store no longer says is live here is killed),
the internal API on `--listen` (client certificates required, and only the control
plane's), then registration as `up`. From then on it heartbeats its capacity, renews its
certificate once 2/3 of its lifetime has passed, and, when the control plane answers that
it was marked down, reconciles again before it registers and takes work. Its gateway
asks it for vault values on a unix socket (`cluster/secrets.py`); it has no vault key.
Its gateway's audit events arrive in a node-local spool that it ships to the store
(`cluster/auditspool.py`): the gateway's netns need not reach the store.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import signal
import socket
import ssl
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from declawd.cluster import ca as cca
from declawd.cluster.auditspool import AuditShipper, audit_spool_path
from declawd.cluster.secrets import SecretBroker, serve_secrets, vault_socket_path
from declawd.cluster.tls import reload_cert, require_peer, tls_server
from declawd.cluster.tunnel import serve_tunnels
from declawd.cluster.wire import (
    error_body,
    policy_from_wire,
    sandbox_id_from_wire,
    vault_from_wire,
    volume_copies_from_wire,
    volume_mounts_from_wire,
)
from declawd.config import Settings
from declawd.errors import (
    Conflict,
    DeclawdError,
    InvalidInput,
    NotFound,
    Unavailable,
    Unreachable,
)
from declawd.host.unixsock import pinned
from declawd.node.create import CreateRequest
from declawd.node.node import Node
from declawd.node.reconcile import reconcile
from declawd.ports.upstream import connect_in_netns
from declawd.store import SandboxRecord, SandboxState, Store
from declawd.templates.service import TemplateService
from declawd.threads import Lane
from declawd.volumes.attach import copies_on_node, mounts_on_node

log = logging.getLogger(__name__)

API = "/internal/v1"
BUILTINS = ["base", "python"]


# Joining ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class JoinToken:
    secret: str
    ca_pin: str

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        secret, _, pin = text.strip().partition(".")
        if not secret or len(pin) != 64:
            raise InvalidInput("join token", "not a token `declawd cluster join-token` printed")
        return cls(secret, pin)


def node_identity(settings: Settings) -> cca.Identity:
    d = settings.node_tls_dir
    return cca.Identity(d / "node.crt", d / "node.key", d / "ca.crt")


def _names(settings: Settings) -> list[str]:
    return [n for n in (settings.node_name, settings.node_address) if n]


async def join(settings: Settings, control_plane: str, token: JoinToken) -> cca.Identity:
    """First start: trust the CA the control plane shows only if it is the token's, then
    trade the token and a CSR for a certificate."""
    ident = node_identity(settings)
    async with httpx.AsyncClient(verify=False, timeout=10) as plain:  # checked against the pin
        resp = await plain.get(f"{control_plane}{API}/ca")
        resp.raise_for_status()
    ca_pem = resp.content
    if cca.ca_pin(ca_pem) != token.ca_pin:
        raise Unreachable(f"{control_plane} shows a cluster CA that is not the join token's")
    ident.ca.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    ident.ca.write_bytes(ca_pem)
    key = cca.new_key()
    csr = cca.make_csr(key, settings.node_id)
    async with httpx.AsyncClient(verify=_ca_only(ident.ca), timeout=10) as client:
        resp = await client.post(
            f"{control_plane}{API}/join",
            json={
                "token": token.secret,
                "node_id": settings.node_id,
                "names": _names(settings),
                "csr": csr.public_bytes(cca.serialization.Encoding.PEM).decode(),
            },
        )
    if resp.status_code != 200:
        raise Unreachable(f"join refused by {control_plane}: {resp.text[:300]}")
    cca.write_private(ident.key, cca.key_pem(key))
    ident.cert.write_text(resp.json()["cert"])
    return ident


def _ca_only(ca_file: Path) -> Any:
    import ssl

    return ssl.create_default_context(cafile=str(ca_file))


async def renew(settings: Settings, control_plane: str, ident: cca.Identity) -> None:
    """A new key and certificate over mTLS with the current one."""
    key = cca.new_key()
    csr = cca.make_csr(key, settings.node_id)
    async with httpx.AsyncClient(verify=ident.client_context(), timeout=10) as client:
        resp = await client.post(
            f"{control_plane}{API}/renew",
            json={
                "names": _names(settings),
                "csr": csr.public_bytes(cca.serialization.Encoding.PEM).decode(),
            },
        )
    if resp.status_code != 200:
        raise Unreachable(f"renewal refused by {control_plane}: {resp.text[:300]}")
    cca.write_private(ident.key.with_suffix(".key.new"), cca.key_pem(key))
    ident.cert.with_suffix(".crt.new").write_text(resp.json()["cert"])
    os.replace(ident.key.with_suffix(".key.new"), ident.key)
    os.replace(ident.cert.with_suffix(".crt.new"), ident.cert)


def cert_renew_at(ident: cca.Identity) -> datetime.datetime | None:
    if not ident.cert.exists():
        return None
    return cca.renew_at(x509.load_pem_x509_certificate(ident.cert.read_bytes()))


# Capacity --------------------------------------------------------------------------------
def free_memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def capacity_of(
    node: Node, store: Store, settings: Settings, templates: list[str]
) -> dict[str, Any]:
    """What a heartbeat reports; `templates` is the node's `TemplateService.present` (the
    built-ins, then every team template built or made local here), read as it is now."""
    live = [r for r in store.list_live_sandboxes(settings.node_id) if not r.pooled]
    return {
        "free_memory_bytes": free_memory_bytes(),
        "sandboxes": len(live),
        "pools": node.pool_status(),
        "templates": list(templates),
    }


# The internal API ------------------------------------------------------------------------
def internal_app(node: Node, templates: TemplateService, settings: Settings) -> FastAPI:
    """Routes mirroring the `Node` methods the API needs, for the control plane only."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    store = node.store

    @app.exception_handler(DeclawdError)
    async def _domain_error(request: Request, exc: DeclawdError) -> JSONResponse:
        from declawd.api.errors import status_of

        return JSONResponse(error_body(exc), status_code=status_of(exc))

    @app.middleware("http")
    async def _only_control_plane(request: Request, call_next: Any) -> Response:
        try:
            require_peer(request, cca.CONTROL_PLANE)
        except DeclawdError as exc:
            return JSONResponse(error_body(exc), status_code=403)
        response: Response = await call_next(request)
        return response

    async def own(sandbox_id: str) -> SandboxRecord:
        rec = await asyncio.to_thread(store.get_sandbox, sandbox_id)
        if rec is None or rec.node_id != settings.node_id:
            raise NotFound(f"sandbox '{sandbox_id}' is not on node {settings.node_name}")
        return rec

    @app.get(f"{API}/health")
    async def health() -> Any:
        return {"ok": True, "gateway": await node.gateway_healthy()}

    @app.post(f"{API}/sandboxes")
    async def create(request: Request) -> Any:
        body = await request.json()
        tpl = await asyncio.to_thread(templates.resolve, body["team_id"], body["template_id"])
        volumes = volume_mounts_from_wire(body.get("volumes"))
        copied = volume_copies_from_wire(body.get("copies"))
        sandbox_id = sandbox_id_from_wire(body.get("sandbox_id"))
        if sandbox_id is not None and (
            await asyncio.to_thread(store.get_sandbox, sandbox_id) is not None
        ):
            raise Conflict(f"sandbox '{sandbox_id}' exists already")  # a create, not a restore
        # Live volumes come as volume ids: their sources are this host's paths.
        mounts = await asyncio.to_thread(
            mounts_on_node, settings, store, node.parts.blobs, body["team_id"], volumes
        )
        copies = await asyncio.to_thread(
            copies_on_node, store, node.parts.blobs, body["team_id"], copied
        )
        req = CreateRequest(
            team_id=body["team_id"],
            template=tpl,
            timeout=int(body["timeout"]),
            metadata=dict(body.get("metadata") or {}),
            envs=dict(body.get("envs") or {}),
            policy=policy_from_wire(body.get("network")),
            security=body.get("security"),
            runtime=body.get("runtime"),
            lifecycle=dict(body.get("lifecycle") or {}),
            vault=vault_from_wire(body.get("vault") or []),
            mounts=mounts,
            copies=copies,
            sandbox_id=sandbox_id,
        )
        rec = await node.create(req)
        return {"sandbox_id": rec.sandbox_id}

    @app.post(API + "/sandboxes/{sandbox_id}/kill")
    async def kill(sandbox_id: str, request: Request) -> Any:
        await own(sandbox_id)
        body = await request.json()
        return {"killed": await node.kill(sandbox_id, wait=bool(body.get("wait", True)))}

    @app.post(API + "/sandboxes/{sandbox_id}/pause")
    async def pause(sandbox_id: str) -> Any:
        rec = await node.pause(await own(sandbox_id))
        return {"sandbox_id": rec.sandbox_id}

    @app.post(API + "/sandboxes/{sandbox_id}/resume")
    async def resume(sandbox_id: str, request: Request) -> Any:
        body = await request.json()
        rec = await node.resume(
            await own(sandbox_id), at_least_s=float(body.get("at_least_s") or 0)
        )
        return {"sandbox_id": rec.sandbox_id}

    @app.post(API + "/sandboxes/{sandbox_id}/snapshots")
    async def snapshot(sandbox_id: str, request: Request) -> Any:
        body = await request.json()
        snap = await node.snapshot(await own(sandbox_id), str(body.get("source") or "manual"))
        return {"snapshot_id": snap.snapshot_id}

    @app.delete(API + "/sandboxes/{sandbox_id}/snapshots/{snapshot_id}")
    async def delete_snapshot(sandbox_id: str, snapshot_id: str) -> Any:
        return {"deleted": await node.delete_snapshot(await own(sandbox_id), snapshot_id)}

    @app.post(API + "/sandboxes/{sandbox_id}/restore")
    async def restore(sandbox_id: str, request: Request) -> Any:
        body = await request.json()
        # Any node restores (the snapshot is on the shared blob store): the killed record
        # may name another node, and names this one once restored.
        rec = await asyncio.to_thread(store.get_sandbox, sandbox_id)
        if rec is None:
            raise NotFound(f"sandbox '{sandbox_id}' not found")
        snap = await asyncio.to_thread(store.get_snapshot, body["snapshot_id"])
        if snap is None:
            raise NotFound(f"snapshot '{body['snapshot_id']}' not found")
        tpl = await asyncio.to_thread(templates.resolve, rec.team_id, body["template_id"])
        restored = await node.restore(rec, snap, tpl)
        return {"sandbox_id": restored.sandbox_id}

    @app.put(API + "/sandboxes/{sandbox_id}/policy")
    async def update_policy(sandbox_id: str, request: Request) -> Any:
        body = await request.json()
        policy = policy_from_wire(body["network"])
        assert policy is not None
        await node.update_policy(await own(sandbox_id), policy)
        return {}

    @app.put(API + "/sandboxes/{sandbox_id}/security")
    async def update_security(sandbox_id: str, request: Request) -> Any:
        body = await request.json()
        rec = await own(sandbox_id)
        await node.update_security(
            rec.team_id, sandbox_id, body["security"], network=policy_from_wire(body.get("network"))
        )
        return {}

    @app.post(f"{API}/inspection")
    async def refresh_inspection(request: Request) -> Any:
        body = await request.json()
        await node.refresh_inspection([str(s) for s in body["sandbox_ids"]])
        return {}

    @app.get(API + "/sandboxes/{sandbox_id}/running")
    async def is_running(sandbox_id: str) -> Any:
        return {"running": await node.is_running(await own(sandbox_id))}

    @app.get(API + "/sandboxes/{sandbox_id}/metrics")
    async def metrics(sandbox_id: str) -> Any:
        return await asyncio.to_thread(node.metrics, await own(sandbox_id))

    @app.post(f"{API}/templates/build")
    async def build_template(request: Request) -> Any:
        """Run a team template build the control plane recorded (`RemoteNode.build_template`);
        answers at once, the build's log and outcome go to the store, its layers to the blob
        store."""
        body = await request.json()
        answer = await templates.run_assigned(
            build_id=str(body["build_id"]),
            team_id=str(body["team_id"]),
            template_id=str(body["template_id"]),
            alias=str(body["alias"]) if body.get("alias") is not None else None,
        )
        return {**answer, "node_id": settings.node_id}

    return app


# The agent -------------------------------------------------------------------------------
class NodeAgent:
    def __init__(self, settings: Settings, control_plane: str, token_file: Path | None) -> None:
        if not settings.node_id:
            settings.node_id = settings.node_name or os.uname().nodename
        if not settings.node_name:
            settings.node_name = settings.node_id
        self.settings = settings
        self.control_plane = control_plane.rstrip("/")
        self.token_file = token_file
        self.ident = node_identity(settings)
        self.url = f"https://{settings.node_address}:{settings.node_port}"
        self.templates: list[str] = []
        # The gateway's vault values, fetched from the control plane, held in memory only.
        self.secrets = SecretBroker(self.control_plane, self.ident)

    async def ensure_identity(self) -> None:
        at = cert_renew_at(self.ident)
        if at is not None and self.ident.key.exists():
            if at <= datetime.datetime.now(datetime.UTC):
                await renew(self.settings, self.control_plane, self.ident)
            return
        if self.token_file is None:
            raise InvalidInput("--join-token-file", "needed: this node has no certificate yet")
        token = JoinToken.parse(self.token_file.read_text())
        await join(self.settings, self.control_plane, token)
        log.info("joined the cluster at %s as %s", self.control_plane, self.settings.node_id)

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with httpx.AsyncClient(verify=self.ident.client_context(), timeout=10) as c:
            resp = await c.post(f"{self.control_plane}{API}{path}", json=body)
        if resp.status_code != 200:
            raise Unreachable(f"control plane {path}: HTTP {resp.status_code}: {resp.text[:300]}")
        out: dict[str, Any] = resp.json()
        return out

    async def register(self) -> None:
        await self._call("/register", {"name": self.settings.node_name, "url": self.url})

    async def run(self) -> None:
        from declawd.api.app import _builtin_resolver
        from declawd.store import open_store
        from declawd.templates.catalog import catalog_names

        settings = self.settings
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        await self.ensure_identity()
        secrets_server = await serve_secrets(self.secrets.lookup, vault_socket_path(settings))
        store = open_store(settings)
        shipper = AuditShipper(audit_spool_path(settings), store)
        await asyncio.to_thread(shipper.open)  # before the node starts its gateway daemon
        templates = TemplateService(settings, store, runtime_name=settings.runtime)
        # With a shared blob store a built-in is built by one node, fetched by the others.
        await templates.ensure_builtin(BUILTINS)
        self.templates = templates.present  # live: grows as templates are made local here
        node = Node.on_this_machine(settings, store)
        await node.start(templates=_builtin_resolver(templates), builtins=catalog_names())
        app = internal_app(node, templates, settings)
        server = tls_server(
            app, self.ident, settings.node_address, settings.node_port, require_client=True
        )
        tunnel_tls = self.ident.server_context(require_client=True)
        tunnels = await serve_tunnels(
            partial(_open_port, node), tunnel_tls, settings.node_address, settings.node_tunnel_port
        )
        shipping = asyncio.get_running_loop().create_task(shipper.run(), name="audit-shipper")
        serving = asyncio.get_running_loop().create_task(server.serve())
        try:
            while not server.started:
                if serving.done():
                    await serving  # raises what stopped it (e.g. the port is taken)
                    raise Unreachable("the internal API stopped before it started")
                await asyncio.sleep(0.05)
            orphans = await asyncio.to_thread(
                store.fail_orphaned_builds, settings.node_id, settings.node_name
            )
            if orphans:
                log.warning("builds of a previous run failed: %s", ", ".join(orphans))
            await self.register()
            log.info("node %s up at %s", settings.node_name, self.url)
            beating = asyncio.get_running_loop().create_task(
                self._beat(node, store, server, tunnel_tls)
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            stopping = loop.create_task(stop.wait())
            await asyncio.wait([serving, beating, stopping], return_when=asyncio.FIRST_COMPLETED)
            for t in (beating, stopping):
                t.cancel()
            await asyncio.gather(beating, stopping, return_exceptions=True)
        finally:
            server.should_exit = True
            tunnels.close()
            shipping.cancel()  # what is left stays in the spool for the next start
            await asyncio.gather(serving, shipping, return_exceptions=True)
            shipper.close()
            secrets_server.close()
            await self.secrets.close()
            await templates.close()
            await node.close()

    async def _beat(
        self, node: Node, store: Store, server: Any, tunnel_tls: ssl.SSLContext
    ) -> None:
        settings = self.settings
        lane = Lane("heartbeat")  # a busy shared pool must not make this node look lost
        try:
            while True:
                try:
                    capacity = await lane.run(capacity_of, node, store, settings, self.templates)
                    capacity["tunnel_port"] = settings.node_tunnel_port
                    answer = await self._call("/heartbeat", {"capacity": capacity})
                    if answer.get("state") == "down":
                        # Its sandboxes were declared lost: kill them here before taking work.
                        log.warning("marked down by the control plane: reconciling, then rejoining")
                        await reconcile(node.parts)
                        await self.register()
                    at = cert_renew_at(self.ident)
                    if at is not None and at <= datetime.datetime.now(datetime.UTC):
                        await renew(settings, self.control_plane, self.ident)
                        reload_cert(server, self.ident)
                        tunnel_tls.load_cert_chain(self.ident.cert, self.ident.key)
                        await self.secrets.renewed()
                        log.info("node certificate renewed")
                except (httpx.HTTPError, OSError, DeclawdError) as exc:
                    log.warning("heartbeat: %s", exc)
                await asyncio.sleep(settings.heartbeat_interval_s)
        finally:
            lane.close()


async def _open_port(node: Node, sandbox_id: str, port: int | None) -> socket.socket:
    """A tunnel's connection: `port` in one of this node's running sandboxes, or (None) its
    envd socket (the control plane's envd client speaks HTTP through the tunnel)."""
    rec = await asyncio.to_thread(node.store.get_sandbox, sandbox_id)
    if rec is None or rec.node_id != node.settings.node_id or not rec.is_live:
        raise NotFound(f"sandbox '{sandbox_id}' not found")
    if port is None:
        path = node.parts.host.resources(sandbox_id).envd_socket
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            with pinned(path) as via:  # never through a symlink the sandbox planted
                await asyncio.get_running_loop().sock_connect(sock, via)
        except OSError as exc:
            sock.close()
            raise Unavailable(f"envd of sandbox '{sandbox_id}' unavailable: {exc}") from exc
        return sock
    if rec.state is not SandboxState.RUNNING:
        raise Conflict(f"sandbox '{sandbox_id}' is {rec.state.value}, not running")
    sock = await node.connect_port(rec, port, connect_in_netns)
    return sock


def drain(settings: Settings, control_plane: str) -> dict[str, Any]:
    """Ask the control plane to place nothing new here (blocking)."""
    ident = node_identity(settings)
    with httpx.Client(verify=ident.client_context(), timeout=10) as c:
        resp = c.post(f"{control_plane.rstrip('/')}{API}/drain", json={})
    if resp.status_code != 200:
        raise Unreachable(f"drain: HTTP {resp.status_code}: {resp.text[:300]}")
    out: dict[str, Any] = resp.json()
    return out
