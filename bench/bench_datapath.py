"""Time to apply one sandbox's nft rules with 1, 100 and 500 sandboxes already present.

Run as root: `.venv/bin/python bench/bench_datapath.py [--quick]`. Works in a throw-away
netns (`dcwbdp-gw`, its own instance name) holding only the nft table (no veths needed for
rule timing), compares libnftables-in-process with `nsenter nft -f -`, the resolver's admit
through libnftables with the netlink backend (`declawd.egress.nfnetlink`), and two probes that
split libnftables' cache cost; then times a full SandboxNetwork.create (netns + veth + rules)
against a lab-mode gateway. Baseline for each figure: the same operation with 1 sandbox
present. Cleans up everything it creates.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import Report, header, summary

from declawd.config import Settings
from declawd.egress import nft as nftc
from declawd.egress.network import Gateway, SandboxNetwork, slot_addresses
from declawd.egress.nftctl import forget_netns, nft_sync
from declawd.egress.nftsets import NftSets, admit_command
from declawd.egress.policy import EgressPolicy
from declawd.host import delete_netns, netns_path, run
from declawd.upstream import choose_upstream

POLICY = EgressPolicy.parse(["203.0.113.10/32", "api.openai.com"], ["0.0.0.0/0"])
PRESENT = (1, 100, 500)
ROUNDS = 20
INSTANCE = os.environ.get("DECLAWD_BENCH_DATAPATH_INSTANCE", "dcwbdp")
POOL = os.environ.get("DECLAWD_BENCH_POOL", "10.81.0.0/16")


def _time_apply(
    netns: str, settings: Settings, slot: int, backend: str, rounds: int = ROUNDS
) -> list[float]:
    _, addr = slot_addresses(settings, slot)
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        nft_sync(netns, nftc.sandbox_add_script(slot, addr, POLICY), backend=backend)
        out.append((time.perf_counter() - t) * 1000)
        installed = nftc.sandbox_elements(addr, POLICY)
        nft_sync(netns, nftc.sandbox_remove_script(slot, installed), backend=backend)
    return out


def rule_bench(
    settings: Settings, present_counts: tuple[int, ...] = PRESENT, rounds: int = ROUNDS
) -> dict[str, list[float]]:
    """Samples (ms) keyed by "<what> @<n present>"."""
    found: dict[str, list[float]] = {}
    ns = settings.gateway_netns
    asyncio.run(run("ip", "netns", "add", ns))
    sets: NftSets | None = None
    try:
        nft_sync(ns, nftc.base_script(nftc.BaseLayout("lab0", nftc.floor_networks())))
        # The resolver admits by the sandbox veth's ifindex: a veth `s1` stands in for it.
        asyncio.run(
            run("ip", "-n", ns, "link", "add", nftc.ifname(1), "type", "veth", "peer", "s1p")
        )
        sets = admitter = NftSets(backend="netlink", netns_path=netns_path(ns))
        present = 0
        for target in present_counts:
            # Fill with other sandboxes' objects, each with a few resolved addresses.
            while present < target:
                present += 1
                _, addr = slot_addresses(settings, present)
                nft_sync(ns, nftc.sandbox_add_script(present, addr, POLICY))
                # resolved addresses are keyed by ifindex; any number serves as a key here
                nft_sync(ns, nftc.add_resolved_script(1000 + present, ["203.0.113.10"], 300))
            for backend in ("lib", "nsenter"):
                ms = _time_apply(ns, settings, 1000, backend, rounds)
                found[f"apply one sandbox ({backend}) @{present}"] = ms
                print(f"apply one sandbox, {present:4d} present, {backend:7s}: "
                      f"median {statistics.median(ms):6.2f} ms  max {max(ms):6.2f} ms")  # fmt: skip
            _, addr = slot_addresses(settings, 1)
            ms = []
            for _ in range(rounds):
                t = time.perf_counter()
                # what the slot holds now (the node reads it from `rec` first)
                held = nftc.sandbox_elements(addr, POLICY)
                nft_sync(ns, nftc.sandbox_update_script(1, addr, POLICY, previous=held))
                ms.append((time.perf_counter() - t) * 1000)
            found[f"update policy transaction @{present}"] = ms
            print(f"update_policy transaction, {present:4d} present:  "
                  f"median {statistics.median(ms):6.2f} ms")  # fmt: skip
            # What the resolver does before releasing every allowed answer, both backends.
            found[f"resolver admit via libnftables (one address) @{present}"] = _time(
                rounds,
                lambda i: nft_sync(
                    ns, admit_command(nftc.TABLE, 999, {f"203.0.113.{i % 200}": 300})
                ),
            )
            found[f"resolver admit via netlink (one address) @{present}"] = _time(
                rounds, lambda i: admitter.admit(1, {f"203.0.113.{i % 200}": 300})
            )
            # Probes: a script needing only the table cache vs one needing chains + sets.
            found[f"probe: add+delete an empty chain (lib) @{present}"] = _time(
                rounds,
                lambda i: nft_sync(
                    ns, f"add chain {nftc.TABLE} probe\ndelete chain {nftc.TABLE} probe\n"
                ),
            )
            nft_sync(ns, f"add chain {nftc.TABLE} probe\n")
            found[f"probe: add a rule to an unreferenced chain (lib) @{present}"] = _time(
                rounds, lambda i: nft_sync(ns, f"add rule {nftc.TABLE} probe accept\n")
            )
            nft_sync(ns, f"flush chain {nftc.TABLE} probe\ndelete chain {nftc.TABLE} probe\n")
            for key in list(found)[-4:]:
                print(f"{key:62s}: median {statistics.median(found[key]):6.2f} ms")
    finally:
        if sets is not None:
            sets.close()
        forget_netns(ns)
        asyncio.run(delete_netns(ns))
    return found


def _time(rounds: int, op: Callable[[int], object]) -> list[float]:
    """`rounds` timed calls of op(i) (ms), after one discarded warm-up call."""
    op(rounds)
    out = []
    for i in range(rounds):
        t = time.perf_counter()
        op(i)
        out.append((time.perf_counter() - t) * 1000)
    return out


async def create_bench(settings: Settings, count: int = 10) -> list[float]:
    gw = Gateway(settings, choose_upstream(settings))
    try:
        await gw.ensure()
        ms = []
        for i in range(count):
            t = time.perf_counter()
            sbx = await SandboxNetwork.create(settings, f"sbx-bench{i:07d}", 1 + i, POLICY)
            ms.append((time.perf_counter() - t) * 1000)
            await sbx.destroy()
        print(f"SandboxNetwork.create (netns+veth+rules): median {statistics.median(ms):.1f} ms")
    finally:
        await gw.teardown()
        await delete_netns(settings.lab_netns)
    return ms


def main(quick: bool = False) -> Report:
    present = (1, 20, 100) if quick else PRESENT
    rounds = 5 if quick else ROUNDS
    tmp = Path(tempfile.mkdtemp(prefix="dcwbench-datapath-"))
    report = Report("datapath", params={"present": list(present), "rounds": rounds})
    header(f"6. datapath: apply one sandbox's rules with {present} sandboxes present")
    try:
        settings = Settings(state_dir=tmp, instance=INSTANCE, pool=POOL, lab=True)
        found = rule_bench(settings, present, rounds)
        creates = asyncio.run(create_bench(settings, 3 if quick else 10))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    header("6. datapath figures (baseline: the same with 1 sandbox present)")
    for key, ms in found.items():
        what, _, n = key.rpartition(" @")
        report.samples[key] = summary(ms)
        if n != "1":
            base = found[f"{what} @1"]
            report.add(f"{what}, {n} present, median ms", statistics.median(ms),
                       statistics.median(base), "ms", "same, 1 present")  # fmt: skip
    report.samples["SandboxNetwork.create ms"] = summary(creates)
    report.write()
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer sandboxes and rounds")
    main(parser.parse_args().quick)
