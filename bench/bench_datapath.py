"""Time to apply one sandbox's nft rules with 1, 100 and 500 sandboxes already present.

Run as root: `.venv/bin/python bench/bench_datapath.py`. Works in a throw-away netns
(`dcwbench-gw`) holding only the nft table (no veths needed for rule timing), compares
libnftables-in-process with `nsenter nft -f -`, then times a full SandboxNetwork.create
(netns + veth + rules) against a lab-mode gateway. Cleans up everything it creates.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from declawd.config import Settings
from declawd.egress import nft as nftc
from declawd.egress.netns import delete_netns, forget_netns, nft_sync, run
from declawd.egress.network import Gateway, SandboxNetwork, slot_addresses
from declawd.egress.policy import EgressPolicy

POLICY = EgressPolicy.parse(["203.0.113.10/32", "api.openai.com"], ["0.0.0.0/0"])
PRESENT = (1, 100, 500)
ROUNDS = 20


def _time_apply(netns: str, settings: Settings, slot: int, backend: str) -> list[float]:
    _, addr = slot_addresses(settings, slot)
    out = []
    for _ in range(ROUNDS):
        t = time.perf_counter()
        nft_sync(netns, nftc.sandbox_add_script(slot, addr, POLICY), backend=backend)
        out.append((time.perf_counter() - t) * 1000)
        nft_sync(netns, nftc.sandbox_remove_script(slot), backend=backend)
    return out


def rule_bench(settings: Settings) -> None:
    ns = settings.gateway_netns
    asyncio.run(run("ip", "netns", "add", ns))
    try:
        nft_sync(ns, nftc.base_script(nftc.BaseLayout("lab0", nftc.floor_networks())))
        present = 0
        for target in PRESENT:
            # Fill with other sandboxes' objects, each with a few resolved addresses.
            while present < target:
                present += 1
                _, addr = slot_addresses(settings, present)
                nft_sync(ns, nftc.sandbox_add_script(present, addr, POLICY))
                nft_sync(ns, nftc.add_resolved_script(present, ["203.0.113.10"], 300))
            for backend in ("lib", "nsenter"):
                ms = _time_apply(ns, settings, 1000, backend)
                print(f"apply one sandbox, {present:4d} present, {backend:7s}: "
                      f"median {statistics.median(ms):6.2f} ms  max {max(ms):6.2f} ms")  # fmt: skip
            _, addr = slot_addresses(settings, 1)
            ms = []
            for _ in range(ROUNDS):
                t = time.perf_counter()
                nft_sync(ns, nftc.sandbox_update_script(1, addr, POLICY))
                ms.append((time.perf_counter() - t) * 1000)
            print(f"update_policy transaction, {present:4d} present:  "
                  f"median {statistics.median(ms):6.2f} ms")  # fmt: skip
    finally:
        forget_netns(ns)
        asyncio.run(delete_netns(ns))


async def create_bench(settings: Settings) -> None:
    gw = Gateway(settings)
    try:
        await gw.ensure()
        ms = []
        for i in range(10):
            t = time.perf_counter()
            sbx = await SandboxNetwork.create(settings, f"sbx-bench{i:07d}", 1 + i, POLICY)
            ms.append((time.perf_counter() - t) * 1000)
            await sbx.destroy()
        print(f"SandboxNetwork.create (netns+veth+rules): median {statistics.median(ms):.1f} ms")
    finally:
        await gw.teardown()
        await delete_netns(settings.lab_netns)


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="dcwbench-"))
    settings = Settings(state_dir=tmp, instance="dcwbench", pool="10.198.0.0/16", lab=True)
    rule_bench(settings)
    asyncio.run(create_bench(settings))


if __name__ == "__main__":
    main()
