"""One sandbox's nftables elements as nf_tables netlink messages (pure): the control path's
netlink twin of `nft.sandbox_add_script` / `sandbox_update_script` / `sandbox_remove_script`.

libnftables dumps the whole table into its cache before every batch, so a sandbox costs more
the more sandboxes the node holds; these messages name only the shared sets and the
sandbox's keys in them. Invariant: each builder yields the messages of its script in the same
order with the same attributes nft 1.0.6 sends (`nft --debug=mnl`; checked against captured
bytes in tests), so one batch = one transaction leaves the same ruleset as `nft -f` of the
script. `record_keys` / `parse_record` read back what a slot holds (`rec`, `nrec`), which
replace and remove need and both backends use.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from declawd.egress import nft as nftc
from declawd.egress.nfnetlink import (
    NFT_MSG_DELSETELEM,
    NFT_MSG_NEWSETELEM,
    NLM_F_CREATE,
    attr,
    be32,
    nested,
    nft_message,
    split_table,
    string,
)
from declawd.egress.policy import EgressPolicy

FAMILY, TABLE_NAME = split_table(nftc.TABLE)

NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_DATA = 2
NFTA_SET_ELEM_FLAGS = 3
NFTA_DATA_VALUE = 1
IFNAMSIZ = 16
ELEMENTS_PER_MESSAGE = 1024  # an element is at most ~70 bytes; a nested attribute ≤ 64 KiB
_mark = struct.Struct("=I").pack  # `mark` is a host-order u32, in keys and data alike


@dataclass
class Batch:
    """Messages of one transaction, each with a label naming it in errors."""

    messages: list[bytes] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def add(self, msg: int, attrs: bytes, label: str, flags: int = 0) -> None:
        self.messages.append(nft_message(msg, FAMILY, attrs, flags=flags))
        self.labels.append(label)


def element(key: bytes, *, flags: int = 0, data: bytes = b"") -> list[bytes]:
    """An element's attributes, in libnftnl's order (flags, key, data)."""
    parts = [attr(NFTA_SET_ELEM_FLAGS, be32(flags))] if flags else []
    parts.append(nested(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, key)))
    if data:
        parts.append(nested(NFTA_SET_ELEM_DATA, attr(NFTA_DATA_VALUE, data)))
    return parts


def _elements(b: Batch, msg: int, set_name: str, elements: Sequence[list[bytes]]) -> None:
    head = attr(NFTA_SET_ELEM_LIST_TABLE, string(TABLE_NAME))
    head += attr(NFTA_SET_ELEM_LIST_SET, string(set_name))
    verb = "add" if msg == NFT_MSG_NEWSETELEM else "delete"
    for start in range(0, len(elements), ELEMENTS_PER_MESSAGE):
        chunk = elements[start : start + ELEMENTS_PER_MESSAGE]
        # libnftnl numbers the list entries 1, 2, ...; the kernel ignores their type.
        items = [nested(i, *parts) for i, parts in enumerate(chunk, 1)]
        attrs = head + nested(NFTA_SET_ELEM_LIST_ELEMENTS, *items)
        flags = NLM_F_CREATE if msg == NFT_MSG_NEWSETELEM else 0
        b.add(msg, attrs, f"{verb} element {set_name} ({len(chunk)})", flags)


def ifname_key(name: str) -> bytes:
    raw = name.encode()
    if len(raw) >= IFNAMSIZ:
        raise ValueError(f"interface name too long: {name!r}")
    return raw.ljust(IFNAMSIZ, b"\x00")


def _keyed(slot: int, keyed: Sequence[nftc.Keyed]) -> dict[str, list[list[bytes]]]:
    name = ifname_key(nftc.ifname(slot))
    out: dict[str, list[list[bytes]]] = {}
    for k in keyed:
        out.setdefault(k.set_name, []).append(element(name + k.address.packed))
    return out


def record_key(slot: int, index: int) -> bytes:
    """The `rec` key `ifname . mark`."""
    return ifname_key(nftc.ifname(slot)) + _mark(index)


def _install(b: Batch, slot: int, new: nftc.Elements) -> None:
    name = ifname_key(nftc.ifname(slot))
    for set_name, elems in _keyed(slot, new.keyed).items():
        _elements(b, NFT_MSG_NEWSETELEM, set_name, elems)
    if new.keyed:
        recs = [
            element(record_key(slot, i), data=k.address.packed + _mark(k.code))
            for i, k in enumerate(new.keyed)
        ]
        _elements(b, NFT_MSG_NEWSETELEM, nftc.REC, recs)
    _elements(b, NFT_MSG_NEWSETELEM, nftc.NREC, [element(name, data=_mark(len(new.keyed)))])
    for f in new.flags:
        _elements(b, NFT_MSG_NEWSETELEM, f, [element(name)])


def _uninstall(b: Batch, slot: int, old: nftc.Elements, keep_flags: Sequence[str] = ()) -> None:
    name = ifname_key(nftc.ifname(slot))
    for set_name, elems in _keyed(slot, old.keyed).items():
        _elements(b, NFT_MSG_DELSETELEM, set_name, elems)
    if old.keyed:
        recs = [element(record_key(slot, i)) for i in range(len(old.keyed))]
        _elements(b, NFT_MSG_DELSETELEM, nftc.REC, recs)
    _elements(b, NFT_MSG_NEWSETELEM, nftc.NREC, [element(name, data=_mark(len(old.keyed)))])
    _elements(b, NFT_MSG_DELSETELEM, nftc.NREC, [element(name)])
    drop = [f for f in nftc.FLAG_SETS if f not in keep_flags]
    for f in drop:
        _elements(b, NFT_MSG_NEWSETELEM, f, [element(name)])
    for f in drop:
        _elements(b, NFT_MSG_DELSETELEM, f, [element(name)])


def sandbox_update(
    slot: int,
    address: str,
    policy: EgressPolicy,
    inspect: bool = False,
    previous: nftc.Elements = nftc.NOTHING,
) -> Batch:
    """The twin of `nft.sandbox_update_script`: `previous` out, the policy's elements in."""
    b = Batch()
    new = nftc.sandbox_elements(address, policy, inspect)
    _uninstall(b, slot, previous, keep_flags=new.flags)
    _install(b, slot, new)
    return b


def sandbox_add(
    slot: int,
    address: str,
    policy: EgressPolicy,
    inspect: bool = False,
    previous: nftc.Elements = nftc.NOTHING,
) -> Batch:
    """The twin of `nft.sandbox_add_script` (the same transaction as an update)."""
    return sandbox_update(slot, address, policy, inspect, previous)


def sandbox_remove(slot: int, previous: nftc.Elements = nftc.NOTHING) -> Batch:
    """The twin of `nft.sandbox_remove_script`: valid whether or not the slot is installed."""
    b = Batch()
    _uninstall(b, slot, previous)
    return b


# Reading a slot's record back --------------------------------------------------------------
def count_key(slot: int) -> bytes:
    """The `nrec` key of a slot."""
    return ifname_key(nftc.ifname(slot))


def parse_count(data: bytes) -> int:
    """`nrec`'s data: the number of `rec` entries."""
    (n,) = struct.unpack("=I", data[:4])
    return int(n)


def parse_record(entries: Sequence[bytes]) -> nftc.Elements:
    """`rec`'s data for indexes 0..n-1 (`ipv4_addr . mark` each) → the slot's keyed elements.

    Flags are not recorded: removal clears every flag set whatever it holds.
    """
    keyed = []
    for data in entries:
        if len(data) < 8:
            raise ValueError(f"bad rec entry {data.hex()}")
        (code,) = struct.unpack("=I", data[4:8])
        keyed.append(nftc.Keyed.from_code(code, ipaddress.IPv4Address(data[:4])))
    return nftc.Elements((), tuple(keyed))
