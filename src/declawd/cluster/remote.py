"""`RemoteNode`: the control plane's stand-in for `Node`, with the same interface.

`declawd server --cluster` holds no sandbox state: reads come from the shared store,
actions go over mTLS to the node the sandbox is on (`SandboxRecord.node_id`), and
`envd(rec)` is an `EnvdClient` whose transport reaches that node's envd proxy, so the
command, file, PTY and SSE routes run unchanged. A create goes to the node `placement`
picks. It also runs the internal API nodes join and heartbeat on, and the lost-node sweep.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from declawd.cluster import ca as cca
from declawd.cluster.control import control_app
from declawd.cluster.placement import choose_node
from declawd.cluster.sweep import run_sweeps
from declawd.cluster.tls import tls_server
from declawd.cluster.tunnel import EnvdTunnels, open_tunnel
from declawd.cluster.wire import create_to_wire, error_from_body
from declawd.config import Settings
from declawd.egress.policy import EgressPolicy
from declawd.errors import NotFound, NotSupported, Unreachable
from declawd.node import pausing
from declawd.node.create import CreateRequest, new_sandbox_id
from declawd.node.envd_client import BackendTransport, EnvdClient
from declawd.node.node import Need, check_need
from declawd.node.pool import Resolve
from declawd.node.spec import sandbox_env
from declawd.node.trust import trust_env
from declawd.store import SandboxRecord, SandboxState, Store
from declawd.store.nodes import NodeRecord
from declawd.store.snapshots import SnapshotRecord
from declawd.templates.model import Template

log = logging.getLogger(__name__)

API = "/internal/v1"
CERT_HOURS_OWN = 24 * 30  # the control plane's own certificates, re-made at every start
NETNS_IN_CLUSTER = "a sandbox's network namespace is on its node, not on the API server"


class RemoteNode:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.ca = cca.load_ca(settings.cluster_ca_path)
        self._dir = Path(tempfile.mkdtemp(prefix="declawd-cp-"))
        (self._dir / "ca.crt").write_bytes(self.ca.cert_pem)
        hours = cca.datetime.timedelta(hours=CERT_HOURS_OWN)
        names = ["localhost", "127.0.0.1", socket.gethostname(), "declawd-internal"]
        if settings.host not in ("0.0.0.0", "::", ""):
            names.append(settings.host)
        self.server_identity = cca.issue_to_files(
            self.ca, self._dir, "server", "declawd-internal", names, hours
        )
        self.client_identity = cca.issue_to_files(
            self.ca, self._dir, "client", cca.CONTROL_PLANE, [], hours
        )
        self._ssl = self.client_identity.client_context()
        self._http = httpx.AsyncClient(verify=self._ssl, timeout=httpx.Timeout(120, connect=5))
        self._sync = httpx.Client(verify=self._ssl, timeout=httpx.Timeout(30, connect=5))
        self._clients: dict[str, tuple[str, EnvdClient]] = {}  # sandbox → (node, client)
        self._pty_subscribed: dict[str, set[int]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._tasks: list[asyncio.Task[Any]] = []
        self._server: Any = None

    @classmethod
    def for_cluster(cls, settings: Settings, store: Store) -> RemoteNode:
        return cls(settings, store)

    # start / stop ------------------------------------------------------------------
    async def start(
        self, *, templates: Resolve | None = None, builtins: Sequence[str] = ()
    ) -> None:
        """Serve the internal API and sweep for lost nodes (the node side's arguments,
        `templates` and `builtins`, are the nodes' business here)."""
        app = control_app(self.settings, self.store, self.ca)
        self._server = tls_server(
            app,
            self.server_identity,
            self.settings.host,
            self.settings.internal_port,
            require_client=False,
        )
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._server.serve()))
        interval = max(0.5, self.settings.heartbeat_interval_s / 2)
        self._tasks.append(
            loop.create_task(
                run_sweeps(self.store, interval, self.settings.node_down_after_s, time.time)
            )
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        for t in [*self._tasks[1:], *self._background]:
            t.cancel()
        await asyncio.gather(*self._tasks, *self._background, return_exceptions=True)
        for _node_id, c in self._clients.values():
            await c.aclose()
        await self._http.aclose()
        self._sync.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def background(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # calls to nodes ----------------------------------------------------------------
    def _node(self, node_id: str) -> NodeRecord:
        node = self.store.get_node(node_id)
        if node is None:
            raise Unreachable(f"node '{node_id}' is not registered")
        return node

    async def _call(
        self, node_id: str, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> Any:
        node = await asyncio.to_thread(self._node, node_id)
        try:
            resp = await self._http.request(method, f"{node.url}{API}{path}", json=body)
        except httpx.HTTPError as exc:
            raise Unreachable(f"node {node.name} did not answer: {exc}") from exc
        return _answer(node, resp)

    def _call_sync(self, node_id: str, method: str, path: str) -> Any:
        node = self._node(node_id)
        try:
            resp = self._sync.request(method, f"{node.url}{API}{path}")
        except httpx.HTTPError as exc:
            raise Unreachable(f"node {node.name} did not answer: {exc}") from exc
        return _answer(node, resp)

    async def _reread(self, sandbox_id: str) -> SandboxRecord:
        rec = await asyncio.to_thread(self.store.get_sandbox, sandbox_id)
        if rec is None:
            raise NotFound(f"sandbox '{sandbox_id}' not found")
        return rec

    # lookup ------------------------------------------------------------------------
    async def lookup(self, team_id: str, sandbox_id: str, need: Need = Need.LIVE) -> SandboxRecord:
        """As `Node.lookup` (`check_need`); a sandbox lost with its node is a 404 that says so."""
        rec = await asyncio.to_thread(self.store.get_sandbox, sandbox_id, team_id)
        found = check_need(rec, sandbox_id, need)
        if need is Need.RUNNING and found.state is SandboxState.PAUSED:
            return await self.resume(found, at_least_s=pausing.AUTO_RESUME_MIN_S)
        return found

    # lifecycle ---------------------------------------------------------------------
    async def _place(self, template: Template) -> NodeRecord:
        """The node a create or a restore of `template` goes to (`placement`)."""
        nodes = await asyncio.to_thread(self.store.list_nodes)
        counts = await asyncio.to_thread(self.store.count_live_by_node)
        return choose_node(
            nodes,
            template_id=template.template_id,
            builtin=template.team_id == "",
            live_counts=counts,
            now=time.time(),
            fresh_s=self.settings.node_down_after_s,
            shared=self.settings.blobs_shared,  # any node can fetch a template's layers
        )

    async def create(self, req: CreateRequest) -> SandboxRecord:
        """On the node `placement` picks. Live volumes go as volume ids (`wire`), and then
        the id is chosen here and `prepare` (which records the attachments) runs first, as
        in the single-process create, so a volume delete racing it is refused; a pooled
        sandbox never serves mounts anyway. Otherwise the node chooses the id (a warm
        pool's or a new one) and `prepare` runs once it answered. Copied volumes go as
        volume ids too, and the node copies them in before the start command; any failure
        after the node made it kills it."""
        node = await self._place(req.template)
        prepared = False
        if req.mounts:
            req = dataclasses.replace(req, sandbox_id=req.sandbox_id or new_sandbox_id())
        body = create_to_wire(req)  # before `prepare`: a mount it cannot send changes nothing
        if req.mounts and req.sandbox_id is not None:
            if req.prepare is not None:
                await req.prepare(req.sandbox_id)
            prepared = True
        answer = await self._call(node.node_id, "POST", "/sandboxes", body)
        sandbox_id = str(answer["sandbox_id"])
        try:
            if req.prepare is not None and not prepared:
                await req.prepare(sandbox_id)
        except BaseException:
            await self.kill(sandbox_id)
            raise
        return await self._reread(sandbox_id)

    async def kill(self, sandbox_id: str, *, wait: bool = True) -> bool:
        rec = await asyncio.to_thread(self.store.get_sandbox, sandbox_id)
        if rec is None or rec.state not in (SandboxState.RUNNING, SandboxState.PAUSED):
            return False
        self._forget(sandbox_id)
        answer = await self._call(
            rec.node_id, "POST", f"/sandboxes/{sandbox_id}/kill", {"wait": wait}
        )
        return bool(answer["killed"])

    def _forget(self, sandbox_id: str) -> None:
        self._pty_subscribed.pop(sandbox_id, None)
        cached = self._clients.pop(sandbox_id, None)
        if cached is not None:
            self.background(cached[1].aclose())

    async def pause(self, rec: SandboxRecord) -> SandboxRecord:
        await self._call(rec.node_id, "POST", f"/sandboxes/{rec.sandbox_id}/pause", {})
        return await self._reread(rec.sandbox_id)

    async def resume(self, rec: SandboxRecord, *, at_least_s: float = 0.0) -> SandboxRecord:
        path = f"/sandboxes/{rec.sandbox_id}/resume"
        await self._call(rec.node_id, "POST", path, {"at_least_s": at_least_s})
        return await self._reread(rec.sandbox_id)

    async def snapshot(self, rec: SandboxRecord, source: str = "manual") -> SnapshotRecord:
        path = f"/sandboxes/{rec.sandbox_id}/snapshots"
        answer = await self._call(rec.node_id, "POST", path, {"source": source})
        snap = await asyncio.to_thread(self.store.get_snapshot, str(answer["snapshot_id"]))
        if snap is None:
            raise NotFound(f"snapshot '{answer['snapshot_id']}' not found")
        return snap

    async def delete_snapshot(self, rec: SandboxRecord, snapshot_id: str) -> bool:
        path = f"/sandboxes/{rec.sandbox_id}/snapshots/{snapshot_id}"
        return bool((await self._call(rec.node_id, "DELETE", path))["deleted"])

    async def restore(
        self, rec: SandboxRecord, snap: SnapshotRecord, template: Template
    ) -> SandboxRecord:
        """Placed like a create of the snapshot's template when the blob store is shared
        (`DECLAWD_BLOB_DIR`: every node reads the snapshot), so a sandbox lost with its node
        comes back on another; the record then names the new node. Blobs on each node's own
        disk: only the sandbox's old node has the snapshot, so it goes there."""
        if self.settings.blobs_shared:
            node_id = (await self._place(template)).node_id
        else:
            node_id = rec.node_id
        body = {"snapshot_id": snap.snapshot_id, "template_id": template.template_id}
        await self._call(node_id, "POST", f"/sandboxes/{rec.sandbox_id}/restore", body)
        self._forget(rec.sandbox_id)  # an envd client of the old node would be stale
        return await self._reread(rec.sandbox_id)

    async def set_timeout(self, rec: SandboxRecord, seconds: int) -> float:
        """Store writes only (the node's reaper reads the deadline), as `Node.set_timeout`."""
        if rec.state is SandboxState.PAUSED:
            await asyncio.to_thread(self.store.update_sandbox, rec.sandbox_id, remaining_s=seconds)
            return time.time() + seconds
        end_at = time.time() + seconds
        await asyncio.to_thread(self.store.update_sandbox, rec.sandbox_id, end_at=end_at)
        return end_at

    async def update_policy(self, rec: SandboxRecord, policy: EgressPolicy) -> None:
        path = f"/sandboxes/{rec.sandbox_id}/policy"
        await self._call(rec.node_id, "PUT", path, {"network": policy.to_wire()})

    async def update_security(
        self,
        team_id: str,
        sandbox_id: str,
        security: Mapping[str, Any],
        *,
        network: EgressPolicy | None = None,
    ) -> SandboxRecord:
        rec = await self.lookup(team_id, sandbox_id, Need.RUNNING)
        body = {
            "security": dict(security),
            "network": network.to_wire() if network is not None else None,
        }
        await self._call(rec.node_id, "PUT", f"/sandboxes/{sandbox_id}/security", body)
        return await self._reread(sandbox_id)

    async def refresh_inspection(self, sandbox_ids: Sequence[str]) -> None:
        by_node: dict[str, list[str]] = {}
        for sandbox_id in dict.fromkeys(sandbox_ids):
            rec = await asyncio.to_thread(self.store.get_sandbox, sandbox_id)
            if rec is not None and rec.is_live:
                by_node.setdefault(rec.node_id, []).append(sandbox_id)
        for node_id, ids in by_node.items():
            await self._call(node_id, "POST", "/inspection", {"sandbox_ids": ids})

    # sessions ----------------------------------------------------------------------
    def envd(self, rec: SandboxRecord) -> EnvdClient:
        """The sandbox's envd through a tunnel to its node (cluster/tunnel.py: envd's HTTP
        as bytes the node relays), cached per sandbox while it stays on that node (a
        restore may move it: the client made for the old node is dropped)."""
        cached = self._clients.get(rec.sandbox_id)
        if cached is not None and cached[0] == rec.node_id:
            return cached[1]
        if cached is not None:
            self._forget(rec.sandbox_id)
        node = self._node(rec.node_id)
        backend = EnvdTunnels(*self._tunnel_of(node), self._ssl, rec.sandbox_id)
        client = EnvdClient(f"envd of {rec.sandbox_id} on node {node.name}",
                            transport=BackendTransport(backend))  # fmt: skip
        self._clients[rec.sandbox_id] = (rec.node_id, client)
        return client

    def envs(self, rec: SandboxRecord) -> dict[str, str]:
        return sandbox_env(rec.sandbox_id, rec.template_id, rec.envs, trust_env())

    def netns_of(self, rec: SandboxRecord) -> str:
        raise NotSupported(NETNS_IN_CLUSTER)

    async def connect_port(
        self, rec: SandboxRecord, port: int, connect: Callable[..., Awaitable[Any]]
    ) -> socket.socket:
        """The ports route's connection: a tunnel to the sandbox's node, which connects in
        the sandbox's netns as `Node.connect_port` does (`connect` is the node's business)."""
        node = await asyncio.to_thread(self._node, rec.node_id)
        return await open_tunnel(*self._tunnel_of(node), self._ssl, rec.sandbox_id, port)

    def _tunnel_of(self, node: NodeRecord) -> tuple[str, int]:
        """Where `node` serves tunnels: its internal API's host, the port it reports."""
        host = urlsplit(node.url).hostname or ""
        return host, int(node.capacity.get("tunnel_port") or self.settings.node_tunnel_port)

    def pty_since(self, rec: SandboxRecord, pid: int) -> int:
        """As the node's sessions: the first subscriber (through this API server) from the
        beginning, later ones from now."""
        attached = self._pty_subscribed.setdefault(rec.sandbox_id, set())
        since = -1 if pid in attached else 0
        attached.add(pid)
        return since

    async def is_running(self, rec: SandboxRecord) -> bool:
        if rec.state is not SandboxState.RUNNING:
            return False
        answer = await self._call(rec.node_id, "GET", f"/sandboxes/{rec.sandbox_id}/running")
        return bool(answer["running"])

    def metrics(self, rec: SandboxRecord) -> dict[str, float]:
        """As `Node.metrics`, read on the sandbox's node (blocking)."""
        answer = self._call_sync(rec.node_id, "GET", f"/sandboxes/{rec.sandbox_id}/metrics")
        return {k: float(v) for k, v in answer.items()}

    # operations --------------------------------------------------------------------
    async def gateway_healthy(self) -> bool:
        """Whether some node is up (each node's gateway is its own business)."""
        nodes = await asyncio.to_thread(self.store.list_nodes)
        return any(n.state == "up" for n in nodes)

    @property
    def gateway_restarts(self) -> int:
        return 0

    def gateway_stats(self) -> dict[str, Any] | None:
        return None

    def pool_status(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for node in self.store.list_nodes():
            if node.state != "down":
                out.extend({**p, "node": node.name} for p in node.capacity.get("pools") or [])
        return out

    def pool_summary(self) -> dict[str, Any]:
        """The warm pools every node that is not down reported in its last heartbeat."""
        pools = self.pool_status()
        return {
            "pools": pools,
            "parked": sum(int(p.get("ready") or 0) for p in pools),
            "memory_bytes": 0,
            "budget_bytes": 0,
        }

    # templates ---------------------------------------------------------------------
    async def build_template(
        self, *, build_id: str, team_id: str, template_id: str, alias: str | None
    ) -> str:
        """Send the recorded build `build_id` to the least loaded node that is up (API
        servers run no containers); the node answers at once and runs it, its log and
        outcome go to the store. Returns that node's id (`TemplateService.build_on_nodes`)."""
        from declawd.cluster.placement import choose_build_node

        nodes = await asyncio.to_thread(self.store.list_nodes)
        counts = await asyncio.to_thread(self.store.count_live_by_node)
        node = choose_build_node(
            nodes, live_counts=counts, now=time.time(), fresh_s=self.settings.node_down_after_s
        )
        body = {
            "build_id": build_id,
            "team_id": team_id,
            "template_id": template_id,
            "alias": alias,
        }
        await self._call(node.node_id, "POST", "/templates/build", body)
        log.info("template %s: build %s sent to node %s", template_id, build_id, node.name)
        return node.node_id


def _answer(node: NodeRecord, resp: httpx.Response) -> Any:
    try:
        body = resp.json()
    except ValueError:
        body = {"message": f"node {node.name} answered HTTP {resp.status_code}: {resp.text[:200]}"}
    if resp.status_code >= 400:
        raise error_from_body(resp.status_code, body if isinstance(body, dict) else {})
    return body
