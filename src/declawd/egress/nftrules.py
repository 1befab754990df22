"""One sandbox's nftables objects as nf_tables netlink messages (pure): the control path's
netlink twin of `nft.sandbox_add_script` / `sandbox_update_script` / `sandbox_remove_script`.

libnftables dumps the whole table into its cache before every batch, so a sandbox's rules cost
more the more sandboxes the node holds; these messages name only the sandbox's own chains,
sets and map elements. Invariant: each builder yields the objects of its script in the same
order with the same attributes and expressions nft 1.0.6 sends (`nft --debug=mnl`; checked
against captured bytes in tests), so one batch = one transaction leaves the same ruleset as
`nft -f` of the script. The rules themselves come from `nft.sandbox_rule_terms`, shared with
the text.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from declawd.egress import nft as nftc
from declawd.egress.nfnetlink import (
    NFT_MSG_DELCHAIN,
    NFT_MSG_DELRULE,
    NFT_MSG_DELSET,
    NFT_MSG_DELSETELEM,
    NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWRULE,
    NFT_MSG_NEWSET,
    NFT_MSG_NEWSETELEM,
    NLM_F_APPEND,
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

NFTA_TABLE = 1  # the first attribute of chain, rule, set and set-element messages
NFTA_CHAIN_NAME = 3
NFTA_RULE_CHAIN = 2
NFTA_RULE_EXPRESSIONS = 4
NFTA_LIST_ELEM = 1
NFTA_EXPR_NAME = 1
NFTA_EXPR_DATA = 2
NFTA_SET_NAME = 2
NFTA_SET_FLAGS = 3
NFTA_SET_KEY_TYPE = 4
NFTA_SET_KEY_LEN = 5
NFTA_SET_ID = 10
NFTA_SET_USERDATA = 13
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_DATA = 2
NFTA_SET_ELEM_FLAGS = 3
NFTA_SET_ELEM_USERDATA = 6
NFTA_DATA_VALUE = 1
NFTA_DATA_VERDICT = 2
NFTA_VERDICT_CODE = 1
NFTA_VERDICT_CHAIN = 2

NFT_SET_INTERVAL = 0x4
NFT_SET_TIMEOUT = 0x10
NFT_SET_ELEM_INTERVAL_END = 0x1
TYPE_IPV4_ADDR = 7  # nft's datatype id, kept in the set so `nft list` can print it
VERDICTS = {"accept": 1, "drop": 0, "return": -5, "goto": -4}
IFNAMSIZ = 16
ELEMENTS_PER_MESSAGE = 1024  # an interval element is at most ~40 bytes

# libnftnl userdata (TLVs) nft attaches: key byte order big-endian (named ipv4 sets).
UDATA_IPV4_SET = bytes.fromhex("000402000000")
UDATA_INTERVAL_OPEN = bytes.fromhex("010401000000")  # element flag: the range runs to the top

REG_VERDICT, REG_1 = 0, 1
META_NFPROTO, META_L4PROTO = 15, 16
NFPROTO = {"ipv4": 2, "ipv6": 10}
IPPROTO = {"tcp": 6, "udp": 17}
CMP_EQ, CMP_NEQ = 0, 1
BASE_NETWORK, BASE_TRANSPORT = 1, 2
CT_STATUS = 2
IPS_DST_NAT = 0x20
NF_NAT_RANGE_PROTO_SPECIFIED = 0x2
REJECT_TCP_RST, REJECT_ICMPX = 1, 2
ICMPX_ADMIN_PROHIBITED = 3
LIMIT_UNIT_SECOND = 1


@dataclass
class Batch:
    """Messages of one transaction, each with a label naming it in errors."""

    messages: list[bytes] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    _next_set_id: int = 0

    def add(self, msg: int, attrs: bytes, label: str, flags: int = 0) -> None:
        self.messages.append(nft_message(msg, FAMILY, attrs, flags=flags))
        self.labels.append(label)

    def set_id(self) -> int:
        self._next_set_id += 1
        return self._next_set_id


def _table() -> bytes:
    return attr(NFTA_TABLE, string(TABLE_NAME))


# Objects ---------------------------------------------------------------------------------
def _new_set(b: Batch, name: str, flags: int) -> None:
    attrs = _table() + attr(NFTA_SET_NAME, string(name)) + attr(NFTA_SET_FLAGS, be32(flags))
    attrs += attr(NFTA_SET_KEY_TYPE, be32(TYPE_IPV4_ADDR)) + attr(NFTA_SET_KEY_LEN, be32(4))
    attrs += attr(NFTA_SET_ID, be32(b.set_id())) + attr(NFTA_SET_USERDATA, UDATA_IPV4_SET)
    b.add(NFT_MSG_NEWSET, attrs, f"add set {name}", NLM_F_CREATE)


def _chain(b: Batch, msg: int, name: str, verb: str) -> None:
    flags = NLM_F_CREATE if msg == NFT_MSG_NEWCHAIN else 0
    b.add(msg, _table() + attr(NFTA_CHAIN_NAME, string(name)), f"{verb} chain {name}", flags)


def _flush_chain(b: Batch, name: str) -> None:
    b.add(NFT_MSG_DELRULE, _table() + attr(NFTA_RULE_CHAIN, string(name)), f"flush chain {name}")


def _flush_set(b: Batch, name: str) -> None:
    # nft puts the set before the table here; the kernel does not mind either way.
    b.add(
        NFT_MSG_DELSETELEM,
        attr(NFTA_SET_ELEM_LIST_SET, string(name)) + _table(),
        f"flush set {name}",
    )


def _delete_set(b: Batch, name: str) -> None:
    b.add(NFT_MSG_DELSET, _table() + attr(NFTA_SET_NAME, string(name)), f"delete set {name}")


def element(key: bytes, *, flags: int = 0, data: bytes = b"", udata: bytes = b"") -> list[bytes]:
    """An element's attributes, in libnftnl's order (flags, key, data, userdata)."""
    parts = [attr(NFTA_SET_ELEM_FLAGS, be32(flags))] if flags else []
    parts.append(nested(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, key)))
    if data:
        parts.append(nested(NFTA_SET_ELEM_DATA, data))
    if udata:
        parts.append(attr(NFTA_SET_ELEM_USERDATA, udata))
    return parts


def _elements(
    b: Batch,
    msg: int,
    set_name: str,
    elements: Sequence[list[bytes]],
    label: str,
) -> None:
    head = _table() + attr(NFTA_SET_ELEM_LIST_SET, string(set_name))
    # A nested attribute holds at most 64 KiB: big CIDR lists take several messages.
    for start in range(0, len(elements), ELEMENTS_PER_MESSAGE):
        chunk = elements[start : start + ELEMENTS_PER_MESSAGE]
        # libnftnl numbers the list entries 1, 2, ...; the kernel ignores their type.
        items = [nested(i, *parts) for i, parts in enumerate(chunk, 1)]
        attrs = head + nested(NFTA_SET_ELEM_LIST_ELEMENTS, *items)
        b.add(msg, attrs, label, NLM_F_CREATE if msg == NFT_MSG_NEWSETELEM else 0)


def interval_elements(nets: Iterable[ipaddress.IPv4Network]) -> list[list[bytes]]:
    """Ranges as nft 1.0.6 writes them into an interval set: a start element per range and
    an interval-end element just past it (none for a range reaching 255.255.255.255, whose
    start is flagged open instead), after an interval-end at 0.0.0.0 unless a range starts
    there. Adjacent ranges stay separate, as in nft without auto-merge."""
    ranges = sorted((int(n.network_address), int(n.broadcast_address)) for n in nets)
    out: list[list[bytes]] = []
    if ranges and ranges[0][0] != 0:
        out.append(element(bytes(4), flags=NFT_SET_ELEM_INTERVAL_END))
    for low, high in ranges:
        top = high == 0xFFFFFFFF
        out.append(element(struct.pack("!I", low), udata=UDATA_INTERVAL_OPEN if top else b""))
        if not top:
            out.append(element(struct.pack("!I", high + 1), flags=NFT_SET_ELEM_INTERVAL_END))
    return out


def _ifname_key(name: str) -> bytes:
    raw = name.encode()
    if len(raw) >= IFNAMSIZ:
        raise ValueError(f"interface name too long: {name!r}")
    return raw.ljust(IFNAMSIZ, b"\x00")


def _verdict(code: str, chain: str = "") -> bytes:
    inner = attr(NFTA_VERDICT_CODE, be32(VERDICTS[code]))
    if chain:
        inner += attr(NFTA_VERDICT_CHAIN, string(chain))
    return nested(NFTA_DATA_VERDICT, inner)


# Expressions -----------------------------------------------------------------------------
def expr(name: str, *attrs: bytes) -> bytes:
    return nested(
        NFTA_LIST_ELEM, attr(NFTA_EXPR_NAME, string(name)), nested(NFTA_EXPR_DATA, *attrs)
    )


def meta(key: int) -> bytes:
    return expr("meta", attr(2, be32(key)), attr(1, be32(REG_1)))  # KEY, DREG


def cmp(op: int, value: bytes) -> bytes:
    return expr(
        "cmp", attr(1, be32(REG_1)), attr(2, be32(op)), nested(3, attr(NFTA_DATA_VALUE, value))
    )


def payload(base: int, offset: int, length: int) -> bytes:
    return expr(
        "payload",
        attr(1, be32(REG_1)),
        attr(2, be32(base)),
        attr(3, be32(offset)),
        attr(4, be32(length)),
    )


def lookup(set_name: str) -> bytes:
    """A named set, found by name (the kernel walks the table's sets for it)."""
    return expr("lookup", attr(2, be32(REG_1)), attr(1, string(set_name)))  # SREG, SET


def immediate_verdict(code: str) -> bytes:
    return expr("immediate", attr(1, be32(REG_VERDICT)), nested(2, _verdict(code)))


def immediate_data(value: bytes) -> bytes:
    return expr("immediate", attr(1, be32(REG_1)), nested(2, attr(NFTA_DATA_VALUE, value)))


def _l4proto_is(proto: str) -> list[bytes]:
    return [meta(META_L4PROTO), cmp(CMP_EQ, bytes([IPPROTO[proto]]))]


def _ipv4() -> list[bytes]:
    """The dependency nft adds before an `ip` payload match in an inet table."""
    return [meta(META_NFPROTO), cmp(CMP_EQ, bytes([NFPROTO["ipv4"]]))]


def encode_term(term: nftc.Term) -> list[bytes]:
    """The expressions nft 1.0.6 emits for one term."""
    return list(_encode_plain(term))


@functools.lru_cache(maxsize=4096)
def _encode_plain(term: nftc.Term) -> tuple[bytes, ...]:
    """Cached, as most terms recur in every sandbox."""
    return tuple(_encode(term))


def _encode(term: nftc.Term) -> list[bytes]:
    match term:
        case nftc.Meta(key="nfproto", value=v):
            return [meta(META_NFPROTO), cmp(CMP_EQ, bytes([NFPROTO[v]]))]
        case nftc.Meta(key="l4proto", value=v):
            return _l4proto_is(v)
        case nftc.Saddr(address=a, negate=neg):
            value = ipaddress.IPv4Address(a).packed
            return [*_ipv4(), payload(BASE_NETWORK, 12, 4), cmp(CMP_NEQ if neg else CMP_EQ, value)]
        case nftc.DaddrIn(set_name=s):
            return [*_ipv4(), payload(BASE_NETWORK, 16, 4), lookup(s)]
        case nftc.Dport(proto=proto, port=port):
            return [
                *_l4proto_is(proto),
                payload(BASE_TRANSPORT, 2, 2),
                cmp(CMP_EQ, struct.pack("!H", port)),
            ]
        case nftc.CtStatusDnat():
            host32 = struct.Struct("=I").pack  # ct status is a host-order bitmask
            bitwise = expr(
                "bitwise",
                attr(1, be32(REG_1)),
                attr(2, be32(REG_1)),
                attr(3, be32(4)),
                nested(4, attr(NFTA_DATA_VALUE, host32(IPS_DST_NAT))),
                nested(5, attr(NFTA_DATA_VALUE, host32(0))),
            )
            ct = expr("ct", attr(2, be32(CT_STATUS)), attr(1, be32(REG_1)))
            return [ct, bitwise, cmp(CMP_NEQ, host32(0))]
        case nftc.LimitLog(prefix=prefix):
            limit = expr(
                "limit",
                attr(1, struct.pack("!Q", nftc.LOG_RATE_PER_S)),
                attr(2, struct.pack("!Q", LIMIT_UNIT_SECOND)),
                attr(3, be32(nftc.LOG_BURST)),
                attr(4, be32(0)),  # packets, not bytes
                attr(5, be32(0)),
            )
            log = expr("log", attr(2, string(prefix)), attr(1, struct.pack("!H", nftc.NFLOG_GROUP)))
            return [limit, log]
        case nftc.Verdict(name=name):
            return [immediate_verdict(name)]
        case nftc.Redirect(port=port):
            redir = expr("redir", attr(1, be32(REG_1)), attr(3, be32(NF_NAT_RANGE_PROTO_SPECIFIED)))
            return [immediate_data(struct.pack("!H", port)), redir]
        case nftc.Reject(tcp_reset=True):
            return [expr("reject", attr(1, be32(REJECT_TCP_RST)), attr(2, b"\x00"))]
        case nftc.Reject():
            return [
                expr(
                    "reject", attr(1, be32(REJECT_ICMPX)), attr(2, bytes([ICMPX_ADMIN_PROHIBITED]))
                )
            ]
    raise TypeError(f"no netlink encoding for {term!r}")


def _rule(b: Batch, chain: str, rule: nftc.Rule, index: int) -> None:
    exprs = [e for term in rule for e in encode_term(term)]
    attrs = _table() + attr(NFTA_RULE_CHAIN, string(chain))
    attrs += nested(NFTA_RULE_EXPRESSIONS, *exprs)
    b.add(
        NFT_MSG_NEWRULE,
        attrs,
        f"add rule {chain} #{index}: {nftc.render(rule)}",
        NLM_F_CREATE | NLM_F_APPEND,
    )


# Transactions (the scripts' twins) ---------------------------------------------------------
def _declare(b: Batch, slot: int) -> None:
    r4, a4, d4 = nftc.set_names(slot)
    _new_set(b, r4, NFT_SET_TIMEOUT)
    _new_set(b, a4, NFT_SET_INTERVAL)
    _new_set(b, d4, NFT_SET_INTERVAL)
    for c in nftc.chain_names(slot):
        _chain(b, NFT_MSG_NEWCHAIN, c, "add")


def _content_and_rules(
    b: Batch, slot: int, address: str, policy: EgressPolicy, inspect: bool
) -> None:
    for name, nets in nftc.cidr_content(slot, policy).items():
        _elements(b, NFT_MSG_NEWSETELEM, name, interval_elements(nets), f"add element {name}")
    for chain, rules in nftc.sandbox_rule_terms(slot, address, policy, inspect).items():
        for i, rule in enumerate(rules, 1):
            _rule(b, chain, rule, i)


def _map_elements(b: Batch, slot: int, msg: int) -> None:
    key = _ifname_key(nftc.ifname(slot))
    for m, c in zip(nftc.MAPS, nftc.chain_names(slot), strict=True):
        if msg == NFT_MSG_NEWSETELEM:
            elem = element(key, data=_verdict("goto", c))
            _elements(b, msg, m, [elem], f"add element {m} {nftc.ifname(slot)} : goto {c}")
        else:
            _elements(b, msg, m, [element(key)], f"delete element {m} {nftc.ifname(slot)}")


def sandbox_add(slot: int, address: str, policy: EgressPolicy, inspect: bool = False) -> Batch:
    """The twin of `nft.sandbox_add_script`: install one sandbox (stale leftovers replaced)."""
    b = Batch()
    _declare(b, slot)
    for c in nftc.chain_names(slot):
        _flush_chain(b, c)
    for s in nftc.set_names(slot):
        _flush_set(b, s)
    _content_and_rules(b, slot, address, policy, inspect)
    # Map elements last: the interface is dispatched only to complete chains.
    _map_elements(b, slot, NFT_MSG_NEWSETELEM)
    return b


def sandbox_update(slot: int, address: str, policy: EgressPolicy, inspect: bool = False) -> Batch:
    """The twin of `nft.sandbox_update_script`: resolved addresses survive while names
    matter under the new policy."""
    b = Batch()
    _declare(b, slot)
    for c in nftc.chain_names(slot):
        _flush_chain(b, c)
    r4, a4, d4 = nftc.set_names(slot)
    _flush_set(b, a4)
    _flush_set(b, d4)
    if not (policy.domains_enforced and policy.allow_domains):
        _flush_set(b, r4)
    _content_and_rules(b, slot, address, policy, inspect)
    return b


def sandbox_remove(slot: int) -> Batch:
    """The twin of `nft.sandbox_remove_script`: declare (no-op when present), then delete, so
    it is valid whether or not any of it exists, on kernels without DESTROY messages too."""
    b = Batch()
    _declare(b, slot)
    _map_elements(b, slot, NFT_MSG_NEWSETELEM)
    _map_elements(b, slot, NFT_MSG_DELSETELEM)
    for c in nftc.chain_names(slot):
        _flush_chain(b, c)
    for c in nftc.chain_names(slot):
        _chain(b, NFT_MSG_DELCHAIN, c, "delete")
    for s in nftc.set_names(slot):
        _delete_set(b, s)
    return b
