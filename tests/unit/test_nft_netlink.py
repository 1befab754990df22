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
    "c-rk<?T({55`C4?{JuX7#&+0Oxw>i*LQA8))7`o~yQ{0!zWYM32{v|ujRBKB8BNdRqbucdRk>`=q5k{5x?EoBAD6#gF7H39A"
    "8()E|MBhj-^<^=eJ2^|A9ee;{XZ`_<CNDt6M`4*Yi0X4Cq(45V6T)B^*FVEsd|$2&x_$*aeaRKba8!Nk=rkH|G&uh^5J#z{g"
    "2<ic`3%Tdy2^~p08MbSFtQ#s@YAGyy*T<PbBMJ?|$f-XT5y+dPYWXbiaKf=KJ-z9bRkLt33Kxp8WjT-{eJ9lheB<r*jmmdId"
    "!5rkveW^A^CH_LX9Z0Ny<h5l~72C2z*Iy$U$Z)gX7+z(;`923`VeHaPkCm(2!QF_z%UN)E|x36mi8mr(dfh?zk0S|$)81N&Y"
    "=$UPGRU*L1~HIz?nij!YZ%HO|mCJH{}vaA>>b_@JhBjaVcp=hhaMW|oNCmAv`<n;=58Ij4)$>dWg{VFN9Ze8!fOCgO+i*cqU"
    "#-r7~Hoj;4{ez)f0s6!dBOzYDLK|PrUwJ#gtnT0JGrqKcBT8CPMypm&B3e_l@9{xDF$Bz#2|N|Ym_VvLzmamg>1%at$60n+j"
    "LY#TL*89VE$=TjWNW}IX+!2CPtR_iF52WH%Bvq{-T3limVCqWTWPxI7Yp^z2L09ND%SpNRZJz4YkMTC@nxAUk_Bz;{o4NFgP"
    "_<E-J~ATPvVHlWhAqlBa1RpM%H$OEQ{(0x#0-8wTOzL{}8dgr3bl>9O2~n9_0X1ZdNp<Tv4=4*M)f}Q{<L;%bWp`KfNOn4o5"
    "nKBQ>Y5yfjUY&Wd3PIge_HSAG^uNYAs{Asar=``_p`$ChnlvDOmx+CR>4h*TUx+3mqOLh=s5PG5N!72hGOhxx_GK8Y{sv6n<"
    "zl{+tq#*t|bhu?HbJofRyZFJF&4<-&-!y&hH$mBC{p^yKXDXY$x`jByEN~X(S?3kAtwc;+0={NEDF!40f#AAuvc9U?pB{FN@"
    "Y2On<E|Rp>w^(tB#IE%@cCG4d)JzB4wWgAxhH;u1N`8NKvR(sh9aj+c+P>Nd$~wz5ycQ*jc^s#pn1^Go>X>^M^FpE%4pU@O>"
    "p4vKjJIQDZQ?FgDKf>PBJ&HTl-xAfX0Gl4vkG<DT*bCfmbWNkUVhFj)sFi9ybF`|yGud4(wBw-W%>{*Zoik0XPQmR=;%NiVt"
    "5enDN$hs>hga&+b0CdQwGY>@izz*1PTIWMxdyx=SK*XXV_(k-k75Mw_LW%a2X1_3_pXdvdfsq6>D_7KhH(k{wxP7f$oEhN>f"
    "rvIa1`)t7e_XbaY%`c?^`KlNIY#-=!gXjYxsO9*l@@H6kl7(r-j^Z~9<FVzUw1h??_8bQ#CNWIX1GPOFc|$sBEmbS1yPe>86"
    "|Ki)n+n)+8L`CVwkONjjLP%JX}J%Az}OR*Iw;v!JMkOqPUsHpQ6pi{(!W`iJ#xCj(rwLuU?+*^Pi=(-K=QN)E-ON3Cwmq;i)"
    "B=7|@3F0+bn|LkOAzsS~1o1lX+}|`Lh}UEbzH4(}<g{3qcr6_f#OrMwF<s)d7>ZgDufdnipWcx`ygrB{0kKR#ydFD5wWwAB|"
    "1&%?jq?zYTL}1{vv)CT@;?P2<KTa$i0>4DjDJo3XOxVD?exQ4P<B42bW}gs(Oep3jhEHd13t;B5*;YN<n(%(y15?vDVL4CR9"
    "+GX&peA`CX<N{2P?BNq`NZm^%@n;YDFZKhDsGED1fL1M+4Av1PY+%2owYg0tFn6Jp$$E91XE1M?-+45ooZd;%JDd91W2GM<d"
    "FJtia^GI2v(AWJ5~t#nD(cA}4fPaWpQ?+u!rK8I^|b&S;(rH>1*E;||4kX-s%evr+NERbR14jS0!A|1-BSq5OQANi_SUPZ_7"
    "Q8_!i9o6*;-`#cMo!XoMv(uh-7+?_&tIz^tsto>F>irG`xf1bIfP+4W}6!y#pnPm7>-f(DH4W(8wL2u3?*_;iYkTkKkfMF>L"
    "7N9b}w}49H2@O6npJa13>VvTcJ_4*Z@DgCNffv!pW&@q0<61}NvwU1>)n7v4BOzwWXQ~%1A=XxsS_;oSQ#gH)!VAw79yL=6@"
    "?hlS%$Iv+KKdZ@6`q-o1!g|JAnNObP?8Re;c6|dvC0-+esfGDxMh(d0^G7KC_VHzw;a#y5j|m-#g1rj%eHaE<T8?3Sc6*zN{"
    "}D%;Gm8KZdt01WbD+zU;%^0r&gM9SeDjG6NdzY1q_y5uS+`|6AYGTXRu(2TzBHtlK0?@`*2I-7@yxSl6nub*h?ht2e7R}rUS"
    "-9&9sd}Jh&Ehm=0##QN+vV>~-Z#1;^ahF;UE;m`~d=_b%oShg)|SnK}(LcIr-#1nPhafwDtD0tL4XfdXzD0tJDBKmiGK!$3J"
    "!F<m&$Lrfaz;ybFCh5`xH&tOkQ0=?~uEsuwEyn7^%y-1)@Mr383>_q~NGa?%eW-k)xvJp9XIRgpw{b%*#?Q?0bu2LIeLcO{i"
    "itXR4E0$s_^y(@D1q_)WSbz#VZvlF*u2Qo>P_M2sP=M72LA|=X1?Yrt-3Ir1b(LB<5z?z`iG;#K0$(tb=+#Bm?$uSU)2mBPA"
    "ox^)MY(B6@Ts<-vE=-~49RlcUR}}=!Kd2B5!3C}RSrch_*9_5<WKKN;8PvMk$}x5=+!lL2=waOD>9Aq5YRXXn2xh|F>ChfDh"
    "I{jkYG9{)T>K6Ccx3;i}mV?l98~T{sO(a%58gfsf>hPU0<YE7iy!pOHipM(t;f*EKt?d8I7lV8L54>%|ooSOvCFqNIp2`u8x"
    "VK9YuTEj=A?z`2?MKN=ZrQyelbdsd4Po4G^~fiD`TgHeY~912Kny>InuL0tE~<1PTHLfdZ=MhJo@7yNuQPeclX(U51~*o{H*"
    "Ok~<IYexGINh$2!wqm0N(ZrY3L8D~T`w$)x#&t)TW(!Uhdv-<PT_y2T1=aW1YX}Lc{qf`aw?j%pe)XnZGwoB8`dzy_a5YoFt"
    "Rug+4H1)XGXUxk~MO0Hopq<u4r=3dGyafzdDOi9?0^R~t@5nyp2HVc(Y}Uq7G1kCGfYk<G0&F($>K$pbflm2!Ws~`&QCD#JO"
    "DKFKBp3L6fp4L~AX&S`#?{i37K6cC6vsq@5F05XK!_#l^AL-3e&9m~8PNtQHg-gV5W9^dCYO=S@(qMo0v@9mTk4>W1VU`8j%"
    "4fyLAxWM-FekY2K8=ftu%2+Ab3H$+x0@2!!d#2B~MPf!xFj8#6LJmJ=_vG?){<`$#LVZ*h?gCVzRA6ri1=*IK*MmKeosj_f3"
    "i&Iq7vxa$IEt@DWgYAcPSpKnNpH5GV)~K<T#&lv7&8^uv2DFy~3_6i&aWsD5BDoFvXP*i%93Z@cCYaPvK!<X({aC?m20H}`_"
    "n#~G0gNxB!Le%Xke(AEx8|F4fr^{aXLXVZMVyj4G&&(PjUOdDT9y^|b@?cX~omSQXPPGW%qhCC1~K!u&R0KIn-(`*pbJBbAf"
    "u-YJ~capaNojjx4;9ln=rWF$*osVWp$d`uiEh?&O#Y%7a(uktW1xeRR>e2gkn<qt^eXjE8V|nuP=kNw1?Dla$**(tN{d+pGb"
    "$U8Ur2t{~-6}W?2?+ZJ$YGKlxu+9bx2Ka-4iNTj95LOVPHZT)0bvL7IDdLa0)+h_js!RqK~E<*#0m~kYWO(kxkK^}!GPdh<L"
    "1jQhbYlZZR;h`I3NXN9jvbT#|LXRQ)7c-a7eJa61s`HbWE_i$QNs-h9z>BO~T=p$T2sC8H}zqmPqVcpJUhR4@5=Hl*F#}z)j"
    "ZJHci&xm^e;BF%QR_IOg8P{1dc4VCyznQ-%Up!+V>UM3c3_xxnKiV1|S6ia-J36@h|4L7;#czG0v|!!BdBCTllCVVB`&u=u-"
    "-5tH@(qj>{|)u9+TtOOj^07xM?toJ2M^2a?1;EIAP3a%))qTq^xD+)&hR}^RQ^G;5{6~z%890{mj5Mw}$fkT2A11uegF<%c$"
    "=OS#38;Puuy3=bWf(!hBi~$LQKmig4fr3Cmpa3!k$QU4FfQ)%V#xBj<-!DJjK0liJ*L>($r9nS3nx_ICt2A7UL$N)eW0eNCi"
    "KSQs=-AnSj!D(L1q>H*f(58ex3_>wgN_ZhosYXZ8&|i-8u$pX+Q3VI%?4iBGn)-`*p@3q<^#W6zU(bwl0TL=P`H->id&-LGU"
    ">-^pg>OjpScYb<mbywV%jDR7C5Edc&_r;jD`%|=UI@Yio2G|PN&G0%Gz(Gq?m1~{`1UbDU}W9TB?T;%0iJ(<qfBZ)lmBsVNe"
    "N2R;dqyf;;d9z1Gqika6Luuwx<tXN(jPfHQ7^BBS|XB09H6^aRitJE8$++{O`;%SdM74mcxFXnrWPgE|u6j0bTf+%uAV(bg9"
    "Zho~0SD!2oGcw`!9bO0IyXza6#nLv$~?qVhm37|26#=Bm~bT}q}#?KBkc1%1a*iNsy3(C&tl#cAF<IV%Qy7R!ralj|<Y%RJQ"
    "qn5n8w{_Xw<N6BkrlN>;lt0N#iDOcp#X*zFNGRGPEk!ERJh<L|xT1YbG3m>8y(>uU421KYZ5=WlJSlc@+c?AnoXcT)f^f&Nf"
    "_&cAOzUPUIOevFiQ@$vFQo05dl&PEqh7d+Or6ObJ9VeWV|Kun!8#-0F@v6oKmk1yfr3Cmpn%7`VW1qVm@XXWAtsY~@lAnDLx"
    "IQaXRvj6%zrgM-~Zj9>xDxxbiE))?Rqhf#@Xmp7M@>^fXjg+qt6PXGE1mS^orJb4Z1EE>1c*6kD+<M$%<>O@3!Ia8j+fn2P5"
    "KJjmYXHej}1@@?b<_vk}?ccHW3C;}ky`k2#{#>LZ%pIVCWTa*1on>aY>`YvS_%9W-(H?S`5>@V6+Mpv%y=-`Uc2mn~g)+0u2"
    "FEnauC1$Csq1he1^kWiQsZiVqnb^dJLf^Y59Veb;DkM%oyI27Ce);_TmTjAC|Qnm0~`veP6aq2BVzqQX`+g<D9+YE<PDkk-O"
    "Y?8g|<0vDtddXh(ahws^+;*?}c-e^bBN-!(HmZ;Bj$qUJIJPF?^>Hjsme<FRH3_<v+BkHAZlxA1z!tm#w^Gw%g)Loo+0u2FE"
    "nRon;&nG$P)GVpFblo_356-)kN^E2^i89W"
)
GOLDEN = decode_golden(GOLDEN_BLOB) if GOLDEN_BLOB else {}
