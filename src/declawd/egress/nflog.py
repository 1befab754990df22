"""Datapath audit: read NFLOG group 7 over netlink and turn each logged packet into an event.

The nft rules log a connection's first packet with a prefix `<verdict>:<reason>` (e.g.
`deny:floor`); the rules are shared by every sandbox, so the sandbox is the packet's input
interface (NFULA_IFINDEX_INDEV, the veth `s<slot>` in the gateway netns, see `slot_of`); the
packet's IP/TCP/UDP headers give address, port and protocol. The
parsing here is pure (bytes in, records out) so it is tested without a kernel; `NflogReader`
is the thin socket part. Malformed messages are skipped, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from declawd.egress.nfnetlink import (
    NETLINK_NETFILTER,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    align,
    attr,
    attributes,
    message,
)

log = logging.getLogger(__name__)

NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1

NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_TIMEOUT = 4
NFULA_CFG_QTHRESH = 5
NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_UNBIND = 2
NFULNL_COPY_PACKET = 2

NFULA_PACKET_HDR = 1
NFULA_IFINDEX_INDEV = 4
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10

AUDIT_GROUP = 7
COPY_RANGE = 96  # IPv6 header (40) + TCP/UDP ports: headers only, never user payload
FLUSH_TIMEOUT_CS = 10  # kernel batches up to 0.1 s (default 1 s) before delivering
QUEUE_THRESHOLD = 32  # ...or this many packets, whichever comes first

_PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
_VERDICTS = {"allow", "deny"}


@dataclass(frozen=True)
class LogPrefix:
    verdict: str
    reason: str


@dataclass(frozen=True)
class PacketInfo:
    src: str
    dst: str
    protocol: str
    dport: int | None


@dataclass(frozen=True)
class NflogRecord:
    prefix: str
    payload: bytes
    indev: int | None = None


def parse_prefix(prefix: str) -> LogPrefix | None:
    """`deny:floor` → LogPrefix; anything else (another table's logs) → None."""
    parts = prefix.strip().rstrip("\x00").strip().split(":")
    if len(parts) != 2 or parts[0] not in _VERDICTS:
        return None
    reason = parts[1].strip()
    if not reason:
        return None
    return LogPrefix(parts[0], reason)


def slot_of(indev: int | None, indextoname: Callable[[int], str] | None = None) -> int | None:
    """The slot whose veth `s<slot>` has ifindex `indev` (in the caller's netns), or None
    (no input interface, not a sandbox's, or gone since the packet was logged)."""
    if indev is None:
        return None
    try:
        name = (indextoname or socket.if_indextoname)(indev)
    except OSError:
        return None
    if not (name.startswith("s") and name[1:].isdigit()):
        return None
    return int(name[1:])


def parse_packet(payload: bytes) -> PacketInfo | None:
    """Addresses, protocol and destination port from a (possibly truncated) IP packet."""
    if not payload:
        return None
    version = payload[0] >> 4
    if version == 4:
        if len(payload) < 20:
            return None
        ihl = (payload[0] & 0x0F) * 4
        if ihl < 20:
            return None
        proto = payload[9]
        src = str(ipaddress.IPv4Address(payload[12:16]))
        dst = str(ipaddress.IPv4Address(payload[16:20]))
        frag_offset = struct.unpack("!H", payload[6:8])[0] & 0x1FFF
        l4 = payload[ihl:] if frag_offset == 0 else b""
    elif version == 6:
        if len(payload) < 40:
            return None
        proto = payload[6]
        src = str(ipaddress.IPv6Address(payload[8:24]))
        dst = str(ipaddress.IPv6Address(payload[24:40]))
        l4 = payload[40:]  # extension headers are not followed: port stays unknown
    else:
        return None
    dport: int | None = None
    if proto in (6, 17, 132) and len(l4) >= 4:
        dport = struct.unpack("!H", l4[2:4])[0]
    return PacketInfo(src, dst, _PROTOCOLS.get(proto, str(proto)), dport)


def parse_messages(data: bytes) -> Iterator[NflogRecord]:
    """Every NFULNL_MSG_PACKET in one netlink datagram (several may be batched)."""
    off = 0
    packet_type = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
    while off + 16 <= len(data):
        length, mtype, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
        if length < 16 or off + length > len(data):
            return
        if mtype == packet_type and length >= 20:
            prefix = ""
            payload = b""
            indev: int | None = None
            for atype, value in attributes(
                data[off + 20 : off + length]
            ):  # 16 nlmsghdr + 4 nfgenmsg
                if atype == NFULA_PREFIX:
                    prefix = value.split(b"\x00", 1)[0].decode("utf-8", errors="replace")
                elif atype == NFULA_PAYLOAD:
                    payload = value
                elif atype == NFULA_IFINDEX_INDEV and len(value) >= 4:
                    indev = struct.unpack("!I", value[:4])[0]
            yield NflogRecord(prefix, payload, indev)
        off += align(length)


def config_message(group: int, attrs: bytes, seq: int, family: int = socket.AF_UNSPEC) -> bytes:
    """NFULNL_MSG_CONFIG for `group` (the nfgenmsg res_id), asking for an ACK."""
    mtype = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    return message(mtype, NLM_F_REQUEST | NLM_F_ACK, seq, family, group, attrs)


def _check_ack(data: bytes) -> None:
    off = 0
    while off + 16 <= len(data):
        length, mtype = struct.unpack_from("=IH", data, off)
        if mtype == NLMSG_ERROR and length >= 20:
            err = struct.unpack_from("=i", data, off + 16)[0]
            if err != 0:
                raise OSError(-err, f"nflog config: {os.strerror(-err)}")
        if length < 16:
            return
        off += align(length)


class NflogReader:
    """Binds NFLOG `group` in the current netns and calls `on_record` for each logged packet."""

    def __init__(self, on_record: Callable[[NflogRecord], None], group: int = AUDIT_GROUP) -> None:
        self.group = group
        self._on_record = on_record
        self._sock: socket.socket | None = None

    def start(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind((0, 0))
            sock.settimeout(2.0)
            # A previous daemon instance may still hold the group (crash): unbind first.
            for seq, attrs in enumerate(
                (
                    attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_UNBIND])),
                    attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND])),
                    attr(NFULA_CFG_MODE, struct.pack("!IBB", COPY_RANGE, NFULNL_COPY_PACKET, 0)),
                    attr(NFULA_CFG_TIMEOUT, struct.pack("!I", FLUSH_TIMEOUT_CS)),
                    attr(NFULA_CFG_QTHRESH, struct.pack("!I", QUEUE_THRESHOLD)),
                ),
                start=1,
            ):
                sock.send(config_message(self.group, attrs, seq))
                try:
                    _check_ack(sock.recv(65536))
                except OSError as exc:
                    if seq != 1:  # unbinding a group nobody holds may fail; harmless
                        raise
                    log.debug("nflog unbind: %s", exc)
            sock.setblocking(False)
            asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def stop(self) -> None:
        """Unregister and close. Idempotent."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(64):  # bounded work per wake-up keeps the loop fair to the resolver
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # ENOBUFS: the kernel dropped log messages under load; keep reading.
                log.warning("nflog recv: %s", exc)
                return
            for record in parse_messages(data):
                try:
                    self._on_record(record)
                except Exception:
                    log.exception("nflog record handler failed")
