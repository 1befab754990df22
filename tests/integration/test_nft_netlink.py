"""The control path over netlink against `nft -f` of nft.py's scripts, in the kernel.

Needs root. Two throw-away namespaces (`<prefix>-nl`, `<prefix>-txt`) each hold only the
base table; the same add / update / remove sequence goes in through `nftrules` batches in
one and through `nft -f` of the scripts in the other, and `nft -j list table` must then be
the same (handles and timeouts' remaining time aside). The text side also captures nft's own
batch bytes (`--debug=mnl`) and checks the encoder against them, live. Then 500 sandboxes:
add / replace / remove one more, and a refused batch leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from declawd.egress import nft as nftc
from declawd.egress import nftctl, nftrules
from declawd.egress.nfnetlink import NFT_MSG_NEWSETELEM
from declawd.egress.nftctl import NftError
from declawd.egress.policy import EgressPolicy
from tests.unit import test_nft_netlink as golden

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

PREFIX = os.environ.get("DECLAWD_TEST_NFT_NETLINK_NS", "dcwtnl")
POLICY = EgressPolicy.parse(["203.0.113.10/32", "api.openai.com"], ["0.0.0.0/0"])
BASE = nftc.base_script(nftc.BaseLayout("lab0", nftc.floor_networks()))
MANY = 500


def _ip_netns(*args: str) -> None:
    subprocess.run(["ip", "netns", *args], check=True)


def nft(ns: str, *args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "nft", *args],
        input=stdin,
        text=True,
        capture_output=True,
        check=True,
    ).stdout


def listing(ns: str) -> list[dict[str, Any]]:
    """`nft -j list table inet declawd` without what differs between equal rulesets."""

    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if k not in ("handle", "expires")}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    items = json.loads(nft(ns, "-j", "list", "table", *nftc.TABLE.split()))["nftables"]
    return [clean(i) for i in items if "metainfo" not in i]


def slot_objects(ns: str, slot: int) -> list[Any]:
    """The elements of the slot's interface in any set or map (in listing order)."""
    name = nftc.ifname(slot)
    out = []
    for item in listing(ns):
        ((kind, body),) = item.items()
        for elem in body.get("elem", []) if kind in ("set", "map") else []:
            key = elem[0] if kind == "map" else elem
            if isinstance(key, dict) and "concat" in key:
                key = key["concat"][0]
            if key == name:
                out.append((body["name"], elem))
    return out


@pytest.fixture
def pair() -> Iterator[tuple[str, str]]:
    nl, txt = f"{PREFIX}-nl", f"{PREFIX}-txt"
    for ns in (nl, txt):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        _ip_netns("add", ns)
        nft(ns, "-f", "-", stdin=BASE)
    try:
        yield nl, txt
    finally:
        for ns in (nl, txt):
            nftctl.forget_netns(ns)
            _ip_netns("del", ns)


def test_same_ruleset_and_bytes_as_nft(pair: tuple[str, str]) -> None:
    nl, txt = pair
    captured: dict[str, list[golden.Msg]] = {}
    for case, (script, batch) in golden.CASES.items():
        if case == "update_keep_names":  # resolved addresses must survive this update
            for ns in pair:
                # (keyed by ifindex: 1, the netns' loopback, stands in for a veth)
                nft(ns, "-f", "-", stdin=nftc.add_resolved_script(1, ["203.0.113.77"], 300))
        b = batch()
        nftctl.apply_batch(nl, b, case)
        captured[case] = golden.parse_mnl(nft(txt, "--debug=mnl", "-f", "-", stdin=script()))
        assert listing(nl) == listing(txt), case
        golden.assert_same(case, captured[case], b)
    if os.environ.get("DECLAWD_NFT_GOLDEN_PRINT"):
        print("GOLDEN_BLOB:", golden.encode_golden(captured))


def test_backends_through_nftctl(pair: tuple[str, str]) -> None:
    nl, txt = pair
    for backend, ns in (("netlink", nl), ("text", txt)):
        nftctl.sandbox_add_sync(ns, 3, "10.81.0.14", POLICY, backend=backend)
        nftctl.sandbox_update_sync(ns, 3, "10.81.0.14", POLICY, True, backend=backend)
        nftctl.sandbox_add_sync(ns, 4, "10.81.0.18", EgressPolicy.open(), backend=backend)
        nftctl.sandbox_remove_sync(ns, 4, backend=backend)
        nftctl.sandbox_remove_sync(ns, 4, backend=backend)  # absent: still fine
    assert listing(nl) == listing(txt)
    assert slot_objects(nl, 4) == []


def test_add_replace_remove_with_many_present(pair: tuple[str, str]) -> None:
    nl, txt = pair
    for slot in range(1, MANY + 1):
        nftctl.apply_batch(
            nl,
            nftrules.sandbox_add(slot, f"10.81.{slot // 64}.{slot % 64 * 4 + 2}", POLICY),
            f"sandbox {slot}",
        )
    extra, addr = 1000, "10.82.0.2"
    for ns, backend in ((nl, "netlink"), (txt, "text")):
        nftctl.sandbox_add_sync(ns, extra, addr, POLICY, backend=backend)
    assert slot_objects(nl, extra) == slot_objects(txt, extra) != []
    for ns, backend in ((nl, "netlink"), (txt, "text")):
        nftctl.sandbox_update_sync(ns, extra, addr, EgressPolicy.open(), True, backend=backend)
    assert slot_objects(nl, extra) == slot_objects(txt, extra)
    nftctl.sandbox_remove_sync(nl, extra)
    assert slot_objects(nl, extra) == []
    # Sandboxes are elements only: the ruleset is the base one whatever the count.
    fresh = listing(txt)
    for kinds in (("chain",), ("rule",)):
        assert [i for i in listing(nl) if set(i) & set(kinds)] == [
            i for i in fresh if set(i) & set(kinds)
        ]
    assert len(slot_objects(nl, MANY)) == len(slot_objects(nl, 1)) > 0


def test_refused_batch_changes_nothing(pair: tuple[str, str]) -> None:
    nl, _ = pair
    before = listing(nl)
    b = nftrules.sandbox_add(6, "10.81.0.26", POLICY)
    # An element of a set that does not exist, last: everything before it is rolled back.
    bad = nftrules.Batch()
    nftrules._elements(bad, NFT_MSG_NEWSETELEM, "no_such_set", [nftrules.element(bytes(4))])
    b.messages += bad.messages
    b.labels += bad.labels
    with pytest.raises(NftError, match="no_such_set"):
        nftctl.apply_batch(nl, b, "sandbox 6")
    assert listing(nl) == before


def test_missing_table_is_an_nft_error(pair: tuple[str, str]) -> None:
    nl, _ = pair
    nft(nl, "delete", "table", *nftc.TABLE.split())
    with pytest.raises(NftError):
        nftctl.sandbox_remove_sync(nl, 1)
