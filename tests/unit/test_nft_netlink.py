"""The control path's netlink encoder (`nftrules`) against the bytes nft 1.0.6 itself sends.

GOLDEN holds, for each case in CASES, the batch `nft --debug=mnl -f` sent for nft.py's script
on this machine kind (kernel 6.18, nft 1.0.6), captured in a scratch netns holding only the
base table; `tests/integration/test_nft_netlink.py` captures it again live and prints a fresh
blob when it differs. Comparison is attribute by attribute after `normalize`, which removes
only what is nft's bookkeeping, not an object's content: transaction-local set ids, list
entry numbers, and a named set's elements nft sends before the same batch flushes that set.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from declawd.egress import nfnetlink as nl
from declawd.egress import nft as nftc
from declawd.egress import nftctl, nftrules
from declawd.egress.policy import EgressPolicy as P

A = P.parse(["203.0.113.10/32", "api.openai.com"], ["0.0.0.0/0"])
DENY = P.parse(
    ["198.51.100.0/24", "8.8.8.8"], ["10.0.0.0/8", "11.0.0.0/8", "224.0.0.0/3", "1.2.3.4"]
)
DOM = P.parse(["api.openai.com", "*.github.com"], ["0.0.0.0/0"])
ALLZERO = P.parse(["0.0.0.0/0"], [])


def had(address: str, policy: P, inspect: bool = False) -> nftc.Elements:
    """What `rec` holds for a slot installed with `policy` (as nftctl reads it back)."""
    full = nftc.sandbox_elements(address, policy, inspect)
    return nftc.Elements((), full.keyed)


# name → (nft.py script, nftrules batch); the live capture applies them in this order, and
# each case's `previous` is what the slot holds after the cases before it.
CASES: dict[str, tuple[Callable[[], str], Callable[[], nftrules.Batch]]] = {
    "add_cidr_domains": (
        lambda: nftc.sandbox_add_script(5, "10.81.0.22", A),
        lambda: nftrules.sandbox_add(5, "10.81.0.22", A),
    ),
    "add_open_inspect": (
        lambda: nftc.sandbox_add_script(7, "10.81.0.30", P.open(), True),
        lambda: nftrules.sandbox_add(7, "10.81.0.30", P.open(), True),
    ),
    "add_deny": (
        lambda: nftc.sandbox_add_script(12, "10.81.0.50", DENY),
        lambda: nftrules.sandbox_add(12, "10.81.0.50", DENY),
    ),
    "add_domains_inspect": (
        lambda: nftc.sandbox_add_script(9, "10.81.0.38", DOM, True),
        lambda: nftrules.sandbox_add(9, "10.81.0.38", DOM, True),
    ),
    "add_allow_all": (
        lambda: nftc.sandbox_add_script(300, "10.81.4.178", ALLZERO),
        lambda: nftrules.sandbox_add(300, "10.81.4.178", ALLZERO),
    ),
    "update_keep_names": (
        lambda: nftc.sandbox_update_script(5, "10.81.0.22", A, False, had("10.81.0.22", A)),
        lambda: nftrules.sandbox_update(5, "10.81.0.22", A, False, had("10.81.0.22", A)),
    ),
    "update_open": (
        lambda: nftc.sandbox_update_script(5, "10.81.0.22", P.open(), False, had("10.81.0.22", A)),
        lambda: nftrules.sandbox_update(5, "10.81.0.22", P.open(), False, had("10.81.0.22", A)),
    ),
    "update_deny_inspect": (
        lambda: nftc.sandbox_update_script(12, "10.81.0.50", DENY, True, had("10.81.0.50", DENY)),
        lambda: nftrules.sandbox_update(12, "10.81.0.50", DENY, True, had("10.81.0.50", DENY)),
    ),
    "readd_over_stale": (
        lambda: nftc.sandbox_add_script(12, "10.81.0.54", A, False, had("10.81.0.50", DENY)),
        lambda: nftrules.sandbox_add(12, "10.81.0.54", A, False, had("10.81.0.50", DENY)),
    ),
    "remove": (
        lambda: nftc.sandbox_remove_script(5, had("10.81.0.22", P.open())),
        lambda: nftrules.sandbox_remove(5, had("10.81.0.22", P.open())),
    ),
    "remove_absent": (lambda: nftc.sandbox_remove_script(77), lambda: nftrules.sandbox_remove(77)),
}

Msg = tuple[int, bytes]  # (NFT_MSG_*, body after nlmsghdr)
NFTA_SET_ELEM_LIST_SET_ID = 4  # anonymous sets only: nftrules sends none
Node = tuple[int, Any]  # (type, bytes | list[Node]) with the nested flag folded in


# nft --debug=mnl dumps ----------------------------------------------------------------
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LEN = re.compile(r"\|\s+(\d+)\s+\|\s+\|\s*message length")
_TYPE = re.compile(r"\|\s*(\d+)\s*\|")
_ATTR = re.compile(r"\|\s*(\d+)\|(..)\|\s*(\d+)\|\s+\|len \|flags\| type\|")
_DATA = re.compile(r"\| ([0-9a-f]{2}) ([0-9a-f]{2}) ([0-9a-f]{2}) ([0-9a-f]{2})  \|")


def parse_mnl(text: str) -> list[Msg]:
    """The messages between the last BATCH_BEGIN and BATCH_END of a `--debug=mnl` dump.

    The dump prints each header field, then every attribute header and 4-byte data word in
    order, so the body is rebuilt byte for byte (the header flags are printed only in part).
    """
    msgs: list[list[Any]] = []
    lines = [_ANSI.sub("", line) for line in text.splitlines()]
    i = 0
    while i < len(lines):
        if m := _LEN.match(lines[i]):
            t = _TYPE.match(lines[i + 1])
            assert t, lines[i + 1]
            msgs.append([int(t.group(1)), int(m.group(1)), bytearray()])
            i += 4
            continue
        if msgs and (m := _ATTR.match(lines[i])):
            flags = (0x8000 if m.group(2)[0] == "N" else 0) | (
                0x4000 if m.group(2)[1] == "B" else 0
            )
            msgs[-1][2] += struct.pack("=HH", int(m.group(1)), int(m.group(3)) | flags)
        elif msgs and (m := _DATA.match(lines[i])):
            msgs[-1][2] += bytes(int(x, 16) for x in m.groups())
        i += 1
    for mtype, length, body in msgs:
        assert len(body) + 16 == length, (mtype, length, len(body))
    begin = max(i for i, m in enumerate(msgs) if m[0] == nl.NFNL_MSG_BATCH_BEGIN)
    end = next(i for i in range(begin, len(msgs)) if msgs[i][0] == nl.NFNL_MSG_BATCH_END)
    return [(m[0] & 0xFF, bytes(m[2])) for m in msgs[begin + 1 : end]]


def encode_golden(batches: dict[str, list[Msg]]) -> str:
    raw = json.dumps({k: [[t, b.hex()] for t, b in v] for k, v in batches.items()})
    return base64.b85encode(zlib.compress(raw.encode(), 9)).decode()


def decode_golden(blob: str) -> dict[str, list[Msg]]:
    raw = json.loads(zlib.decompress(base64.b85decode(blob)))
    return {k: [(t, bytes.fromhex(h)) for t, h in v] for k, v in raw.items()}


# Normalisation ------------------------------------------------------------------------
def tree(data: bytes) -> list[Node]:
    out: list[Node] = []
    off = 0
    while off < len(data):
        length, atype = struct.unpack_from("=HH", data, off)
        assert length >= 4 and off + length <= len(data), data.hex()
        value = data[off + 4 : off + length]
        if atype & nl.NLA_F_NESTED:
            out.append((atype & nl.NLA_TYPE_MASK | nl.NLA_F_NESTED, tree(value)))
        else:
            out.append((atype, value))
        off += nl.align(length)
    return out


def _get(nodes: list[Node], atype: int) -> Any:
    return next((v for t, v in nodes if t & nl.NLA_TYPE_MASK == atype), None)


def _anon(name: bytes | None) -> bool:
    return name is not None and b"%d" in name


def from_wire(data: bytes) -> list[Msg]:
    """Split a batch as NfTablesSocket sends it into (NFT_MSG_*, body)."""
    out, off = [], 0
    while off < len(data):
        length, mtype = struct.unpack_from("=IH", data, off)
        out.append((mtype & 0xFF, data[off + 16 : off + length]))
        off += nl.align(length)
    return out


def normalize(batch: Sequence[Msg], *, drop_zero_end: bool = False) -> list[tuple[int, Any]]:
    """What the kernel makes of a batch, with nft's bookkeeping taken out (module doc).

    `drop_zero_end`: also drop an interval set's leading interval-end at 0.0.0.0, which nft
    sends when it adds to a set that exists but not after flushing one it declares (the
    kernel's lookups are the same either way).
    """
    flushed = [
        _get(tree(b[4:]), nftrules.NFTA_SET_ELEM_LIST_SET)
        for t, b in batch
        if t == nl.NFT_MSG_DELSETELEM and _get(tree(b[4:]), 3) is None
    ]
    ids: dict[bytes, int] = {}

    def canon(value: bytes) -> bytes:
        return struct.pack("!I", ids.setdefault(value, len(ids) + 1))

    out = []
    for i, (mtype, body) in enumerate(batch):
        nodes = tree(body[4:])
        name = _get(nodes, nftrules.NFTA_SET_ELEM_LIST_SET)
        if mtype == nl.NFT_MSG_NEWSETELEM and not _anon(name):
            later_flush = [j for j, (t, b) in enumerate(batch) if j > i and t == 14]
            if name in flushed and any(
                _get(tree(batch[j][1][4:]), 2) == name and _get(tree(batch[j][1][4:]), 3) is None
                for j in later_flush
            ):
                continue  # nft's copy of elements the same batch flushes again
        if mtype == nl.NFT_MSG_NEWSET:
            nodes = [(t, canon(v) if t == nftrules.NFTA_SET_ID else v) for t, v in nodes]
        if mtype in (nl.NFT_MSG_NEWSETELEM, nl.NFT_MSG_DELSETELEM):
            kept: list[Node] = []
            for t, v in nodes:
                if t == NFTA_SET_ELEM_LIST_SET_ID:
                    if _anon(name):
                        kept.append((t, canon(v)))
                    continue
                if t & nl.NLA_TYPE_MASK == nftrules.NFTA_SET_ELEM_LIST_ELEMENTS:
                    elems = [(1 | nl.NLA_F_NESTED, e) for _, e in v]
                    if drop_zero_end and elems and _is_zero_end(elems[0][1]):
                        elems = elems[1:]
                    v = elems
                kept.append((t, v))
            nodes = kept
        if mtype == nl.NFT_MSG_NEWRULE:
            nodes = [(t, _rule_exprs(v, canon) if t & 0xFF == 4 else v) for t, v in nodes]
        out.append((mtype, (body[:4], nodes)))
    return out


def _is_zero_end(elem: list[Node]) -> bool:
    flags = _get(elem, nftrules.NFTA_SET_ELEM_FLAGS)
    key = _get(elem, nftrules.NFTA_SET_ELEM_KEY)
    return flags == nl.be32(1) and key is not None and _get(key, 1) == bytes(4)


def _rule_exprs(exprs: list[Node], canon: Callable[[bytes], bytes]) -> list[Node]:
    out: list[Node] = []
    for t, e in exprs:
        if _get(e, nftrules.NFTA_EXPR_NAME) == b"lookup\x00":
            data = _get(e, nftrules.NFTA_EXPR_DATA)
            anon = _anon(_get(data, 1))
            data = [(a, canon(v)) if a == 4 else (a, v) for a, v in data if a != 4 or anon]
            e = [(nftrules.NFTA_EXPR_NAME, b"lookup\x00"), (nftrules.NFTA_EXPR_DATA | 0x8000, data)]
        out.append((t, e))
    return out


def assert_same(case: str, nft_batch: Sequence[Msg], ours: nftrules.Batch) -> None:
    mine = [(struct.unpack_from("=H", m, 4)[0] & 0xFF, m[16:]) for m in ours.messages]
    zero = case.startswith("add")
    want, got = normalize(nft_batch, drop_zero_end=zero), normalize(mine, drop_zero_end=zero)
    for i, (w, g) in enumerate(zip(want, got, strict=False)):
        assert g == w, f"{case}: message {i} ({ours.labels[i]}) differs"
    assert len(got) == len(want), f"{case}: {len(got)} messages, nft sent {len(want)}"


# Tests ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(CASES))
def test_batch_matches_what_nft_sends(case: str) -> None:
    assert_same(case, GOLDEN[case], CASES[case][1]())


def test_every_golden_case_is_tested() -> None:
    assert set(GOLDEN) == set(CASES)


def test_a_thousand_cidrs_take_several_element_messages() -> None:
    allow = [f"10.{i // 256}.{i % 256}.1" for i in range(1000)]
    deny = [f"11.{i // 256}.{i % 256}.1" for i in range(1000)]
    b = nftrules.sandbox_add(8, "10.81.0.34", P.parse(allow, deny))
    for set_name, sizes in (("allow4_32", [1000]), ("deny4_32", [1000]), ("rec", [1024, 977])):
        chunks = [m for m, lb in zip(b.messages, b.labels, strict=True)
                  if lb.startswith(f"add element {set_name} ")]  # fmt: skip
        assert all(len(m) < 65536 for m in chunks)
        n = [len(_get(tree(m[20:]), nftrules.NFTA_SET_ELEM_LIST_ELEMENTS)) for m in chunks]
        assert n == sizes, set_name


def test_every_message_asks_for_an_ack_and_labels_match() -> None:
    b = nftrules.sandbox_add(5, "10.81.0.22", DENY, inspect=True)
    assert len(b.messages) == len(b.labels)
    for m in b.messages:
        flags = struct.unpack_from("=H", m, 6)[0]
        assert flags & nl.NLM_F_REQUEST and flags & nl.NLM_F_ACK
    flags = ("slots", "open", "inspect", "has_allow", "has_deny")
    assert b.labels[-5:] == [f"add element {f} (1)" for f in flags]


def test_a_record_reads_back_as_the_keyed_elements() -> None:
    full = nftc.sandbox_elements("10.81.0.22", DENY)
    b = nftrules.sandbox_add(5, "10.81.0.22", DENY)
    (rec,) = [m for m, lb in zip(b.messages, b.labels, strict=True)
              if lb.startswith("add element rec ")]  # fmt: skip
    entries = _get(tree(rec[20:]), nftrules.NFTA_SET_ELEM_LIST_ELEMENTS)
    keys = [_get(_get(e, nftrules.NFTA_SET_ELEM_KEY), 1) for _, e in entries]
    data = [_get(_get(e, nftrules.NFTA_SET_ELEM_DATA), 1) for _, e in entries]
    assert keys == [nftrules.record_key(5, i) for i in range(len(full.keyed))]
    assert nftrules.parse_record(data) == nftc.Elements((), full.keyed)
    assert nftrules.parse_count(struct.pack("=I", 6)) == 6
    with pytest.raises(ValueError):
        nftrules.parse_record([bytes(8)[:7]])
    with pytest.raises(ValueError):
        nftrules.parse_record([bytes(4) + struct.pack("=I", len(nftc.KEYED_SETS))])


def test_element_replies_parsed() -> None:
    """A GETSETELEM answer: one NEWSETELEM per key found, then the ACK (or ENOENT)."""

    def reply(seq: int, key: bytes, data: bytes) -> bytes:
        elem = nl.nested(1, nl.nested(1, nl.attr(1, key)), nl.nested(2, nl.attr(1, data)))
        body = nl.attr(1, nl.string("declawd")) + nl.attr(2, nl.string("rec"))
        body += nl.nested(3, elem)
        return nl.message((10 << 8) | nl.NFT_MSG_NEWSETELEM, 0, seq, 1, 0, body)

    def ack(seq: int, err: int) -> bytes:
        body = struct.pack("=i", err) + struct.pack("=IHHII", 16, 0, 0, seq, 0)
        return struct.pack("=IHHII", 16 + len(body), nl.NLMSG_ERROR, 0x100, seq, 0) + body

    data = reply(9, b"k1", b"d1") + reply(8, b"old", b"x") + reply(9, b"k2", b"d2") + ack(9, 0)
    assert list(nl.element_replies(data, 9)) == [(b"k1", b"d1"), (b"k2", b"d2"), nl.Ack(9, 0)]
    assert list(nl.element_replies(ack(4, -2), 4)) == [nl.Ack(4, -2)]
    req = nl.getsetelem_message(1, "declawd", "nrec", [b"a" * 16], seq=3)
    assert struct.unpack_from("=HH", req, 4) == ((10 << 8) | 13, nl.NLM_F_REQUEST | nl.NLM_F_ACK)


def test_with_seq_numbers_a_message() -> None:
    m = nl.nft_message(nl.NFT_MSG_NEWCHAIN, 1, nl.attr(1, nl.string("t")))
    assert struct.unpack_from("=I", nl.with_seq(m, 77), 8)[0] == 77
    assert nl.with_seq(m, 77)[12:] == m[12:] and len(nl.with_seq(m, 77)) == len(m)


def test_control_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(nftctl.CONTROL_BACKEND_ENV, raising=False)
    assert nftctl.control_backend() == nftctl.DEFAULT_CONTROL_BACKEND
    monkeypatch.setenv(nftctl.CONTROL_BACKEND_ENV, "text")
    assert nftctl.control_backend() == "text"
    assert nftctl.control_backend("netlink") == "netlink"
    monkeypatch.setenv(nftctl.CONTROL_BACKEND_ENV, "bogus")
    with pytest.raises(ValueError, match="bogus"):
        nftctl.control_backend()


def test_text_backend_runs_the_scripts(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[tuple[str, str]] = []
    monkeypatch.setattr(nftctl, "nft_sync", lambda ns, script, **kw: ran.append((ns, script)))
    held = {3: had("10.81.0.14", A)}
    monkeypatch.setattr(nftctl, "read_record", lambda ns, slot: held.get(slot, nftc.NOTHING))
    nftctl.sandbox_add_sync("gw", 3, "10.81.0.14", A, backend="text")
    nftctl.sandbox_update_sync("gw", 3, "10.81.0.14", P.open(), backend="text")
    nftctl.sandbox_remove_sync("gw", 3, backend="text")
    nftctl.sandbox_remove_sync("gw", 4, backend="text")
    assert ran == [
        ("gw", nftc.sandbox_add_script(3, "10.81.0.14", A, False, held[3])),
        ("gw", nftc.sandbox_update_script(3, "10.81.0.14", P.open(), False, held[3])),
        ("gw", nftc.sandbox_remove_script(3, held[3])),
        ("gw", nftc.sandbox_remove_script(4)),
    ]


def test_netlink_refusal_names_the_message() -> None:
    """An error ACK for message k raises NftError with that message's label."""

    class FakeSock:
        def __init__(self) -> None:
            self.sent = b""

        def send(self, data: bytes) -> int:
            self.sent = data
            return len(data)

        def settimeout(self, _t: float) -> None:
            pass

        def recv(self, _n: int, _flags: int = 0) -> bytes:
            if _flags:  # after the error: nothing more queued
                raise BlockingIOError
            msgs = []
            off = 0
            while off < len(self.sent):
                length, mtype, _f, seq = struct.unpack_from("=IHHI", self.sent, off)
                msgs.append((mtype, seq))
                off += length
            _, seq = msgs[3]  # BATCH_BEGIN is 0: message 2 of the batch is refused
            err = struct.pack("=i", -2) + struct.pack("=IHHII", 16, 0, 0, seq, 0)
            return struct.pack("=IHHII", 16 + len(err), nl.NLMSG_ERROR, 0x100, seq, 0) + err

    fake = FakeSock()
    sock = nl.NfTablesSocket.__new__(nl.NfTablesSocket)
    sock._lock = threading.Lock()
    sock._seq = 0
    sock._sock = fake  # type: ignore[assignment]
    b = nftrules.sandbox_remove(4, had("10.81.0.18", A))
    with pytest.raises(nftctl.NftError, match=r"at delete element rec \(2\): No such file"):
        sock.transact(b.messages, labels=b.labels, context="inet declawd sandbox 4")
    assert [t for t, _ in from_wire(fake.sent)][1:4] == [14, 14, 14]  # src4, allow4_32, rec


GOLDEN_BLOB = (
    "c-rk<*>2k~5d4)O&wUUNkyd{t2n<DHfS`#JBx#GH=)ae`9NW>oV^VVH)=jH}9juni+0m}__d3n<ZT67AZu94-^kMgQ{r&3Zh"
    "VgG#*Aa`VPiDXN?@Fpz36&|PwUTyQV!zyOH<}lFqUN))U)lU4*1R}hY$9H4XPe@8^;1^kY9ZpN?^B##oV=-yZ$8(z->z<$Bp"
    "~Hcg^XqMkW~mK+3H?Lc8_VdRU{lD%4$T3wTdWF2`xV%iX9@#YeXBnMa1{zexs8PTWJh3Nw|6r5p-NFhX@9)j{CV}?ZA}~vco"
    "?%T-I?Xs*xNa8xeQX*dE2y1Z1YR5wqJe>n&Qy_+E%=TAw212^C>>XOCe~IsxIPwp|kkk7Kn`H6k(BX7#6pQN-*TM`O!<psV*"
    "!9-p<3-&lgP*^$}xD#j-xO&h;2eM@T5>i68k8Y0!b%B|Oz(diQ+=@5}QiBkKS*lH_9M`odw9P0VS?6#Iay_oFX3y0E+<xqNY"
    "-liApZF;d>N`slq$yIcSVBo4bL_+6OdU2dekKj}W$5_NLW6=c0VhFjO>zK|wG77LC0`g?^szc9{^*APxo82ET41(?Rl%+9<U"
    "SwVv1R4?DyG9^7^ZJZNFkS0FT@~DF*gvPrHAZl+3PV4_P4$b6kngQ{jF3?gX7&OV|L+WLT(hkc3!Wg9DcOe1o+=_aD^7hN)T"
    "hV<qx&Brf*#oJ(^bu>$jtOPJHQhyA~wJi`)$?B6F<)EQMQJ>q<#E)1~$r;XpMp+#^)W%Sv`MPaxlJ}F}~=)Uwgmg2ZzNo#+P"
    "08Z(`lS_-e-Zar^j<C-T^19x#oWDUW#ocm)RJ0VqUxtp|k+uk{Qd+h;1(En}~;XR=t?Gg(|pj6#H;3MgdwsW1ZBnQtMZ5YS~"
    "$6cW1Z37%VkL@ybZJ-Ko!dnWT`Pp-Vmp3`EwPuUaYhd5yhjfgHxCF5kz^zrfeck!ne8ex-Iu}m7#i_D9Qp%Kwt421|!A4VWM"
    "vnq>5FkO{JA)wO+l%L>eLx0>U7GrtGXL#_j`Wkg0Ovnh~I^Bp0v{8s!iH)`82%WBf{4SmDWWN{UG;J00S%C(giGbu7g$SP<4"
    "<IWD)X$eZeK*@5#=LBI>659;_$48jVasPF;N}*#TvpBqR+4Iy!=;K){<^mE*3hKkog#-OjnJeKnlwU_#&F4FXwnEx8W-54QB"
    "&liPa}}yK#l`BUVRu@9yxX%*e-y!&sVlDhqlvi&4&cST>?SBH4mZZD_G~)1<+?_qR;_JEn0w%tLn~7RwuM6I3lYP+7cw7Edk"
    "qxAOUR%*tP>nXgk2R8Aw8#0k*ARPLh*RZ84nWjA|2T4>#l60LmYPGXL@rLK%N~2%$`WZDshOLDG485Sjr)Ghk>249$R{8L*Q"
    "Dgl52gmJyl(Lo=ZN$2Nra#Odvcucmw`+b{FFeS1$IO;AySiV{?mprQm7C8#KYuPlJCIA;Y8>PT1d04zthf!C?NspYC~Ug}6G"
    "D#(~R(pf6VBI-z|tztgwNH6!{iOzH0DzkjDY2_+QNKfJc2Ni6ttq^4;1(#pA6ebj<hN4ujMX4Qg?@M;Gg~Hq~QJDL|ZMNy%o"
    "7s7Ki%IWO(!IXLqz{>&XYPX#0iU@KLIix%3m6gLEdU@yXL$Dv2-z9lJu{5#%*#3o!Te<%g@Ew>9Wa9F%Q^}H;0-_^B!D*n^&"
    "`3c_aEJ%;nn"
)
GOLDEN = decode_golden(GOLDEN_BLOB) if GOLDEN_BLOB else {}
