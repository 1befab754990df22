"""What a node is built from, as interfaces: runtimes, networks, the gateway daemon, the host.

`Node` receives a `NodeParts` instead of building its collaborators, so create, undo and
reconcile run in unit tests with fakes (tests/unit/node/), and `build_parts` is
the one place that wires the real ones (runc/runsc, nftables in the gateway netns, the
gateway daemon, the host's mounts and cgroups, the chosen upstream, the blob store).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from declawd.blobs import BlobStore, open_blobs
from declawd.config import Settings
from declawd.egress.policy import EgressPolicy
from declawd.inspect.ca import CaRef
from declawd.inspect.model import InspectionPolicy
from declawd.node.faults import NO_FAULTS, Faults
from declawd.node.sandbox import ContainerRuntime, SandboxHost
from declawd.node.sessions import Sessions
from declawd.store import Store
from declawd.upstream import Upstream


@dataclass(frozen=True)
class NetworkPlan:
    """A sandbox's addresses and netns, which follow from its slot alone (no I/O)."""

    sandbox_id: str
    slot: int
    address: str
    gateway_address: str
    netns_path: str


class Networks(Protocol):
    """Sandbox networks and the gateway netns they hang off (egress/network.py)."""

    def plan(self, sandbox_id: str, slot: int) -> NetworkPlan: ...

    async def ensure_gateway(self) -> None: ...

    async def teardown_gateway(self) -> None: ...

    async def create(
        self,
        plan: NetworkPlan,
        policy: EgressPolicy,
        *,
        inspect: bool = False,
        on_netns: Callable[[], None] | None = None,
    ) -> None:
        """The sandbox's netns, its link and its rules; `on_netns()` once the netns exists
        (before the rest), so a container can start in it meanwhile."""

    async def destroy(self, sandbox_id: str, slot: int) -> None: ...

    async def update_policy(
        self,
        sandbox_id: str,
        slot: int,
        policy: EgressPolicy,
        *,
        inspect: bool = False,
        cut: bool = True,
    ) -> None:
        """Replace the sandbox's rules; then cut its flows the new rules refuse (`cut`)."""

    async def sweep(self, keep: set[str]) -> list[str]: ...


@dataclass(frozen=True)
class GatewayEntry:
    """One sandbox as the gateway daemon sees it (an item of gateway/state.json): where it
    is, its egress policy, what the proxy inspects, and where its CA is. Never a secret
    value: vault bindings name secrets by id only."""

    slot: int
    address: str
    policy: EgressPolicy
    inspection: InspectionPolicy = field(default_factory=InspectionPolicy)
    ca: CaRef | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "address": self.address,
            "policy": self.policy.to_wire(),
            "inspection": self.inspection.to_wire(),
            "ca_dir": str(self.ca.dir) if self.ca else "",
            "ca_fingerprint": self.ca.fingerprint if self.ca else "",
        }


class GatewayHandle(Protocol):
    """The node's handle on the gateway daemon (node/gatewayd.py)."""

    restarts: int

    def load(self) -> None: ...

    async def start(self) -> None: ...

    def supervise(self) -> None: ...

    async def close(self) -> None: ...

    async def stop(self) -> None: ...

    async def ping(self) -> bool: ...

    def stats(self) -> dict[str, Any] | None: ...

    def entry(self, sandbox_id: str) -> dict[str, Any] | None:
        """The sandbox's item as last written to state.json (None: it has none)."""
        ...

    async def upsert(self, sandbox_id: str, entry: GatewayEntry) -> None: ...

    async def sync(self, entries: Mapping[str, GatewayEntry]) -> None:
        """Rewrite the items of these sandboxes at once; reload the daemon if it runs
        (never starts it)."""
        ...

    async def remove(self, sandbox_id: str) -> None: ...

    async def retain(self, keep: set[str]) -> None: ...


class SandboxLocks:
    """One lock per sandbox, held by whatever freezes or thaws its container (pause,
    resume, a snapshot's copy), so two of them never race on the same freezer."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    def of(self, sandbox_id: str) -> asyncio.Lock:
        lock = self._locks.get(sandbox_id)
        if lock is None:
            lock = self._locks[sandbox_id] = asyncio.Lock()
        return lock

    def forget(self, sandbox_id: str) -> None:
        lock = self._locks.get(sandbox_id)
        if lock is not None and not lock.locked():
            del self._locks[sandbox_id]


@dataclass
class NodeParts:
    settings: Settings
    store: Store
    runtimes: Mapping[str, ContainerRuntime]
    networks: Networks
    daemon: GatewayHandle
    upstream: Upstream
    host: SandboxHost
    sessions: Sessions
    # Snapshot archives and volume trees: the state directory, or the cluster's shared store.
    blobs: BlobStore
    faults: Faults = field(default=NO_FAULTS)
    locks: SandboxLocks = field(default_factory=SandboxLocks)


def build_parts(settings: Settings, store: Store) -> NodeParts:
    """The real node on this machine."""
    from declawd.node.gatewayd import GatewayDaemon
    from declawd.node.network import NodeNetwork
    from declawd.runtime import OciRuntime
    from declawd.upstream import choose_upstream

    upstream = choose_upstream(settings)
    host = SandboxHost(settings)
    return NodeParts(
        settings=settings,
        store=store,
        runtimes={
            "runc": OciRuntime("runc", settings.run_dir / "runc"),
            "runsc": OciRuntime("runsc", settings.run_dir / "runsc"),
        },
        networks=NodeNetwork(settings, upstream),
        daemon=GatewayDaemon(settings, upstream),
        upstream=upstream,
        host=host,
        sessions=Sessions(lambda sid: host.resources(sid).envd_socket),
        blobs=open_blobs(settings),
        faults=Faults.from_spec(settings.faults),
    )
