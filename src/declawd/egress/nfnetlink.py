"""nf_tables over netlink: message framing, batches and ACKs, and set-element messages.

The resolver's admit and the per-sandbox control path must not cost more as the node grows:
libnftables dumps every chain and set of the table into its cache before each batch, whereas
a netlink message names its table and object and the kernel touches only that object.
Encoding and ACK parsing are pure (bytes in, bytes out; rule expressions live in `nftrules`);
`NfTablesSocket` is the thin socket part. Invariant: one call is one batch (one kernel
transaction, all or nothing) and every message asks for an ACK, so a refused change raises
NftError instead of passing silently.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from declawd.egress.nftctl import NftError
from declawd.host import call_in_netns

NETLINK_NETFILTER = 12
NETLINK_CAP_ACK = 10  # errors echo only the header, not the whole (large) request
NETLINK_EXT_ACK = 11
SOL_NETLINK = 270
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFT_MSG_NEWCHAIN = 3
NFT_MSG_DELCHAIN = 5
NFT_MSG_NEWRULE = 6
NFT_MSG_DELRULE = 8
NFT_MSG_NEWSET = 9
NFT_MSG_DELSET = 11
NFT_MSG_NEWSETELEM = 12
NFT_MSG_GETSETELEM = 13
NFT_MSG_DELSETELEM = 14
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
NLMSG_ERROR = 2
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
NLMSGERR_ATTR_MSG = 1

NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_DATA = 2
NFTA_SET_ELEM_TIMEOUT = 4
NFTA_DATA_VALUE = 1

FAMILIES = {"ip": 2, "inet": 1, "ip6": 10, "arp": 3, "bridge": 7, "netdev": 5}
ACK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Element:
    """One set element: the key as the kernel stores it, and an optional timeout (ms)."""

    key: bytes
    timeout_ms: int | None = None


@dataclass(frozen=True)
class Ack:
    seq: int
    error: int  # 0 or a negative errno, as the kernel sends it
    message: str = ""


def ipv4_element(address: str, timeout_s: float | None = None) -> Element:
    """An IPv4 key (network order); the timeout rounds up to whole seconds like nft's text."""
    key = ipaddress.IPv4Address(address).packed
    if timeout_s is None:
        return Element(key)
    return Element(key, max(1, int(timeout_s + 0.999)) * 1000)


def split_table(table: str) -> tuple[int, str]:
    """`inet declawd` → (NFPROTO_INET, "declawd")."""
    family, _, name = table.partition(" ")
    if family not in FAMILIES or not name or " " in name:
        raise ValueError(f"bad table spec {table!r}")
    return FAMILIES[family], name


def align(n: int) -> int:
    """Netlink aligns headers and attributes to 4 bytes."""
    return (n + 3) & ~3


def attr(atype: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("=HH", length, atype) + value + b"\x00" * (align(length) - length)


def nested(atype: int, *children: bytes) -> bytes:
    return attr(atype | NLA_F_NESTED, b"".join(children))


def string(value: str) -> bytes:
    """A NUL-terminated attribute value (names, log prefixes)."""
    return value.encode() + b"\x00"


def be32(value: int) -> bytes:
    """A 32-bit big-endian attribute value; negative values (verdict codes) wrap."""
    return struct.pack("!I", value & 0xFFFFFFFF)


def message(mtype: int, flags: int, seq: int, family: int, res_id: int, payload: bytes) -> bytes:
    """nlmsghdr + nfgenmsg (version 0, res_id big-endian) + attributes."""
    body = struct.pack("!BBH", family, 0, res_id) + payload
    return struct.pack("=IHHII", 16 + len(body), mtype, flags, seq, 0) + body


def setelem_message(
    msg: int,
    family: int,
    table: str,
    set_name: str,
    elements: Sequence[Element] | None,
    *,
    seq: int,
    flags: int = 0,
) -> bytes:
    """NFT_MSG_NEWSETELEM / DELSETELEM; `elements=None` on DELSETELEM flushes the set."""
    attrs = attr(NFTA_SET_ELEM_LIST_TABLE, string(table)) + attr(
        NFTA_SET_ELEM_LIST_SET, string(set_name)
    )
    if elements is not None:
        items = []
        for el in elements:
            parts = [nested(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, el.key))]
            if el.timeout_ms is not None:
                parts.append(attr(NFTA_SET_ELEM_TIMEOUT, struct.pack("!Q", el.timeout_ms)))
            items.append(nested(NFTA_LIST_ELEM, *parts))
        attrs += nested(NFTA_SET_ELEM_LIST_ELEMENTS, *items)
    mtype = (NFNL_SUBSYS_NFTABLES << 8) | msg
    return message(mtype, NLM_F_REQUEST | NLM_F_ACK | flags, seq, family, 0, attrs)


def nft_message(msg: int, family: int, attrs: bytes, *, flags: int = 0, seq: int = 0) -> bytes:
    """An nf_tables request asking for an ACK; `seq` is usually set later by `with_seq`."""
    mtype = (NFNL_SUBSYS_NFTABLES << 8) | msg
    return message(mtype, NLM_F_REQUEST | NLM_F_ACK | flags, seq, family, 0, attrs)


def with_seq(msg: bytes, seq: int) -> bytes:
    """The same message with nlmsg_seq = `seq` (the socket numbers a batch when it sends it)."""
    return msg[:8] + struct.pack("=I", seq) + msg[12:]


def batch(messages: Sequence[bytes], begin_seq: int, end_seq: int) -> bytes:
    """Wrap messages in BATCH_BEGIN/END: the kernel commits them as one transaction."""
    begin = message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, begin_seq, 0, NFNL_SUBSYS_NFTABLES, b"")
    end = message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, end_seq, 0, NFNL_SUBSYS_NFTABLES, b"")
    return begin + b"".join(messages) + end


def getsetelem_message(family: int, table: str, set_name: str, keys: Sequence[bytes], *,
                       seq: int) -> bytes:  # fmt: skip
    """NFT_MSG_GETSETELEM for exact keys: the kernel answers one NEWSETELEM per key found,
    in order, and stops at the first absent one (ENOENT)."""
    attrs = attr(NFTA_SET_ELEM_LIST_TABLE, string(table))
    attrs += attr(NFTA_SET_ELEM_LIST_SET, string(set_name))
    items = [nested(NFTA_LIST_ELEM, nested(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, k)))
             for k in keys]  # fmt: skip
    attrs += nested(NFTA_SET_ELEM_LIST_ELEMENTS, *items)
    mtype = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM
    return message(mtype, NLM_F_REQUEST | NLM_F_ACK, seq, family, 0, attrs)


def element_replies(data: bytes, seq: int) -> Iterator[tuple[bytes, bytes] | Ack]:
    """(key, data) of every element in the NEWSETELEM replies numbered `seq` in one
    datagram (data is b"" for a plain set), then the request's Ack when it is there."""
    newsetelem = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM
    off = 0
    while off + 16 <= len(data):
        length, mtype, _flags, mseq = struct.unpack_from("=IHHI", data, off)
        if length < 16 or off + length > len(data):
            return
        if mseq == seq and mtype == newsetelem:
            for atype, value in attributes(data[off + 20 : off + length]):
                if atype != NFTA_SET_ELEM_LIST_ELEMENTS:
                    continue
                for _, elem in attributes(value):
                    parts = dict(attributes(elem))
                    key = dict(attributes(parts.get(NFTA_SET_ELEM_KEY, b"")))
                    val = dict(attributes(parts.get(NFTA_SET_ELEM_DATA, b"")))
                    yield key.get(NFTA_DATA_VALUE, b""), val.get(NFTA_DATA_VALUE, b"")
        off += align(length)
    for ack in parse_acks(data):
        if ack.seq == seq:
            yield ack


def parse_acks(data: bytes) -> Iterator[Ack]:
    """Every NLMSG_ERROR (error 0 = ACK) in one datagram, with its extended-ACK text if any."""
    off = 0
    while off + 16 <= len(data):
        length, mtype, flags = struct.unpack_from("=IHH", data, off)
        if length < 16 or off + length > len(data):
            return
        if mtype == NLMSG_ERROR and length >= 36:
            error = struct.unpack_from("=i", data, off + 16)[0]
            orig_len, _t, _f, seq = struct.unpack_from("=IHHI", data, off + 20)
            text = ""
            if flags & 0x200:  # NLM_F_ACK_TLVS: TLVs follow the echoed request
                capped = flags & 0x100  # NLM_F_CAPPED: only its header was echoed
                tlv_off = off + 20 + (16 if capped else align(orig_len))
                for atype, value in attributes(data[tlv_off : off + length]):
                    if atype == NLMSGERR_ATTR_MSG:
                        text = value.split(b"\x00", 1)[0].decode(errors="replace")
            yield Ack(seq, error, text)
        off += align(length)


def attributes(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, value) of each attribute, the nested and byte-order flags masked off; stops
    at the first malformed one."""
    off = 0
    while off + 4 <= len(data):
        length, atype = struct.unpack_from("=HH", data, off)
        if length < 4 or off + length > len(data):
            return
        yield atype & NLA_TYPE_MASK, data[off + 4 : off + length]
        off += align(length)


class NfTablesSocket:
    """A NETLINK_NETFILTER socket bound in one network namespace; thread-safe."""

    def __init__(self, netns: str | None = None) -> None:
        """Open in the caller's netns, or in `netns` (a name or an nsfs path)."""
        self._lock = threading.Lock()
        self._seq = 0
        self._sock: socket.socket | None = (
            self._open() if netns is None else call_in_netns(netns, self._open)
        )

    @staticmethod
    def _open() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            sock.bind((0, 0))
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        except BaseException:
            sock.close()
            raise
        return sock

    def _next(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF or 1
        return self._seq

    def setelems(
        self, table: str, set_name: str, ops: Sequence[tuple[int, Sequence[Element] | None]]
    ) -> None:
        """Apply `ops` ((NEWSETELEM|DELSETELEM, elements or None=flush), ...) as one batch."""
        family, name = split_table(table)
        msgs = []
        for msg, elements in ops:
            flags = NLM_F_CREATE if msg == NFT_MSG_NEWSETELEM else 0
            msgs.append(setelem_message(msg, family, name, set_name, elements, seq=0,
                                        flags=flags))  # fmt: skip
        self.transact(msgs, context=f"{table} {set_name}")

    def transact(
        self, msgs: Sequence[bytes], *, labels: Sequence[str] = (), context: str = ""
    ) -> None:
        """Send `msgs` (each asking for an ACK) as one batch and wait for every ACK.

        A refusal raises NftError naming `context`, and the refused message's label when
        `labels` (one per message) are given; the kernel has then rolled back the batch.
        """
        with self._lock:
            sock = self._sock
            if sock is None:
                raise NftError("nf_tables socket closed")
            begin = self._next()
            numbered, seqs = [], []
            for msg in msgs:
                seqs.append(self._next())
                numbered.append(with_seq(msg, seqs[-1]))
            end = self._next()
            try:
                sock.send(batch(numbered, begin, end))
                errors = self._collect(sock, begin, end, set(seqs))
            except OSError as exc:
                raise NftError(f"{context}: netlink: {exc}") from exc
        if errors:
            ack = errors[0]
            detail = f" ({ack.message})" if ack.message else ""
            where = ""
            if labels and ack.seq in seqs:
                where = f" at {labels[seqs.index(ack.seq)]}"
            raise NftError(f"{context}{where}: {os.strerror(-ack.error)}{detail}")

    def get_elements(self, table: str, set_name: str, keys: Sequence[bytes]) -> list[bytes] | None:
        """The data of each key's element, in order (b"" for a plain set); None when one is
        absent. A read, not a transaction: it sees the last committed state."""
        family, name = split_table(table)
        found: list[bytes] = []
        with self._lock:
            sock = self._sock
            if sock is None:
                raise NftError("nf_tables socket closed")
            seq = self._next()
            try:
                sock.send(getsetelem_message(family, name, set_name, keys, seq=seq))
                sock.settimeout(ACK_TIMEOUT_S)
                while True:
                    for item in element_replies(sock.recv(1 << 20), seq):
                        if not isinstance(item, Ack):
                            found.append(item[1])
                        elif item.error == -errno.ENOENT:
                            return None
                        elif item.error:
                            raise NftError(f"{table} {set_name}: {os.strerror(-item.error)}")
                        else:
                            return found
            except TimeoutError as exc:
                raise NftError("no answer from nf_tables") from exc
            except OSError as exc:
                raise NftError(f"{table} {set_name}: netlink: {exc}") from exc

    @staticmethod
    def _collect(sock: socket.socket, begin: int, end: int, pending: set[int]) -> list[Ack]:
        """Read ACKs of this batch; stale ones (older batches) are skipped by sequence."""
        errors: list[Ack] = []
        sock.settimeout(ACK_TIMEOUT_S)
        while pending:
            try:
                # After an error the kernel has aborted: take what is queued, do not wait.
                data = sock.recv(65536, socket.MSG_DONTWAIT if errors else 0)
            except (BlockingIOError, InterruptedError):
                break
            except TimeoutError as exc:
                raise NftError("no ACK from nf_tables") from exc
            for ack in parse_acks(data):
                if not begin <= ack.seq <= end:
                    continue
                pending.discard(ack.seq)
                if ack.error:
                    errors.append(ack)
        return errors

    def close(self) -> None:
        """Idempotent."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
