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

# name → (nft.py script, nftrules batch); the live capture applies them in this order.
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
        lambda: nftc.sandbox_update_script(5, "10.81.0.22", A),
        lambda: nftrules.sandbox_update(5, "10.81.0.22", A),
    ),
    "update_open": (
        lambda: nftc.sandbox_update_script(5, "10.81.0.22", P.open()),
        lambda: nftrules.sandbox_update(5, "10.81.0.22", P.open()),
    ),
    "update_deny_inspect": (
        lambda: nftc.sandbox_update_script(12, "10.81.0.50", DENY, True),
        lambda: nftrules.sandbox_update(12, "10.81.0.50", DENY, True),
    ),
    "remove": (lambda: nftc.sandbox_remove_script(5), lambda: nftrules.sandbox_remove(5)),
    "remove_absent": (lambda: nftc.sandbox_remove_script(77), lambda: nftrules.sandbox_remove(77)),
}

Msg = tuple[int, bytes]  # (NFT_MSG_*, body after nlmsghdr)
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
                if t == nftrules.NFTA_SET_ELEM_LIST_SET_ID:
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


def test_interval_elements() -> None:
    def keys(nets: list[str]) -> list[tuple[str, bool]]:
        out = []
        for parts in nftrules.interval_elements(P.parse(nets, []).allow_cidrs_v4):
            nodes = tree(b"".join(parts))
            key = _get(_get(nodes, nftrules.NFTA_SET_ELEM_KEY), 1)
            out.append((".".join(str(b) for b in key), _get(nodes, 3) == nl.be32(1)))
        return out

    assert keys(["10.0.0.0/8", "11.0.0.0/8"]) == [
        ("0.0.0.0", True), ("10.0.0.0", False), ("11.0.0.0", True),
        ("11.0.0.0", False), ("12.0.0.0", True),
    ]  # fmt: skip
    assert keys(["0.0.0.0/8", "1.2.3.4"]) == [
        ("0.0.0.0", False), ("1.0.0.0", True), ("1.2.3.4", False), ("1.2.3.5", True),
    ]  # fmt: skip
    assert keys(["0.0.0.0/0"]) == [("0.0.0.0", False)]
    assert keys(["224.0.0.0/3"]) == [("0.0.0.0", True), ("224.0.0.0", False)]


def test_a_thousand_cidrs_take_several_element_messages() -> None:
    nets = [f"10.{i // 256}.{i % 256}.1" for i in range(1000)]
    b = nftrules.sandbox_add(8, "10.81.0.34", P.parse(nets, []))
    chunks = [m for m, lb in zip(b.messages, b.labels, strict=True) if lb == "add element a4_8"]
    assert len(chunks) == 2 and all(len(m) < 65536 for m in chunks)
    n = [len(_get(tree(m[20:]), nftrules.NFTA_SET_ELEM_LIST_ELEMENTS)) for m in chunks]
    assert n == [1024, 2001 - 1024]  # a zero end, then a start and an end per address


def test_every_message_asks_for_an_ack_and_labels_match() -> None:
    b = nftrules.sandbox_add(5, "10.81.0.22", DENY, inspect=True)
    assert len(b.messages) == len(b.labels)
    for m in b.messages:
        flags = struct.unpack_from("=H", m, 6)[0]
        assert flags & nl.NLM_F_REQUEST and flags & nl.NLM_F_ACK
    rules = [lb for lb in b.labels if lb.startswith("add rule fwd_5 ")]
    assert rules[0] == "add rule fwd_5 #1: ip daddr @floor4 " + nftc.LOG_LIMIT + (
        ' log prefix "deny:5:floor" group 7'
    )


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
    nftctl.sandbox_add_sync("gw", 3, "10.81.0.14", A, backend="text")
    nftctl.sandbox_update_sync("gw", 3, "10.81.0.14", P.open(), backend="text")
    nftctl.sandbox_remove_sync("gw", 3, backend="text")
    assert ran == [
        ("gw", nftc.sandbox_add_script(3, "10.81.0.14", A)),
        ("gw", nftc.sandbox_update_script(3, "10.81.0.14", P.open())),
        ("gw", nftc.sandbox_remove_script(3)),
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
    b = nftrules.sandbox_remove(4)
    with pytest.raises(nftctl.NftError, match=r"at add set d4_4: No such file or directory"):
        sock.transact(b.messages, labels=b.labels, context="inet declawd sandbox 4")
    assert [t for t, _ in from_wire(fake.sent)][1:4] == [9, 9, 9]  # the three NEWSETs


GOLDEN_BLOB = (
    "c-rk<ZI7ck68<Zr`Me(teuMift5u5-B8_gRyR|)cr`75H`x#;rY;1y!0Yj=sJ3HM;SIXt8a@jnO>%ZTt>-"
    "DYvasBJ<`th^+@&5JwAK!lez5MOlca)*~S1tY%|7L_yhFQ%r&KVIuE5&~~LOjQW-Y`Y#s}TQT^-"
    "XsFp7gKs?)%5PN%wt)9>383`zl|{`=6ulfBg2%OEH#BDJDO7zGC^LVp+aavxg=*Y5$E2l(j!^|I#(j?(*f&Gc<Ui{p|vouh$"
    "nbJYm>Q9)2!QzW?HHauU_#c+%u}j$+ka0WRE>(T8f@0$3w{LY4?%?e`%9N-"
    "3aZ&Cs@;fMTu&xx)rN0<1Rh5@54I;p1O68)RfC!IhO9lHC$ULFzAo_(+JEK=N895F`V8Dk0>a34tx}xw;GGLZmqP0j2!?E2E"
    "sSK9^-=px7huZ$`$;azjy}!<DOF$wwJ7GvwVBYBM60?~}=gDE%raw-"
    "&B<WhIwJ#$=djk?|$8uZ_<cetvIgAwZuvWF*AyBee0=?8d|Zv-<wxJ>yIJH@w6ZrnnM%A}&lJUSqv}ybqWq6IhUAOdwXC-"
    "$=Rb^a&lsILkJRF*zP($jPPD^7>*!3Ik?I8!{hwdiL;iE|L!~J3q|Y@#SQee8cmFG~M&bLjAK|fAzkKiob=5sYG&Zk7PBzEV"
    "D&2$HLw>@rU(-"
    "Vn=k7dPJYZ5jV+5vx;@;(ey@d9JiC4)9&ZGVX$GC+VJSiDAvnPZaGpc&xS>O)=O`?@5^3V>(^u$fF5Ph)QBD<D0AW{i<GM|$"
    "39BFo@If_->jTbu_XCtBOmO2>oQ0#H+JEa%e|{Lb~B~-Gs8uSz1(oI+*-HB$Q^x>yj#4N`z-"
    "bf$LFY+lX5fClyVW*7MC`&wlaBcnZL}LgYv}=)fBIs#7BorBsd_{``P_B+HIs|gGJU#=C}LT1soz3hfsEVvg1zPA!zZ+`;GV"
    "xVLkRH1N%f;+N0Z<8T*k)OCqkyotH%8a4`pm-*ibl_D1_Lx@a5ikweztkXt%r@)?-"
    "u<L@$M)%wysWSp6j>hc#m=Cy`eaTmw*oA|t+cpPcsVTs&!lW@2tG83<e*EpApBo_LT6_-"
    "fZwVq?ws$Pbg>0rCoR5DaQPBTNv&(8|$(=y?>9MPNjX~QvXEz_`?mr%^ZaS9ak;FzmA=HA6Tm(TGJQ)FW6IZXQ<6Jw<!ag$Y"
    "wOunede8H5Gn+A*F>N_G8s^pOh)%HjQ2f~)CBLbxeS59u3bMr}mW+^Py=jUxk5}#eRW*B58KlIK$Tam}_<-"
    "?$&;~h(MbPqCuHEkqEbyOsWLR_S?V|4`#fq>aEVAfiFj~XcIIqVSv<qY*IzZ;Xc|1X!-"
    "tL`Nj>Qx_utx~VfEAJW|W6g42ioeSqzODNp#nO~m(mWL5uhXp67!Nj{mam=$Qdm(#^(6JnYeWi8^khVAs}WhbXnrG-yPPK@;"
    "+u`gMvj{|qU$gYM&mI@RIENCCtFVpsUsYJd^YcIKi<DSoBCHM;h1Z~ONemnP%JXxIDnQLOR*Jbxjaxnp9X>jsHpQ6pwn`>W`"
    "iJFE)Nu7wLuUq*IR%d=(-"
    "K2Xt`XgB|>PqOC%5v32ebk0@)R<O?Kt$kX_{j0@*e21lcqskX_Lh9K+_o7+k(C*;P6skX^TN#IuuKo8%uMHT#oYd7m7PM0Ra"
    "}?1~a4yK+E@0@>B#5Y?hp9XNO4k!hS90HFW@=Wcerzb5C7156h<cPV1(IKXsYlXDj(Bds4PYTI|%T~Kzpq;#m=+tFMaWsR5B"
    ")}t`VWZ^9kx@5R}pxbl@WXfe@FO}ECVJ2sB%w#gr;Q&}RR%%;D-nyu0Rx2X0G}I=Lx*ZQSZ^<8O-"
    "uA}DbHK%)5*L31T>Lt4Uk<o<z{LYD-Y-"
    "y&j*I7O;^H~r;sXtKDqK8|ii_t7;Nqi<$O;DC3l|?}L^gElUby&WBXYuJ6)yhTy#GBP4_|4R+6?EZ;NdF`s_Rf}mj+x@nhlB"
    "%ruyeZYQTkx`=7ZDxa9lGOd^O!{dgG0?RYwQbVmQ4_Wd+u3Q5!{#1W^EOim##ipW!#iBH9d%$~yg`>AURl~v|W;T=sblMEZn"
    ">yN*xzSJTk#M~@m!^PlcNE3St=$E2k0V?x*3#c@1M(-o@i47N{J{W4?Bfx3{F99|ic#%77Hqdzyu61NSv%-"
    "~D{Us0|2{BVXb)78QQh4r}!ts+7PCQe1)J)0IlaUWIU+$Ut@RQ6(JTo5+%zSJ?)Yk{0fgBhOBrL5lc@{p%aZDuec_Kvw@Oie"
    "NQQ+fT7@XT9dc^379nrw&*~Sr1&gaQ+>W{vKzi<BN+p&i^7M~}>z~@PY&*RwB0&4(R13p#7h&Qmbsu(#Wum*rNu<H|ChhqY3"
    ";OwjcSR&V*c(vp`ISoGC5;?>~-"
    "xo=}S5NFE5;)k~I%GPqHK>`kafl~RZ4T3^hdGLP`8~a@oT<Puw{=V?=AoER+cEbp<`0MPb{CmC^)7bmei7oGoXM1*K9K!x6E"
    "pBjK)gdIBHm>Lh<7M*3so~<fOrSQJ0RZ83Y24&WyG<wHmP@u??V_b!9cw8G1#eycaQy52nA{iSicwXF3O0kNdLWvcX38!qaN"
    "%<yjwORCl{h8-"
    "hKS6e!PDz?MYK=BTT3#jYF~hd(y;GY=xdQWuSmQ69fxTf#)qi?@3c?HVEoTQw9pK+90SWjkf@uWUJd?swYjUl@lR7X_iPJ9u"
    "nAsnS`D+XziXf<vKlS<OBkTC9o(r4GA2UEvN%IJ1{G)T(>8UbVT5=Y~zS$=dcvXKSe6`?@3ek$>B&GmI62|DAArYDv1Lg5_-"
    "}M9RhmN>=l{D$pJv;5wOc<*ZXVsq$zvFz#)NMmQYU`>6idWMK9KqCQ3$v)*mm>lcwCZCymNT(39pxdeT5`6n6<K)kIpJvJ(r"
    "aGj$eOF_n?TPemT0tz{Zk$HBaTWA5shP_#qQp0;D|y;Po{Pe>_gz>KveWi2(1ow@<8?0;e!AFjOPgV8ei2czZQeeL>m2lP60"
    "CVE{7^g6UkyRJvT0KE?AbwID16)0z@S6Az6H(Y|DUiC59spxejLd%IxR{q9b^tvb`vJy)6qSwV4k&WT97rk!Th@6xgMX#&={"
    "PW{K?cei>br+4CgRu(E-"
    "HCM<jq~GBY?tPCQ<@Dc5G41SHL~~nQD0O2bi7POqM9lK)vrc6)laJCEuhaz!2(ng@D`wYq}^k#x9xnMTx~2BLk)ZcSZ&}Xz-"
    "9xl9%(ik=rlW5HknV<a|M^b1mYthxxi-"
    "&d<z<Bp|vl_?<_rPr4_tIaZDtT5F<qdkPtWEevwOl;6n!)(FPGQc0>aSaT`ZGI|=cc{Ij;}_RrcJmGZ$zh*uyXqC`lDj-3-"
    "woq+1(S5+8vr=?ZJ$RPnW2~?+D9~n6u6Ht?9r#itBxy{5sIdeSR5;^Q~pccttgPPb&BwQS^twW}RlW{o2VR16H$Qkwri5)qw"
    "(jBBp{z#?SuQ$2z=nvq_r-Cmx0AEIt+cug31Mp>lF9Upe*2<DpS@x7MO`T_cV+ix2^6ZJh;7n?!!A=EZe(b+O0Hssdw7p==Q"
    "AT71%k2eYjx!<~dT%cn^Rf{+;e;)W`Cp&c>R0pj&!+i&d#`>rU!grhs5ZWYdW1L>+rLLhEX7vn5kdn6^m!myfC@Wr0eX)Rs@"
    "Wi@M+glRV6{O|j}UJGI$=S#!BmG2sudF<9X@7C$d`uiBPuGQ4rhj~EU>v3e^OEpUav)-"
    "<RbfY^6+zc^8J_ai}LB??EoM4IJx!jT|(FCT_TkN*s$+b!C^>%4R3(fMA?yhm(X>4mq_IRHoT1^o*Xuu=czyA%Jcnum(V^r9"
    "0)d?=Kvc<iS{m0NgN<3(7Oa2Vg-jNHB6Fohn~DcP(V$tamlF5AxdZ(wDpo`93=uw7??EkH`;494Whkb;E=$iN$9d*>6pNzK`"
    "+)c2$slQHVKDYB8PkcYOrY5SR!H9dX8PIKV%bXrX+T)2W}=rw`nE>jtR#pP|Sm4jvRCEV*Uh|v(t5(2`NJXtHFDlc&27TIZh"
    "s_fcI`D)Ef`jxadS|+#CZN7p>AG<q<Hz#sxMmuyJPv${Fg_)tU(nmtd$@eGC@AULCLpKR%mx;0-zy1KuD4-"
    "e3SY4S0jo5=QxBN&@infS(8aJmBX6KM(kM;E2G_QwI&e&jWrQ@biF-"
    "0AvIpBLIF0$OwR60>?~<jBvQ;K`xN|@WT8xQum8onh!7?faw5C2Vgn?(*c+cz;pnn127$c>CA`eT$}g5-"
    "+sJ*eKz&4`EZ>|d)%JkJQcW3rC|{qitPc{sWgZ~EX5+gbuI>6N2=y6pno(FEI@7FyaiMmT&K6~e5}jGc%nGez(;`923`VeHt"
    "@px*leIfWn3XLA8h0DWp4?i{IUF^@TmmwXttFzne<~_6po7fpSc%>%lDU=#1V}y5@#5<<LTtl85fVY@25eQB9oTFMG@IjnfO"
    "$U$ZSj9-%nkZQrU2>rS8xzStzoxy#73@>T4eo2AFYVmHHsaqXR!05|-"
    "A$V++q09TN!<vPcmD5V9?hJNP&as&jipk3eLxBN`xN+c+XX$X*aa=GY?vgbW~LVGuHhL&4o>=tZx1cQ{0~XjO-sro$uCIL!i"
    "ZCxAPB>irSCb8+8h(;)%e3E<8o`ePf83E<ANgF77)k5Sy+Q0$3U+rGo@g0jmcrNeFP;6>+(7kzacg~=OSd3yn1$#B<Byy*_e"
    "dZ%4w$-E|x-Z+bcCX<n%XpgiMsZ8_a$@Jlh_93kQUbgGE-"
    "^b2CaK5vxL#Bhggk9V=4)FvLa+tgCnd4YNelKdKbu$$>=C+Or#|v=0khWv)UCbYjq~I<xb@piN)D7Ix7v_#Su++dEMZg^e?x"
    ";t=0CyC)qre@V6)49l%ZOuVZL&ufU+FPkf`L2gW3Y9&qklC&KmOgo?d}f6;C6R()Z5+X?OYn2KEU$sFtO};3Hq#1EVG1q*sG"
    "{?UC_0`hzB!l`RXspF02U2dh)t?uMw$Pc`_ol)rhQK;x{7cCQnAhHye@7ZRd^XI!y7S@t7kjRv*#)4grC2luLv}R)>wiUlW)"
    "A@1TjpZ#UHBiN8hB1iEQ_`<*Ubcj?k~mo8m*>Ed-aTTn;(OE3$*013pD@F<Mms>@gN9(<iji{eV8KGttja45F_bt<tGTj4qt"
    "sap7TD!~F&oO%n;uT$x5yK8;?nBkC0#iaWVO|n;g9A!jSFWIX;jx!>g+wN5#FB_45BxA(UM)mRJ2sW*cV`~y#AIH*Ud42p`l"
    "c4LXhM^O5eO0gkTkr;4U!}(iUApelrRy$Ty6)1&>u$E7j`Wvc7JLB`h$-QZ|NS350=HQ"
)
GOLDEN = decode_golden(GOLDEN_BLOB) if GOLDEN_BLOB else {}
