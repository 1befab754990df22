"""The node's view of sandbox networking: plan, create, update and destroy by sandbox id.

A thin adapter over egress/network.py (the gateway netns, per-sandbox netns, veth and nft
objects) so the node talks to one `Networks` interface that unit tests can fake. The
gateway's way out is the `Upstream` chosen at start.
"""

from __future__ import annotations

from collections.abc import Callable

from declawd.config import Settings
from declawd.egress.network import Gateway, SandboxNetwork, sweep
from declawd.egress.policy import EgressPolicy
from declawd.node.parts import NetworkPlan
from declawd.upstream import Upstream


class NodeNetwork:
    def __init__(self, settings: Settings, upstream: Upstream) -> None:
        self.settings = settings
        self.gateway = Gateway(settings, upstream)

    def plan(self, sandbox_id: str, slot: int) -> NetworkPlan:
        net = SandboxNetwork.attach(self.settings, sandbox_id, slot)
        return NetworkPlan(sandbox_id, slot, net.address, net.gateway_address, net.netns_path)

    async def ensure_gateway(self) -> None:
        await self.gateway.ensure()

    async def teardown_gateway(self) -> None:
        await self.gateway.teardown()

    async def create(
        self,
        plan: NetworkPlan,
        policy: EgressPolicy,
        *,
        inspect: bool = False,
        on_netns: Callable[[], None] | None = None,
    ) -> None:
        await SandboxNetwork.create(
            self.settings, plan.sandbox_id, plan.slot, policy, inspect=inspect, on_netns=on_netns
        )

    async def destroy(self, sandbox_id: str, slot: int) -> None:
        await SandboxNetwork.attach(self.settings, sandbox_id, slot).destroy()

    async def update_policy(
        self,
        sandbox_id: str,
        slot: int,
        policy: EgressPolicy,
        *,
        inspect: bool = False,
        cut: bool = True,
    ) -> None:
        net = SandboxNetwork.attach(self.settings, sandbox_id, slot)
        await net.update_policy(policy, inspect=inspect, cut=cut)

    async def sweep(self, keep: set[str]) -> list[str]:
        return await sweep(self.settings, keep)
