"""The node: sandbox lifecycle on one machine (create, kill, timeouts, policy, reconcile).

Create runs its steps in order (record → slot → [network → gateway] alongside [rootfs →
spec] → container → envd → start command); every step that succeeded is undone when a
later one fails (a failing branch first waits for the other), so a failed create leaves no
netns, veth, nft chain, mount, cgroup or process, and the store says `failed`. The store is the source of truth across restarts: `start()`
reconciles it with what the runtime, the mounts and the network really hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from declawd.config import Settings
from declawd.egress.network import Gateway, SandboxNetwork
from declawd.egress.network import sweep as sweep_networks
from declawd.egress.policy import EgressPolicy
from declawd.errors import ApiError, NotFound, Unavailable
from declawd.node.envd_client import EnvdClient
from declawd.node.faults import fault_point
from declawd.node.gatewayd import GatewayDaemon
from declawd.node.sandbox import (
    ENVD_BIN_IN_SANDBOX,
    ENVD_MOUNT_DIR,
    ENVD_SOCKET_NAME,
    SandboxResources,
)
from declawd.runtime import Limits, Mount, OciRuntime, build_spec, dir_size
from declawd.runtime import cgroups as cg
from declawd.runtime import overlay as ovl
from declawd.runtime.compat import ensure_statx_shim, preload_file
from declawd.store import Store
from declawd.templates.model import start_script

log = logging.getLogger(__name__)

LIVE = ("creating", "running")
LAB_CA_IN_SANDBOX = "/etc/declawd/ca-bundle.pem"
STATX_SHIM_IN_SANDBOX = "/opt/declawd/statx-shim.so"
ENVD_READY_TIMEOUT = 15.0


class CreateFailed(ApiError):
    status = 500


@dataclass
class CreateRequest:
    team_id: str
    template: Any  # declawd.templates.Template (resolved, ready)
    timeout: int
    metadata: dict[str, str] = field(default_factory=dict)
    envs: dict[str, str] = field(default_factory=dict)
    policy: EgressPolicy | None = None
    security: dict[str, Any] | None = None
    runtime: str | None = None


def new_sandbox_id() -> str:
    return "sbx-" + secrets.token_hex(6)


class Node:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.runtimes = {
            name: OciRuntime(name, settings.run_dir / name)  # type: ignore[arg-type]
            for name in ("runc", "runsc")
        }
        self.gateway = Gateway(settings)
        self.daemon = GatewayDaemon(settings)
        self._clients: dict[str, EnvdClient] = {}
        # PTY pids per sandbox that already had a stream subscriber (later ones attach "now").
        self.pty_subscribed: dict[str, set[int]] = {}
        # Last (monotonic time, cpu ns) per sandbox, for the CPU % between two metrics calls.
        self._cpu_prev: dict[str, tuple[float, int]] = {}
        self._kill_locks: dict[str, asyncio.Lock] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.envd_binary: Path | None = None
        self._compat: tuple[Path, Path] | None = None

    # start / stop -----------------------------------------------------------------
    async def start(self) -> None:
        from declawd.envd import ensure_envd

        for d in (self.settings.sandboxes_dir, self.settings.run_dir, self.settings.gateway_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.envd_binary = await asyncio.to_thread(ensure_envd, self.settings.envd_path)
        if self.settings.lab:
            from declawd.lab.ca import ensure_ca

            await asyncio.to_thread(ensure_ca, self.settings)
        await self.gateway.ensure(self.settings)
        self.daemon.load()
        await self.reconcile()
        await self.daemon.start()
        self.daemon.supervise()
        self._reaper = asyncio.get_running_loop().create_task(self._reap_loop())

    async def close(self) -> None:
        """Stop background work; sandboxes and the gateway daemon keep running."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await self.daemon.close()
        for t in list(self._background):
            t.cancel()
        for c in list(self._clients.values()):
            with contextlib.suppress(Exception):
                await c.aclose()
        self._clients.clear()

    # helpers ----------------------------------------------------------------------
    def _runtime(self, name: str) -> OciRuntime:
        return self.runtimes[name]

    def client(self, sandbox_id: str) -> EnvdClient:
        c = self._clients.get(sandbox_id)
        if c is None:
            sock = str(SandboxResources(self.settings, sandbox_id).envd_socket)
            # httpx builds and loads a CA store into a fresh SSL context for every transport
            # (~30 ms on the event loop, per create); envd speaks plain HTTP, so share one.
            transport = httpx.AsyncHTTPTransport(uds=sock, verify=_unused_tls_context())
            c = self._clients[sandbox_id] = EnvdClient(sock, transport=transport)
        return c

    async def _drop_client(self, sandbox_id: str) -> None:
        self.pty_subscribed.pop(sandbox_id, None)
        self._cpu_prev.pop(sandbox_id, None)
        c = self._clients.pop(sandbox_id, None)
        if c is not None:
            with contextlib.suppress(Exception):
                await c.aclose()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def sandbox_envs(self, rec: dict[str, Any]) -> dict[str, str]:
        """Environment every process in the sandbox gets (template + sandbox + platform)."""
        envs: dict[str, str] = {}
        envs.update(rec.get("template_envs") or {})
        envs.update(rec.get("envs") or {})
        if rec.get("lab"):
            for var in (
                "SSL_CERT_FILE",
                "REQUESTS_CA_BUNDLE",
                "CURL_CA_BUNDLE",
                "NODE_EXTRA_CA_CERTS",
            ):
                envs.setdefault(var, LAB_CA_IN_SANDBOX)
        return envs

    # create -----------------------------------------------------------------------
    async def create(self, req: CreateRequest) -> dict[str, Any]:
        tpl = req.template
        runtime_name = req.runtime or tpl.runtime or self.settings.runtime
        sandbox_id = new_sandbox_id()
        now = time.time()
        policy = req.policy or EgressPolicy.parse([], [])
        rec: dict[str, Any] = {
            "sandbox_id": sandbox_id,
            "team_id": req.team_id,
            "template_id": tpl.template_id,
            "template_alias": tpl.alias or tpl.template_id,
            "state": "creating",
            "runtime": runtime_name,
            "metadata": req.metadata,
            "envs": {**(tpl.envs or {}), **req.envs},
            "network": policy.to_wire(),
            "security": req.security,
            "created_at": now,
            "end_at": now + req.timeout,
            "cpu_count": tpl.cpu_count or self.settings.default_cpu_count,
            "memory_mb": tpl.memory_mb or self.settings.default_memory_mb,
            "lab": bool(self.settings.lab),
        }
        await asyncio.to_thread(self.store.insert_sandbox, rec)
        res = SandboxResources(self.settings, sandbox_id)
        runtime = self._runtime(runtime_name)
        net: SandboxNetwork | None = None
        started = time.monotonic()

        async def network(planned: SandboxNetwork) -> None:
            nonlocal net
            net = planned  # before the await: the undo also destroys a half-made network
            await SandboxNetwork.create(self.settings, sandbox_id, planned.slot, policy)
            fault_point("create.after_network")
            await asyncio.to_thread(
                self.store.update_sandbox, sandbox_id, slot=planned.slot, address=planned.address
            )
            await self.daemon.upsert(sandbox_id, planned.slot, planned.address, policy.to_wire())
            fault_point("create.after_gateway")

        async def rootfs(planned: SandboxNetwork) -> None:
            # Addresses and netns path follow from the slot alone (no I/O), so the rootfs
            # can be made while the network branch is still creating them.
            await asyncio.to_thread(self._prepare_rootfs, res, tpl, planned)
            fault_point("create.after_rootfs")
            await asyncio.to_thread(self._write_spec, rec, tpl, res, planned, runtime_name)

        try:
            fault_point("create.after_record")
            slot = await asyncio.to_thread(self.store.allocate_slot, sandbox_id)
            fault_point("create.after_slot")
            planned = SandboxNetwork.attach(self.settings, sandbox_id, slot)
            await _all_settled(network(planned), rootfs(planned))
            await runtime.run_detached(
                res.dir, sandbox_id, planned.netns_path, log_path=res.log_path
            )
            fault_point("create.after_container")
            client = self.client(sandbox_id)
            await self._wait_envd(client, res)
            fault_point("create.after_envd")
            if tpl.start_cmd:
                await self._start_command(sandbox_id, rec, tpl)
            fault_point("create.after_start")
        except BaseException as exc:
            await self._undo_create(sandbox_id, res, runtime, net)
            await asyncio.to_thread(
                self.store.update_sandbox, sandbox_id, state="failed", error=str(exc)[:2000]
            )
            if isinstance(exc, ApiError):
                raise
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.exception("create %s failed", sandbox_id)
            raise CreateFailed(f"sandbox create failed: {exc}") from exc
        now = time.time()
        await asyncio.to_thread(
            self.store.update_sandbox,
            sandbox_id,
            state="running",
            started_at=now,
        )
        log.info("created %s in %.0f ms", sandbox_id, (time.monotonic() - started) * 1000)
        out = await asyncio.to_thread(self.store.get_sandbox, sandbox_id)
        assert out is not None
        return out

    def _prepare_rootfs(self, res: SandboxResources, tpl: Any, net: SandboxNetwork) -> None:
        """Quota disk, /etc network files in the upper dir, overlay + envd tmpfs (blocking)."""
        res.prepare_dirs()
        res.write_network_files(res.sandbox_id, net.address, net.gateway_address)
        res.mount(list(tpl.layer_paths))

    def _write_spec(
        self, rec: dict[str, Any], tpl: Any, res: SandboxResources, net: SandboxNetwork, rt: str
    ) -> None:
        spec = self._spec(rec, tpl, res, net.netns_path, rt)
        (res.dir / "config.json").write_text(json.dumps(spec, indent=1))

    def _spec(
        self, rec: dict[str, Any], tpl: Any, res: SandboxResources, netns: str, runtime: str
    ) -> dict[str, Any]:
        assert self.envd_binary is not None
        mounts = [
            Mount(
                ENVD_BIN_IN_SANDBOX,
                str(self.envd_binary),
                "bind",
                ["bind", "ro", "nosuid", "nodev"],
            ),
            Mount(
                ENVD_MOUNT_DIR,
                str(res.envd_dir),
                "bind",
                ["bind", "rw", "nosuid", "nodev", "noexec"],
            ),
        ]
        if runtime == "runsc":
            shim, preload = self._runsc_compat()
            opts = ["bind", "ro", "nosuid", "nodev"]
            mounts.append(Mount(STATX_SHIM_IN_SANDBOX, str(shim), "bind", opts))
            mounts.append(Mount("/etc/ld.so.preload", str(preload), "bind", opts))
        if rec.get("lab"):
            from declawd.lab.ca import ca_bundle_path

            bundle = str(ca_bundle_path(self.settings))
            opts = ["bind", "ro", "nosuid", "nodev", "noexec"]
            mounts.append(Mount(LAB_CA_IN_SANDBOX, bundle, "bind", opts))
            mounts.append(Mount("/etc/ssl/certs/ca-certificates.crt", bundle, "bind", opts))
        limits = Limits(
            memory_mb=int(rec["memory_mb"]),
            cpu_count=float(rec["cpu_count"]),
            pids=self.settings.default_pids,
        )
        if runtime == "runc":
            # gVisor cannot use host cgroup files from inside; see docs/security.md
            mounts += res.create_command_cgroups(limits.memory_mb << 20, limits.pids)
        return build_spec(
            sandbox_id=rec["sandbox_id"],
            rootfs=res.rootfs,
            hostname=rec["sandbox_id"],
            args=[ENVD_BIN_IN_SANDBOX, "--socket", f"{ENVD_MOUNT_DIR}/{ENVD_SOCKET_NAME}"],
            env=["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            netns_path=netns,
            limits=limits,
            mounts=mounts,
            cgroups_path=res.cgroups_path,
            runtime=runtime,
        )

    def _runsc_compat(self) -> tuple[Path, Path]:
        # Built or checked once per process (hashing the source and comparing stamps on
        # every create was pure overhead); concurrent first builds are safe (atomic replace).
        if self._compat is None:
            bindir = self.settings.state_dir / "bin"
            shim = ensure_statx_shim(bindir / "statx-shim.so")
            self._compat = shim, preload_file(STATX_SHIM_IN_SANDBOX, bindir / "ld.so.preload")
        return self._compat

    async def _wait_envd(self, client: EnvdClient, res: SandboxResources) -> None:
        deadline = time.monotonic() + ENVD_READY_TIMEOUT
        delay = 0.001
        while time.monotonic() < deadline:
            if res.envd_socket.exists():
                with contextlib.suppress(Exception):
                    if await client.health():
                        return
            await asyncio.sleep(delay)
            # the socket shows up ~0-15 ms after `run --detach`; a short cap wastes little
            delay = min(delay * 1.5, 0.01)
        tail = ""
        with contextlib.suppress(OSError):
            tail = res.log_path.read_text(errors="replace")[-500:]
        raise RuntimeError(f"envd did not come up within {ENVD_READY_TIMEOUT:.0f}s: {tail}")

    async def _start_command(self, sandbox_id: str, rec: dict[str, Any], tpl: Any) -> None:
        client = self.client(sandbox_id)
        envs = self.sandbox_envs({**rec, "template_envs": tpl.envs})
        await client.start(
            start_script(tpl.start_cmd) or "",
            user=tpl.user or "user",
            envs=envs,
            cwd=tpl.workdir,
            tag="start_cmd",
        )
        if not tpl.ready_cmd:
            return
        timeout = float(tpl.ready_timeout or 60)
        deadline = time.monotonic() + timeout
        while True:
            result = await client.run(
                tpl.ready_cmd,
                timeout=max(1.0, deadline - time.monotonic()),
                user=tpl.user or "user",
                envs=envs,
                cwd=tpl.workdir,
            )
            if result.exit_code == 0:
                return
            if time.monotonic() >= deadline:
                raise ApiError(
                    f"template start command not ready: ready_cmd {tpl.ready_cmd!r} still failing "
                    f"after {timeout:.0f}s (exit {result.exit_code})",
                    status=408,  # not 5xx: the SDK would retry the whole create
                    code="start_cmd_not_ready",
                )
            await asyncio.sleep(0.2)

    async def _undo_create(
        self,
        sandbox_id: str,
        res: SandboxResources,
        runtime: OciRuntime,
        net: SandboxNetwork | None,
    ) -> None:
        await self._drop_client(sandbox_id)
        with contextlib.suppress(Exception):
            await res.teardown(runtime)
        with contextlib.suppress(Exception):
            await self.daemon.remove(sandbox_id)
        if net is not None:
            with contextlib.suppress(Exception):
                await net.destroy()

    # kill -------------------------------------------------------------------------
    async def kill(self, sandbox_id: str) -> bool:
        lock = self._kill_locks.setdefault(sandbox_id, asyncio.Lock())
        async with lock:
            rec = await asyncio.to_thread(self.store.get_sandbox, sandbox_id)
            if rec is None or rec["state"] not in LIVE:
                return False
            await self._teardown(rec)
            await asyncio.to_thread(
                self.store.update_sandbox, sandbox_id, state="killed", killed_at=time.time()
            )
        self._kill_locks.pop(sandbox_id, None)
        return True

    async def _teardown(self, rec: dict[str, Any]) -> None:
        sandbox_id = rec["sandbox_id"]
        await self._drop_client(sandbox_id)
        res = SandboxResources(self.settings, sandbox_id)
        fault_point("kill.before_runtime")
        await res.teardown(self._runtime(rec.get("runtime") or "runc"))
        fault_point("kill.after_runtime")
        await self.daemon.remove(sandbox_id)
        fault_point("kill.after_gateway")
        if rec.get("slot"):
            net = SandboxNetwork.attach(self.settings, sandbox_id, int(rec["slot"]))
            await net.destroy()
        fault_point("kill.after_network")

    # policy -----------------------------------------------------------------------
    async def update_policy(self, rec: dict[str, Any], policy: EgressPolicy) -> None:
        net = SandboxNetwork.attach(self.settings, rec["sandbox_id"], int(rec["slot"]))
        await asyncio.to_thread(
            self.store.update_sandbox, rec["sandbox_id"], network=policy.to_wire()
        )
        await net.update_policy(policy)
        await self.daemon.upsert(
            rec["sandbox_id"], int(rec["slot"]), rec["address"], policy.to_wire()
        )

    # metrics ----------------------------------------------------------------------
    def metrics(self, rec: dict[str, Any]) -> dict[str, float]:
        sandbox_id = rec["sandbox_id"]
        stats = cg.read_stats(f"/{self.settings.instance}/{sandbox_id}")
        disk = dir_size(SandboxResources(self.settings, sandbox_id).upper)
        cpu_count = float(rec.get("cpu_count") or 1)
        prev = self._cpu_prev.get(sandbox_id)
        now = time.monotonic()
        pct = 0.0
        if prev is not None and now > prev[0]:
            pct = (stats.cpu_usage_ns - prev[1]) / ((now - prev[0]) * 1e9) * 100 / cpu_count
        self._cpu_prev[sandbox_id] = (now, stats.cpu_usage_ns)
        return {
            "cpu_usage_percent": round(max(0.0, pct), 2),
            "memory_usage_mb": round(stats.memory_bytes / 2**20, 2),
            "disk_usage_mb": round(disk / 2**20, 2),
        }

    # timeouts ---------------------------------------------------------------------
    async def _reap_loop(self) -> None:
        while True:
            try:
                await self.reap_expired()
            except Exception:
                log.exception("reaper")
            await asyncio.sleep(1.0)

    async def reap_expired(self) -> None:
        now = time.time()
        for rec in await asyncio.to_thread(self.store.list_live_sandboxes):
            if rec["state"] == "running" and rec.get("end_at") and rec["end_at"] <= now:
                log.info("sandbox %s reached its timeout", rec["sandbox_id"])
                self.spawn(self.kill(rec["sandbox_id"]))
            elif rec["state"] == "running" and not _envd_listening(rec["sandbox_id"], self):
                self.spawn(self._reap_if_dead(rec))

    async def _reap_if_dead(self, rec: dict[str, Any]) -> None:
        """A container that died on its own (under runsc: an OOM or pids limit kills the
        whole gVisor sandbox) is torn down and reported, never shown as running."""
        sandbox_id = rec["sandbox_id"]
        state = await self._runtime(rec.get("runtime") or "runc").state(sandbox_id)
        if state == "running":
            return
        log.warning("sandbox %s died (runtime state %s); cleaning up", sandbox_id, state)
        if await self.kill(sandbox_id):
            await asyncio.to_thread(
                self.store.update_sandbox,
                sandbox_id,
                error=f"sandbox died: its container is {state or 'gone'} "
                "(out of memory or pids limit under runsc, or envd exited)",
            )

    # reconcile --------------------------------------------------------------------
    async def reconcile(self) -> None:
        """Make the store, the runtimes, the mounts and the network agree after a restart."""
        live = await asyncio.to_thread(self.store.list_live_sandboxes)
        keep: set[str] = set()
        for rec in live:
            sid = rec["sandbox_id"]
            runtime = self._runtime(rec.get("runtime") or "runc")
            state = await runtime.state(sid) if rec["state"] == "running" else None
            res = SandboxResources(self.settings, sid)
            if state == "running" and ovl.is_mounted(res.rootfs) and res.envd_socket.exists():
                keep.add(sid)
                continue
            log.warning(
                "reconcile: %s is %s in the store but %s in the runtime; cleaning up",
                sid,
                rec["state"],
                state,
            )
            with contextlib.suppress(Exception):
                await self._teardown(rec)
            await asyncio.to_thread(
                self.store.update_sandbox,
                sid,
                state="failed" if rec["state"] == "creating" else "killed",
                killed_at=time.time(),
                error="lost during a server restart",
            )
        for runtime in self.runtimes.values():
            with contextlib.suppress(Exception):
                for cid in await runtime.list():
                    if cid not in keep:
                        log.warning("reconcile: removing stray container %s", cid)
                        await runtime.kill(cid)
        if self.settings.sandboxes_dir.exists():
            for d in self.settings.sandboxes_dir.iterdir():
                if d.name not in keep:
                    with contextlib.suppress(Exception):
                        await SandboxResources(self.settings, d.name).teardown(None)
        swept = sweep_networks(self.settings, keep)
        if asyncio.iscoroutine(swept):
            await swept
        await self.daemon.retain(keep)

    async def destroy_all(self) -> int:
        """Kill every sandbox and remove the gateway: `declawd down`, and test teardown."""
        count = 0
        for rec in await asyncio.to_thread(self.store.list_live_sandboxes):
            with contextlib.suppress(Exception):
                await self._teardown(rec)
            await asyncio.to_thread(
                self.store.update_sandbox, rec["sandbox_id"], state="killed", killed_at=time.time()
            )
            count += 1
        self.daemon.load()
        await self.reconcile()
        await self.daemon.stop()
        await self.gateway.teardown()
        # The per-instance parent cgroup (`/<instance>` in every hierarchy) held only the
        # sandboxes' cgroups; remove it once empty so `down` leaves nothing behind.
        with contextlib.suppress(OSError):
            cg.remove_cgroup(f"/{self.settings.instance}")
        return count

    def get_live(self, team_id: str, sandbox_id: str) -> dict[str, Any]:
        rec = self.store.get_sandbox(sandbox_id, team_id)
        if rec is None or rec["state"] not in LIVE:
            raise NotFound(f"sandbox '{sandbox_id}' not found")
        if rec["state"] == "creating":
            raise Unavailable(f"sandbox '{sandbox_id}' is still being created")
        return rec


def _envd_listening(sandbox_id: str, node: Node) -> bool:
    """Cheap liveness probe: does anything accept on the sandbox's envd socket?"""
    import socket

    path = str(SandboxResources(node.settings, sandbox_id).envd_socket)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.setblocking(False)
        try:
            s.connect(path)
        except (BlockingIOError, InterruptedError):
            return True  # backlog full: alive but busy
        except OSError:
            return False
    return True


async def _all_settled(*coros: Any) -> None:
    """Run create branches concurrently and return once every one has finished (also when
    one fails or the caller is cancelled: blocking steps run in threads that cannot be
    interrupted), so the undo sees everything they made; then raise the first failure."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks)
    except asyncio.CancelledError:
        await asyncio.wait(tasks)  # not cancelled: let them finish, the undo follows
        raise
    for t in tasks:
        exc = t.exception()
        if exc is not None:
            raise exc


@functools.cache
def _unused_tls_context() -> ssl.SSLContext:
    """A client TLS context with no CA loaded: fails closed if ever used for https."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
