"""In-memory stand-ins for what a node is built from (node/parts.py), for unit tests.

Each fake keeps what exists (containers, networks, gateway entries, rootfs, cgroups,
envd sessions) so a test can check that a failed create or a kill left nothing behind.
One `Steps` is shared by all of them: a test makes any named step fail or wait on an event.
A step that makes something fails after making it (the harder case for an undo); a step
that removes something fails or waits before removing it, so the thing is still there.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from declawd.blobs import open_blobs
from declawd.config import Settings
from declawd.egress.policy import EgressPolicy
from declawd.node import create as create_module
from declawd.node.envd_client import ProcessResult
from declawd.node.faults import Faults
from declawd.node.node import Node
from declawd.node.parts import GatewayEntry, NetworkPlan, NodeParts
from declawd.node.sandbox import ContainerRuntime, SandboxHost
from declawd.node.sessions import Sessions
from declawd.node.spec import ENVD_SOCKET_NAME
from declawd.runtime import Mount, RootfsMount
from declawd.store import SandboxRecord, SandboxState, Store
from declawd.templates.model import Template

TEAM = "team-a"
UPSTREAM_CA = b"-----BEGIN CERTIFICATE-----\nupstream CA (fake)\n-----END CERTIFICATE-----\n"


class StepFailed(RuntimeError):
    """What a fake raises at a step the test told to fail."""


class Steps:
    """Every fake step, by name ("networks.create", "host.release", ...): which ran, in order,
    which fail and which wait for the test."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._failing: dict[str, BaseException] = {}
        self._gates: dict[str, asyncio.Event] = {}

    def fail(self, name: str, exc: BaseException | None = None) -> None:
        self._failing[name] = exc or StepFailed(f"{name} broke")

    def heal(self, name: str) -> None:
        self._failing.pop(name, None)

    def gate(self, name: str) -> asyncio.Event:
        """From now on `name` waits until the returned event is set."""
        event = self._gates[name] = asyncio.Event()
        return event

    def count(self, name: str) -> int:
        return self.calls.count(name)

    def hit(self, name: str) -> None:
        self.calls.append(name)
        exc = self._failing.get(name)
        if exc is not None:
            raise exc

    async def ahit(self, name: str) -> None:
        self.calls.append(name)
        gate = self._gates.get(name)
        if gate is not None:
            await gate.wait()
        exc = self._failing.get(name)
        if exc is not None:
            raise exc


class FakeRuntime:
    """An OCI runtime: containers by id with their state. Starting one also "starts envd":
    it creates the socket file in the bundle's envd directory, as envd would."""

    def __init__(self, name: str, steps: Steps) -> None:
        self.name = name
        self.steps = steps
        self.containers: dict[str, str] = {}
        self.netns: dict[str, str | None] = {}

    async def run_detached(
        self,
        bundle: Path,
        container_id: str,
        netns_path: str | None,
        *,
        log_path: Path,
        rootfs: RootfsMount | None = None,
    ) -> None:
        if container_id in self.containers:
            raise RuntimeError(f"container {container_id} exists")
        self.containers[container_id] = "running"
        self.netns[container_id] = netns_path
        envd_dir = bundle / "disk" / "envd"  # SandboxResources.envd_dir
        if envd_dir.is_dir():
            (envd_dir / ENVD_SOCKET_NAME).touch()
        self.steps.hit(f"{self.name}.run_detached")

    async def kill(self, container_id: str) -> None:
        await self.steps.ahit(f"{self.name}.kill")
        self.containers.pop(container_id, None)
        self.netns.pop(container_id, None)

    async def pause(self, container_id: str) -> None:
        await self.steps.ahit(f"{self.name}.pause")
        if self.containers.get(container_id) != "running":
            raise RuntimeError(f"container {container_id} is not running")
        self.containers[container_id] = "paused"

    async def resume(self, container_id: str) -> None:
        await self.steps.ahit(f"{self.name}.resume")
        if self.containers.get(container_id) != "paused":
            raise RuntimeError(f"container {container_id} is not paused")
        self.containers[container_id] = "running"

    async def state(self, container_id: str) -> str | None:
        return self.containers.get(container_id)

    async def list(self) -> list[str]:
        self.steps.hit(f"{self.name}.list")
        return sorted(self.containers)


class FakeNetworks:
    """Sandbox networks by id, and whether the gateway netns exists."""

    def __init__(self, steps: Steps) -> None:
        self.steps = steps
        self.networks: dict[str, NetworkPlan] = {}
        self.policies: dict[str, EgressPolicy] = {}
        # Whether each sandbox's rules redirect all its TCP (content inspection active).
        self.inspect: dict[str, bool] = {}
        # Whether the last update_policy of each sandbox cut its disallowed flows.
        self.cuts: dict[str, bool] = {}
        self.gateway_up = False

    def plan(self, sandbox_id: str, slot: int) -> NetworkPlan:
        return NetworkPlan(
            sandbox_id=sandbox_id,
            slot=slot,
            address=f"10.77.{slot}.2",
            gateway_address=f"10.77.{slot}.1",
            netns_path=f"/run/netns/test-{sandbox_id}",
        )

    async def ensure_gateway(self) -> None:
        self.gateway_up = True
        await self.steps.ahit("networks.ensure_gateway")

    async def teardown_gateway(self) -> None:
        await self.steps.ahit("networks.teardown_gateway")
        self.gateway_up = False

    async def create(
        self,
        plan: NetworkPlan,
        policy: EgressPolicy,
        *,
        inspect: bool = False,
        on_netns: Callable[[], None] | None = None,
    ) -> None:
        self.networks[plan.sandbox_id] = plan
        self.policies[plan.sandbox_id] = policy
        self.inspect[plan.sandbox_id] = inspect
        await self.steps.ahit("networks.netns")
        if on_netns is not None:
            on_netns()
        await self.steps.ahit("networks.create")

    async def destroy(self, sandbox_id: str, slot: int) -> None:
        await self.steps.ahit("networks.destroy")
        self.networks.pop(sandbox_id, None)
        self.policies.pop(sandbox_id, None)
        self.inspect.pop(sandbox_id, None)

    async def update_policy(
        self,
        sandbox_id: str,
        slot: int,
        policy: EgressPolicy,
        *,
        inspect: bool = False,
        cut: bool = True,
    ) -> None:
        await self.steps.ahit("networks.update_policy")
        self.policies[sandbox_id] = policy
        self.inspect[sandbox_id] = inspect
        self.cuts[sandbox_id] = cut

    async def sweep(self, keep: set[str]) -> list[str]:
        await self.steps.ahit("networks.sweep")
        removed = sorted(s for s in self.networks if s not in keep)
        for sandbox_id in removed:
            self.networks.pop(sandbox_id)
            self.policies.pop(sandbox_id, None)
        return removed


class FakeGateway:
    """The gateway daemon's table: sandbox id → its entry (what state.json would hold)."""

    def __init__(self, steps: Steps) -> None:
        self.steps = steps
        self.restarts = 0
        self.entries: dict[str, GatewayEntry] = {}
        self.loaded = self.running = self.supervised = False

    def load(self) -> None:
        self.loaded = True

    async def start(self) -> None:
        await self.steps.ahit("gateway.start")
        self.running = True

    def supervise(self) -> None:
        self.supervised = True

    async def close(self) -> None:
        self.supervised = False

    async def stop(self) -> None:
        self.running = False

    async def ping(self) -> bool:
        return self.running

    def entry(self, sandbox_id: str) -> dict[str, Any] | None:
        entry = self.entries.get(sandbox_id)
        return None if entry is None else entry.to_wire()

    async def upsert(self, sandbox_id: str, entry: GatewayEntry) -> None:
        self.entries[sandbox_id] = entry
        await self.steps.ahit("gateway.upsert")

    async def sync(self, entries: Mapping[str, GatewayEntry]) -> None:
        self.entries.update(entries)
        await self.steps.ahit("gateway.sync")

    async def remove(self, sandbox_id: str) -> None:
        await self.steps.ahit("gateway.remove")
        self.entries.pop(sandbox_id, None)

    async def retain(self, keep: set[str]) -> None:
        await self.steps.ahit("gateway.retain")
        for sandbox_id in [s for s in self.entries if s not in keep]:
            del self.entries[sandbox_id]


class FakeHost(SandboxHost):
    """The real paths (`resources`, `present`) under a tmp state dir; mounts and cgroups are
    sets. `prepare` makes the sandbox and envd directories on disk; `release` removes them."""

    def __init__(self, settings: Settings, steps: Steps) -> None:
        super().__init__(settings, envd_binary=settings.state_dir / "bin" / "envd")
        self.steps = steps
        self.rootfs: set[str] = set()
        self.cgroups: set[str] = set()
        self.specs: dict[str, dict[str, Any]] = {}
        self.prepared_with: dict[str, tuple[list[Path], str, str]] = {}
        self.envd_listens = True  # False: envd's socket exists but nothing listens on it

    def prepare_node(self) -> None:
        for d in (self.settings.sandboxes_dir, self.settings.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.steps.hit("host.prepare_node")

    def runsc_compat(self) -> tuple[Path, Path]:
        bindir = self.settings.state_dir / "bin"
        return bindir / "statx-shim.so", bindir / "ld.so.preload"

    def prepare(
        self,
        sandbox_id: str,
        layers: Sequence[Path],
        address: str,
        nameserver: str,
        prefill: Callable[[Path], None] | None = None,
    ) -> None:
        res = self.resources(sandbox_id)
        res.envd_dir.mkdir(parents=True, exist_ok=True)
        if prefill is not None:
            res.upper.mkdir(parents=True, exist_ok=True)
            prefill(res.upper)
        # The merged view: the layers that exist on disk (tests make some), copied.
        for layer in layers:
            if layer.is_dir():
                shutil.copytree(layer, res.rootfs, symlinks=True, dirs_exist_ok=True)
        self.rootfs.add(sandbox_id)
        self.prepared_with[sandbox_id] = (list(layers), address, nameserver)
        self.steps.hit("host.prepare")

    def command_cgroup_mounts(self, sandbox_id: str, memory_bytes: int, pids: int) -> list[Mount]:
        self.cgroups.add(sandbox_id)
        self.steps.hit("host.command_cgroups")
        tasks = f"/sys/fs/cgroup/memory/{sandbox_id}/tasks"
        return [Mount("/run/declawd/cgroup/memory.tasks", tasks, "bind", ["bind", "rw"])]

    def write_spec(self, sandbox_id: str, spec: dict[str, Any]) -> None:
        self.specs[sandbox_id] = spec
        self.steps.hit("host.write_spec")

    def is_ready(self, sandbox_id: str) -> bool:
        return sandbox_id in self.rootfs and self.resources(sandbox_id).envd_socket.exists()

    def envd_listening(self, sandbox_id: str) -> bool:
        return self.envd_listens and self.resources(sandbox_id).envd_socket.exists()

    def log_tail(self, sandbox_id: str, size: int = 500) -> str:
        return "envd: fake log tail"

    async def release(self, sandbox_id: str, runtime: ContainerRuntime | None) -> list[str]:
        await self.steps.ahit("host.release")
        failed: list[str] = []
        if runtime is not None:
            try:
                await runtime.kill(sandbox_id)
            except Exception as exc:
                failed.append(f"container: {exc}")
        # As the real host: the cgroup's path follows from the id, a stray's goes too.
        self.cgroups.discard(sandbox_id)
        self.rootfs.discard(sandbox_id)
        if not failed:
            shutil.rmtree(self.resources(sandbox_id).dir, ignore_errors=True)
        return failed


class FakeUpstream:
    name = "fake"
    uplink = "fake0"

    def __init__(self, bundle: Path) -> None:
        self.up = False
        self.bundle = bundle

    async def ensure(self) -> None:
        self.up = True

    async def teardown(self) -> None:
        self.up = False

    def dns_server(self) -> str:
        return "192.0.2.53"

    def ca_bundle(self) -> Path:
        return self.bundle


class FakeEnvd:
    """One sandbox's envd client: health from the factory, processes recorded."""

    def __init__(self, factory: EnvdFactory, socket_path: str) -> None:
        self.factory = factory
        self.socket_path = socket_path
        self.started: list[tuple[str, dict[str, Any]]] = []
        self.ran: list[tuple[str, dict[str, Any]]] = []
        self.closed = False

    async def start(self, cmd: str, **kwargs: Any) -> int:
        self.started.append((cmd, kwargs))
        self.factory.steps.hit("envd.start")
        return 100 + len(self.started)

    async def run(self, cmd: str, *, timeout: float | None = None, **kwargs: Any) -> ProcessResult:
        self.ran.append((cmd, kwargs))
        self.factory.steps.hit("envd.run")
        code = self.factory.ready_exit_codes.pop(0) if self.factory.ready_exit_codes else 0
        return ProcessResult(stdout=b"", stderr=b"", exit_code=code)

    async def aclose(self) -> None:
        self.closed = True


class EnvdFactory:
    """`Sessions(connect=...)`: opens a `FakeEnvd` per socket path and keeps them all."""

    def __init__(self, steps: Steps) -> None:
        self.steps = steps
        self.ready_exit_codes: list[int] = []
        self.clients: list[FakeEnvd] = []

    def __call__(self, socket_path: str) -> Any:
        client = FakeEnvd(self, socket_path)
        self.clients.append(client)
        return client

    def of(self, sandbox_id: str) -> FakeEnvd:
        """The most recent client opened for the sandbox."""
        mine = [c for c in self.clients if f"/{sandbox_id}/" in c.socket_path]
        assert mine, f"no envd client was opened for {sandbox_id}"
        return mine[-1]


def sandbox_id(n: int) -> str:
    return f"sbx-{n:012x}"


def number_creates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Creates from now on get the ids `sandbox_id(1)`, `sandbox_id(2)`, ... in order."""
    counter = itertools.count(1)
    monkeypatch.setattr(create_module, "new_sandbox_id", lambda: sandbox_id(next(counter)))


def template(**changes: Any) -> Template:
    fields: dict[str, Any] = {
        "template_id": "tpl-000000000001",
        "team_id": "",
        "alias": "base",
        "state": "ready",
        "layer_keys": ["k1", "k2"],
        "layer_paths": [Path("/srv/layers/k1"), Path("/srv/layers/k2")],
        **changes,
    }
    return Template(**fields)


def record(sandbox_id: str, state: SandboxState, **changes: Any) -> SandboxRecord:
    """A record as the node would have written it (started unless still creating)."""
    fields: dict[str, Any] = {
        "team_id": TEAM,
        "template_id": "tpl-000000000001",
        "template_alias": "base",
        "runtime": "runc",
        "created_at": 1000.0,
        "timeout": 300,
        "end_at": 1300.0,
        "started_at": None if state is SandboxState.CREATING else 1001.0,
        **changes,
    }
    return SandboxRecord(sandbox_id=sandbox_id, state=state, **fields)


@dataclass
class NodeFakes:
    """A node built from fakes, a real `Store` and real `Settings` under one tmp dir."""

    settings: Settings
    store: Store
    steps: Steps
    runtimes: dict[str, FakeRuntime]
    networks: FakeNetworks
    gateway: FakeGateway
    host: FakeHost
    upstream: FakeUpstream
    envd: EnvdFactory
    parts: NodeParts
    node: Node = field(init=False)

    def __post_init__(self) -> None:
        self.node = Node(self.parts)

    @property
    def runtime(self) -> FakeRuntime:
        """runc's: the runtime sandboxes get unless a test asks for another."""
        return self.runtimes["runc"]

    @classmethod
    @contextmanager
    def build(
        cls, tmp_path: Path, faults: Faults | None = None, db: Path | str | None = None
    ) -> Iterator[NodeFakes]:
        settings = Settings(state_dir=tmp_path / "state", instance="unit")
        steps = Steps()
        store = Store(db or settings.db_path)
        runtimes = {"runc": FakeRuntime("runc", steps), "runsc": FakeRuntime("runsc", steps)}
        networks, gateway = FakeNetworks(steps), FakeGateway(steps)
        bundle = tmp_path / "upstream-ca.pem"
        bundle.write_bytes(UPSTREAM_CA)
        host, envd = FakeHost(settings, steps), EnvdFactory(steps)
        upstream = FakeUpstream(bundle)
        host.prepare_node()
        parts = NodeParts(
            settings=settings,
            store=store,
            runtimes=runtimes,
            networks=networks,
            daemon=gateway,
            upstream=upstream,
            host=host,
            sessions=Sessions(lambda sid: host.resources(sid).envd_socket, connect=envd),
            blobs=open_blobs(settings),
            faults=faults or Faults(),
        )
        try:
            yield cls(
                settings, store, steps, runtimes, networks, gateway, host, upstream, envd, parts
            )
        finally:
            store.close()

    def insert(self, rec: SandboxRecord) -> SandboxRecord:
        self.store.insert_sandbox(rec)
        return rec

    def get(self, sandbox_id: str) -> SandboxRecord:
        rec = self.store.get_sandbox(sandbox_id)
        assert rec is not None, f"{sandbox_id} is not in the store"
        return rec

    def leftovers(self, sandbox_id: str) -> dict[str, object]:
        """What the sandbox still holds anywhere on the fake node (empty: nothing)."""
        held: dict[str, object] = {
            "container": [n for n, r in self.runtimes.items() if sandbox_id in r.containers],
            "network": self.networks.networks.get(sandbox_id),
            "gateway entry": self.gateway.entries.get(sandbox_id),
            "CA": (self.host.resources(sandbox_id).dir / "ca").exists(),
            "rootfs": sandbox_id in self.host.rootfs,
            "cgroup": sandbox_id in self.host.cgroups,
            "directory": self.host.resources(sandbox_id).dir.exists(),
            "session": sandbox_id in self.parts.sessions,
        }
        return {what: v for what, v in held.items() if v}

    async def settle(self) -> None:
        """Wait for the node's background work (kills answered before their teardown)."""
        while self.node._background:
            await asyncio.gather(*self.node._background, return_exceptions=True)
