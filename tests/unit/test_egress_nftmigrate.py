"""Reading sandboxes out of a table of the previous nft layout (no kernel).

`nft_old_layout.json` is `nft -j list table inet declawd` of the previous layout's base
script plus three sandboxes, captured on kernel 6.18 / nft 1.0.6 from the code before the
flat layout: slot 5 (CIDRs + domains, deny-all), 12 (CIDRs allowed and denied, open,
inspected), 7 (open).
"""

from __future__ import annotations

import json
from pathlib import Path

from declawd.egress import nft
from declawd.egress.nftmigrate import old_layout_slots
from declawd.egress.policy import EgressPolicy as P

ITEMS = json.loads((Path(__file__).parent / "nft_old_layout.json").read_text())["nftables"]
A = P.parse(["203.0.113.10/32", "198.51.100.0/24", "api.openai.com"], ["0.0.0.0/0"])
D = P.parse(
    ["198.51.100.0/24", "8.8.8.8"],
    ["10.0.0.0/8", "11.0.0.0/8", "224.0.0.0/3", "1.2.3.4", "5.6.7.8/31"],
)


def test_every_sandbox_read_back_as_its_policy_would_install_it() -> None:
    assert old_layout_slots(ITEMS) == {
        5: nft.sandbox_elements("10.81.0.22", A),
        7: nft.sandbox_elements("10.81.0.30", P.open()),
        12: nft.sandbox_elements("10.81.0.50", D, inspect=True),
    }


def test_a_slot_not_dispatched_or_without_its_spoof_rule_is_skipped() -> None:
    undispatched = [
        i if i.get("map", {}).get("name") != "fwd_by_if"
        else {"map": {**i["map"], "elem": [e for e in i["map"]["elem"] if e[0] != "s7"]}}
        for i in ITEMS
    ]  # fmt: skip
    assert set(old_layout_slots(undispatched)) == {5, 12}
    no_pre = [i for i in ITEMS if i.get("rule", {}).get("chain") != "pre_12"]
    assert set(old_layout_slots(no_pre)) == {5, 7}


def _installs(script: str) -> list[str]:
    """An add script's lines after its clearing part (which ends with its last delete)."""
    lines = script.splitlines()
    last = max(i for i, line in enumerate(lines) if line.startswith("delete"))
    return lines[last + 1 :]


def test_migrate_script_rebuilds_then_installs_every_slot_in_one_script() -> None:
    layout = nft.BaseLayout("lab0", nft.floor_networks())
    script = nft.migrate_script(layout, old_layout_slots(ITEMS))
    base = nft.base_script(layout, rebuild=True)
    assert script.startswith(base)
    assert script[len(base) :].splitlines() == [
        *_installs(nft.sandbox_add_script(5, "10.81.0.22", A)),
        *_installs(nft.sandbox_add_script(7, "10.81.0.30", P.open())),
        *_installs(nft.sandbox_add_script(12, "10.81.0.50", D, inspect=True)),
    ]
