"""Read the sandboxes out of a table of the previous nft layout (pure), to migrate it.

That layout gave each sandbox four chains (`pre_<slot>`, `nat_<slot>`, `fwd_<slot>`,
`in_<slot>`), interval sets `a4_<slot>` / `d4_<slot>` and dispatch maps `*_by_if`. A node
upgraded while sandboxes run must keep their rules in force: `Gateway.ensure` rebuilds the
table and installs what is read here in the same transaction (`nft.migrate_script`).
Resolved addresses (`r4_<slot>`) are not carried over: the gateway daemon starts again with
the new code and empties `resolved4` anyway; names are admitted again when next resolved.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any

from declawd.egress import nft

_DISPATCH = "fwd_by_if"  # a slot is complete once its forward chain is dispatched


def _networks(elems: Iterable[Any]) -> list[ipaddress.IPv4Network]:
    """An interval set's elements as `nft -j` lists them: an address, a prefix, a range."""
    out: list[ipaddress.IPv4Network] = []
    for e in elems:
        if isinstance(e, str):
            out.append(ipaddress.IPv4Network(e))
        elif "prefix" in e:
            out.append(ipaddress.IPv4Network(f"{e['prefix']['addr']}/{e['prefix']['len']}"))
        elif "range" in e:
            low, high = (ipaddress.IPv4Address(a) for a in e["range"])
            out += ipaddress.summarize_address_range(low, high)
        else:
            raise ValueError(f"unexpected set element {e!r}")
    return out


def _matches(rule: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [x["match"] for x in rule if "match" in x]


def old_layout_slots(items: list[dict[str, Any]]) -> dict[int, nft.Elements]:
    """slot → its elements under the current layout, for every dispatched slot of an old
    table's `nft -j list table` items; a slot without its anti-spoof rule is skipped (it
    was not complete, and drops all its traffic in the new layout too)."""
    dispatched: set[int] = set()
    rules: dict[str, list[list[dict[str, Any]]]] = {}
    sets: dict[str, list[Any]] = {}
    for item in items:
        if "map" in item and item["map"].get("name") == _DISPATCH:
            for key, _verdict in item["map"].get("elem", []):
                if m := re.fullmatch(r"s(\d+)", str(key)):
                    dispatched.add(int(m.group(1)))
        elif "set" in item:
            sets[item["set"]["name"]] = item["set"].get("elem", [])
        elif "rule" in item:
            rules.setdefault(item["rule"]["chain"], []).append(item["rule"]["expr"])
    out: dict[int, nft.Elements] = {}
    for slot in sorted(dispatched):
        address = next(
            (
                m["right"]
                for r in rules.get(f"pre_{slot}", [])
                for m in _matches(r)
                if m["op"] == "!=" and m["left"].get("payload", {}).get("field") == "saddr"
            ),
            None,
        )
        if address is None:
            continue
        fwd = rules.get(f"fwd_{slot}", [])
        nat = rules.get(f"nat_{slot}", [])
        out[slot] = nft.elements_of(
            str(address),
            _networks(sets.get(f"a4_{slot}", [])),
            _networks(sets.get(f"d4_{slot}", [])),
            open_=bool(fwd) and fwd[-1] == [{"accept": None}],
            domains=any(m.get("right") == f"@r4_{slot}" for r in nat for m in _matches(r)),
            inspect=any(
                m["left"].get("payload") == {"protocol": "udp", "field": "dport"}
                and m.get("right") == 443
                for r in fwd
                for m in _matches(r)
            ),
        )
    return out
