"""Add / replace / remove one sandbox's nft elements with 1, 100 and 500 sandboxes present,
both ways.

Run as root: `.venv/bin/python bench/bench_nft_control.py [--quick]`. Works in a throw-away
netns (`dcwbnc-gw`, or $DECLAWD_BENCH_NFT_CONTROL_NETNS) holding only the nft table: the
control path's netlink batches (`nftrules`, the default) against nft.py's scripts through
libnftables (`text`); each operation includes reading the slot's record back (`rec`), as
nftctl does. Baseline for each figure: the same operation with 1 sandbox present (goal for
the netlink backend: <= 1.5x at 500). Sandboxes present carry the bench policy and one
resolved address each (keyed by a stand-in ifindex: no veths here). Cleans up the netns.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from collections.abc import Callable

from common import Report, header, pct

from declawd.egress import nft as nftc
from declawd.egress import nftctl
from declawd.egress.policy import EgressPolicy

NETNS = os.environ.get("DECLAWD_BENCH_NFT_CONTROL_NETNS", "dcwbnc-gw")
POLICY = EgressPolicy.parse(["203.0.113.10/32", "api.openai.com"], ["0.0.0.0/0"])
OTHER = EgressPolicy.parse(["198.51.100.0/24"], ["10.0.0.0/8"])
PRESENT = (1, 100, 500)
ROUNDS = 50
BACKENDS = ("netlink", "text")
SLOT = 4000  # the measured sandbox, away from those present


def _addr(slot: int) -> str:
    return f"10.{80 + slot // 16384}.{slot // 64 % 256}.{slot % 64 * 4 + 2}"


def _time(rounds: int, op: Callable[[int], object], after: Callable[[int], object]) -> list[float]:
    """ms of op(i), `after(i)` untimed between rounds, one discarded warm-up round."""
    out = []
    for i in range(rounds + 1):
        t = time.perf_counter()
        op(i)
        ms = (time.perf_counter() - t) * 1000
        after(i)
        if i:
            out.append(ms)
    return out


def measure(present_counts: tuple[int, ...], rounds: int) -> dict[str, list[float]]:
    """Samples (ms) keyed by "<what> (<backend>) @<n present>"."""
    found: dict[str, list[float]] = {}
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        nftctl.nft_sync(NETNS, nftc.base_script(nftc.BaseLayout("lab0", nftc.floor_networks())))
        present = 0
        for target in present_counts:
            while present < target:
                present += 1
                nftctl.sandbox_add_sync(NETNS, present, _addr(present), POLICY, backend="netlink")
                resolved = nftc.add_resolved_script(10000 + present, ["203.0.113.10"], 300)
                nftctl.nft_sync(NETNS, resolved)
            for backend in BACKENDS:

                def add(_i: int, b: str = backend) -> None:
                    nftctl.sandbox_add_sync(NETNS, SLOT, _addr(SLOT), POLICY, backend=b)

                def remove(_i: int, b: str = backend) -> None:
                    nftctl.sandbox_remove_sync(NETNS, SLOT, backend=b)

                def update(i: int, b: str = backend) -> None:
                    policy = OTHER if i % 2 else POLICY
                    nftctl.sandbox_update_sync(NETNS, SLOT, _addr(SLOT), policy, backend=b)

                found[f"add one sandbox ({backend}) @{present}"] = _time(rounds, add, remove)
                add(0)
                found[f"replace its policy ({backend}) @{present}"] = _time(
                    rounds, update, lambda i: None
                )
                found[f"remove it ({backend}) @{present}"] = _time(rounds, remove, add)
                remove(0)
                for key in list(found)[-3:]:
                    print(f"  {key:48s}: p50 {statistics.median(found[key]):7.3f} ms", flush=True)
    finally:
        nftctl.forget_netns(NETNS)
        subprocess.run(["ip", "netns", "del", NETNS], check=False)
    return found


def main(quick: bool = False) -> Report:
    present = (1, 100) if quick else PRESENT
    rounds = 10 if quick else ROUNDS
    report = Report("nft_control", params={"present": list(present), "rounds": rounds})
    header(f"nft control path: one sandbox's elements with {present} sandboxes present")
    found = measure(present, rounds)
    header("nft control path figures (baseline: the same with 1 sandbox present)")
    many = present[-1]
    for key, ms in found.items():
        report.samples[key] = {"p50": pct(ms, 50), "p95": pct(ms, 95), "n": len(ms)}
    for key, ms in found.items():
        what, _, n = key.rpartition(" @")
        if int(n) == many:
            base = found[f"{what} @1"]
            report.add(
                f"{what}, {n} present, p50", pct(ms, 50), pct(base, 50), "ms", "same, 1 present"
            )
    header("netlink against libnftables (baseline: text backend, same count present)")
    for key, ms in found.items():
        if "(netlink)" in key:
            base = found[key.replace("(netlink)", "(text)")]
            what, _, n = key.rpartition(" @")
            report.add(
                f"{what.replace(' (netlink)', '')}, {n} present, p50",
                pct(ms, 50),
                pct(base, 50),
                "ms",
                "text backend",
            )
    report.write()
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="100 sandboxes, fewer rounds")
    main(parser.parse_args().quick)
