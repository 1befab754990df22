"""nf_tables netlink encoding for set elements, and ACK parsing (no kernel)."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from declawd.egress import nfnetlink as nl
from declawd.egress.nftctl import NftError
from declawd.egress.nftsets import (
    BACKEND_ENV,
    EXPIRY_GRACE_S,
    NftSets,
    admit_command,
    admit_ops,
    replace_command,
    replace_ops,
    resolved_key,
)


def attrs(data: bytes) -> list[tuple[int, bool, bytes]]:
    """(type, nested flag, value) of each attribute, checking lengths and 4-byte padding."""
    out, off = [], 0
    while off < len(data):
        length, atype = struct.unpack_from("=HH", data, off)
        assert length >= 4 and off + length <= len(data)
        out.append((atype & 0x3FFF, bool(atype & nl.NLA_F_NESTED), data[off + 4 : off + length]))
        off += (length + 3) & ~3
    assert off == len(data)
    return out


def split(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, seq, body) of each netlink message in a datagram."""
    out, off = [], 0
    while off < len(data):
        length, mtype, flags, seq, pid = struct.unpack_from("=IHHII", data, off)
        assert pid == 0 and length % 4 == 0
        out.append((mtype, flags, seq, data[off + 16 : off + length]))
        off += length
    assert off == len(data)
    return out


def test_newsetelem_layout() -> None:
    el = nl.ipv4_element("203.0.113.10", 60.2)
    msg = nl.setelem_message(
        nl.NFT_MSG_NEWSETELEM, 1, "declawd", "r4_3", [el], seq=7, flags=nl.NLM_F_CREATE
    )
    [(mtype, flags, seq, body)] = split(msg)
    assert mtype == (10 << 8) | 12  # NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWSETELEM
    assert flags == nl.NLM_F_REQUEST | nl.NLM_F_ACK | nl.NLM_F_CREATE
    assert seq == 7
    assert body[:4] == bytes([1, 0, 0, 0])  # NFPROTO_INET, NFNETLINK_V0, res_id 0
    table, set_, elements = attrs(body[4:])
    assert table == (1, False, b"declawd\x00")
    assert set_ == (2, False, b"r4_3\x00")
    assert elements[:2] == (3, True)
    [(t, is_nested, elem)] = attrs(elements[2])
    assert (t, is_nested) == (nl.NFTA_LIST_ELEM, True)
    key, timeout = attrs(elem)
    assert key[:2] == (nl.NFTA_SET_ELEM_KEY, True)
    assert attrs(key[2]) == [(nl.NFTA_DATA_VALUE, False, bytes([203, 0, 113, 10]))]
    assert timeout == (nl.NFTA_SET_ELEM_TIMEOUT, False, struct.pack("!Q", 61_000))  # be64 ms


def test_delsetelem_without_elements_is_a_flush() -> None:
    msg = nl.setelem_message(nl.NFT_MSG_DELSETELEM, 1, "declawd", "r4_3", None, seq=1)
    [(mtype, flags, _seq, body)] = split(msg)
    assert mtype == (10 << 8) | 14
    assert not flags & nl.NLM_F_CREATE
    assert [a[0] for a in attrs(body[4:])] == [1, 2]  # no NFTA_SET_ELEM_LIST_ELEMENTS


def test_key_only_element_has_no_timeout() -> None:
    msg = nl.setelem_message(
        nl.NFT_MSG_DELSETELEM, 1, "declawd", "r4_1", [nl.Element(b"\x01\x02\x03\x04")], seq=1
    )
    elem = attrs(attrs(attrs(split(msg)[0][3][4:])[2][2])[0][2])
    assert [a[0] for a in elem] == [nl.NFTA_SET_ELEM_KEY]


def test_batch_wraps_messages_for_the_nftables_subsystem() -> None:
    inner = nl.setelem_message(nl.NFT_MSG_DELSETELEM, 1, "t", "s", None, seq=5)
    msgs = split(nl.batch([inner, inner], 4, 6))
    assert [(m[0], m[2]) for m in msgs] == [(0x10, 4), (inner_t := (10 << 8) | 14, 5),
                                             (inner_t, 5), (0x11, 6)]  # fmt: skip
    for _mtype, _flags, _seq, body in (msgs[0], msgs[-1]):
        assert body == bytes([0, 0, 0, 10])  # AF_UNSPEC, v0, res_id = htons(10)


def test_ipv4_element_rounding_and_validation() -> None:
    assert nl.ipv4_element("1.2.3.4", 0.1).timeout_ms == 1000
    assert nl.ipv4_element("1.2.3.4", 300).timeout_ms == 300_000
    assert nl.ipv4_element("1.2.3.4").timeout_ms is None
    for bad in ("::1", "1.2.3.4; flush ruleset", "example.com"):
        with pytest.raises(ValueError):
            nl.ipv4_element(bad, 1)


def test_split_table() -> None:
    assert nl.split_table("inet declawd") == (1, "declawd")
    assert nl.split_table("ip filter") == (2, "filter")
    for bad in ("declawd", "inet", "foo declawd", "inet a b"):
        with pytest.raises(ValueError):
            nl.split_table(bad)


def _error(seq: int, err: int, text: str = "") -> bytes:
    echoed = struct.pack("=IHHII", 16, (10 << 8) | 12, 5, seq, 0)
    tlvs = nl.attr(nl.NLMSGERR_ATTR_MSG, text.encode() + b"\x00") if text else b""
    flags = (0x100 | (0x200 if text else 0)) if err else 0x100  # CAPPED (+ ACK_TLVS)
    body = struct.pack("=i", err) + echoed + tlvs
    return struct.pack("=IHHII", 16 + len(body), nl.NLMSG_ERROR, flags, seq, 1) + body


def test_parse_acks() -> None:
    data = _error(8, 0) + _error(9, -2, "set does not exist") + b"\x00" * 3
    assert list(nl.parse_acks(data)) == [nl.Ack(8, 0), nl.Ack(9, -2, "set does not exist")]
    assert list(nl.parse_acks(_error(1, -22)[:30])) == []  # truncated: nothing, no crash
    other = struct.pack("=IHHII", 20, 3, 0, 1, 0) + b"\x00" * 4  # NLMSG_DONE is not an ACK
    assert list(nl.parse_acks(other + _error(2, 0))) == [nl.Ack(2, 0)]


def _key(ifindex: int, address: str) -> bytes:
    return struct.pack("=I", ifindex) + socket.inet_aton(address)


def test_resolved_keys_are_host_order_ifindex_then_address() -> None:
    assert resolved_key(7, "203.0.113.1") == struct.pack("=I", 7) + bytes([203, 0, 113, 1])


def test_admit_ops_add_delete_add() -> None:
    ops = admit_ops(7, {"203.0.113.9": 30, "203.0.113.1": 300.2})
    assert [op for op, _ in ops] == [nl.NFT_MSG_NEWSETELEM, nl.NFT_MSG_DELSETELEM,
                                      nl.NFT_MSG_NEWSETELEM]  # fmt: skip
    timed = [
        nl.Element(_key(7, "203.0.113.1"), 301_000),
        nl.Element(_key(7, "203.0.113.9"), 30_000),
    ]
    assert ops[0][1] == ops[2][1] == timed
    assert ops[1][1] == [nl.Element(e.key) for e in timed]


def test_replace_ops_delete_exactly_what_was_admitted() -> None:
    assert replace_ops(7, {}, []) == []
    every = [nl.Element(_key(7, a)) for a in ("203.0.113.1", "203.0.113.2", "203.0.113.3")]
    assert replace_ops(7, {"203.0.113.1": 5}, ["203.0.113.3", "203.0.113.2"]) == [
        (nl.NFT_MSG_NEWSETELEM, every),  # an element already expired cannot fail the batch
        (nl.NFT_MSG_DELSETELEM, every),
        (nl.NFT_MSG_NEWSETELEM, [nl.Element(_key(7, "203.0.113.1"), 5000)]),
    ]


def test_text_commands_match_the_ops() -> None:
    assert admit_command("inet declawd", 7, {"203.0.113.1": 0.5}) == (
        "add element inet declawd resolved4 { 7 . 203.0.113.1 timeout 1s }\n"
        "delete element inet declawd resolved4 { 7 . 203.0.113.1 }\n"
        "add element inet declawd resolved4 { 7 . 203.0.113.1 timeout 1s }\n"
    )
    assert replace_command("inet declawd", 7, {}, []) == ""
    assert replace_command("inet declawd", 7, {}, ["203.0.113.2"]) == (
        "add element inet declawd resolved4 { 7 . 203.0.113.2 }\n"
        "delete element inet declawd resolved4 { 7 . 203.0.113.2 }\n"
    )
    with pytest.raises(ValueError):
        admit_command("inet declawd", 7, {"203.0.113.1 } ; flush ruleset ; {": 5})


class Recorder:
    def __init__(self) -> None:
        self.commands: list[str] = []

    def run(self, cmd: str) -> str:
        self.commands.append(cmd)
        return ""

    def close(self) -> None:
        pass


def test_replace_deletes_what_this_object_admitted(monkeypatch: pytest.MonkeyPatch) -> None:
    sets = NftSets(backend="binary")
    rec = Recorder()
    sets._text = rec
    monkeypatch.setattr(sets, "ifindex", lambda slot: 40 + slot)
    sets.admit(1, {"203.0.113.1": 30})
    sets.admit(2, {"203.0.113.9": 30})
    sets.admit(1, {"203.0.113.2": 30})
    rec.commands.clear()
    sets.replace(1, {"203.0.113.2": 10})
    assert rec.commands == [replace_command("inet declawd", 41, {"203.0.113.2": 10},
                                            ["203.0.113.1", "203.0.113.2"])]  # fmt: skip
    rec.commands.clear()
    sets.replace(1, {})  # only what the last replace put in remains to delete
    assert rec.commands == [replace_command("inet declawd", 41, {}, ["203.0.113.2"])]
    sets.reset()
    assert rec.commands[-1] == "flush set inet declawd resolved4\n"
    rec.commands.clear()
    sets.replace(2, {})  # forgotten with the flush: nothing to do
    assert rec.commands == []


def test_prune_forgets_only_what_surely_expired(monkeypatch: pytest.MonkeyPatch) -> None:
    sets = NftSets(backend="binary")
    sets._text = Recorder()
    monkeypatch.setattr(sets, "ifindex", lambda slot: 40 + slot)
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    sets.admit(1, {"203.0.113.1": 30, "203.0.113.2": 300})
    now[0] += 30 + EXPIRY_GRACE_S + 1
    sets.prune()
    assert sets._admitted == {41: {"203.0.113.2": 1000.0 + 300 + EXPIRY_GRACE_S}}
    now[0] += 300
    sets.prune()
    assert sets._admitted == {}


def test_ifindex_of_a_missing_interface_is_an_nft_error() -> None:
    with pytest.raises(NftError, match="no interface s99999"):
        NftSets(backend="binary").ifindex(99999)


def test_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BACKEND_ENV, "binary")
    assert NftSets().backend == "binary"
    assert NftSets(use_library=False).backend == "binary"
    monkeypatch.setenv(BACKEND_ENV, "bogus")
    with pytest.raises(ValueError, match="bogus"):
        NftSets()
