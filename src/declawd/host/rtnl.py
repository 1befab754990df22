"""rtnetlink in-process: links, addresses and routes of the calling thread's netns.

A netlink socket belongs to the netns of the thread that opened it, so `Rtnl` is opened on
a thread that is already inside the namespace (`NetnsThread`, `call_in_netns`) and used
there. No `ip` process per change and no netlink library: the few requests here are fixed
structs packed with `struct` (1-3 µs each; pyroute2's message classes took 35-165 µs to
encode one and ~150 µs to decode a link, and its sync API ran an asyncio loop per call),
sent on one plain NETLINK_ROUTE socket, and each call reads its answer back before it
returns. The requests are those pyroute2 0.9 sent for the same calls, byte for byte, so the
kernel state they leave is the same; only a lookup no longer asks for an ACK besides its
reply. Invariant: every refusal raises `RtnlError` naming the operation and the interface;
"already gone" on delete is not one.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from types import TracebackType

from declawd.errors import Internal

# linux/netlink.h
NLMSG_ERROR = 2  # payload: int error (0 = ACK, else a negative errno) + the request's header
NLMSG_DONE = 3  # ends a dump; payload: int error, as NLMSG_ERROR
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10  # the dumped table changed meanwhile: the dump may be inconsistent
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
# linux/rtnetlink.h, if_link.h, veth.h, if_addr.h
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
IFLA_IFNAME = 3
IFLA_LINKINFO = 18
IFLA_IFALIAS = 20
IFLA_NET_NS_FD = 28
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_GATEWAY = 5
IFF_UP = 0x1
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4  # what pyroute2 sets on a route it adds (`ip route` would say boot, 3)
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1

HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, port id
IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, (pad), type, index, flags, change
IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst_len, src_len, tos, table,
#                                      protocol, scope, type, flags
ATTR = struct.Struct("=HH")  # rtattr: length (header + value, unpadded), type
ERROR = struct.Struct("=i")
# A dump part is at most 32 KiB (the kernel sizes them by our reads, capped there), one
# link's reply a few KiB; a datagram larger than this is reported, not cut silently.
RECV_BUFFER = 65536
DUMP_ATTEMPTS = 5


class RtnlError(Internal):
    """The kernel refused an rtnetlink request; the message names what and where."""

    def __init__(self, what: str, code: int) -> None:
        super().__init__(f"rtnetlink {what}: {os.strerror(code)}")
        self.what = what
        self.errno = code


def attr(atype: int, value: bytes) -> bytes:
    """One attribute, padded to 4 bytes. A nested one is an attribute whose value is other
    attributes; rtnetlink parses IFLA_LINKINFO and the rest without NLA_F_NESTED, and
    neither `ip` nor pyroute2 set it."""
    length = ATTR.size + len(value)
    return ATTR.pack(length, atype) + value + b"\x00" * (-length % 4)


def asciiz(value: str) -> bytes:
    """A string attribute's value: NUL-terminated, as the kernel stores names."""
    return value.encode() + b"\x00"


def attributes(data: bytes, offset: int) -> Iterator[tuple[int, bytes]]:
    """(type, value) of each attribute from `offset` on; stops at a malformed one."""
    while offset + ATTR.size <= len(data):
        length, atype = ATTR.unpack_from(data, offset)
        if length < ATTR.size or offset + length > len(data):
            return
        yield atype, data[offset + ATTR.size : offset + length]
        offset += (length + 3) & ~3


def text(value: bytes) -> str:
    return value.split(b"\x00", 1)[0].decode(errors="replace")


def ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    """The ifinfomsg every link request starts with (index 0: the name attribute says)."""
    return IFINFO.pack(0, 0, index, flags, change)


class Rtnl:
    """One rtnetlink socket in the netns of the thread that makes it (a context manager).

    One request at a time: each call sends one and reads its answer, so one thread uses it.
    """

    def __init__(self) -> None:
        # Unbound: the kernel gives it a port id at the first send.
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
        )
        self._buf = bytearray(RECV_BUFFER)
        self._seq = 0

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Idempotent."""
        self._sock.close()

    # protocol ----------------------------------------------------------------------

    def _send(self, mtype: int, flags: int, body: bytes) -> int:
        """Send one request; returns its sequence number, which the kernel's answer echoes."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        # Port id 0 in a request: the kernel fills in the sender's.
        head = HEADER.pack(HEADER.size + len(body), mtype, NLM_F_REQUEST | flags, self._seq, 0)
        self._sock.send(head + body)
        return self._seq

    def _answers(self, what: str, seq: int) -> Iterator[tuple[int, int, bytes]]:
        """(type, flags, payload) of each message numbered `seq`, as datagrams arrive.

        Messages of an earlier request (left unread by an exception) carry another number,
        and anything not sent by the kernel (port id 0) is dropped: in a sandbox's netns,
        its processes could otherwise send us look-alike answers.
        """
        buf = self._buf
        while True:
            # MSG_TRUNC: the datagram's real size, so a cut one is noticed.
            size, (sender, _groups) = self._sock.recvfrom_into(buf, len(buf), socket.MSG_TRUNC)
            if size > len(buf):
                raise RtnlError(what, errno.EMSGSIZE)
            if sender != 0:
                continue
            off = 0
            while off < size:
                if size - off < HEADER.size:
                    raise RtnlError(what, errno.EBADMSG)
                length, mtype, flags, mseq, _port = HEADER.unpack_from(buf, off)
                if length < HEADER.size or off + length > size:
                    raise RtnlError(what, errno.EBADMSG)
                if mseq == seq:
                    yield mtype, flags, bytes(buf[off + HEADER.size : off + length])
                off += (length + 3) & ~3

    @staticmethod
    def _check(what: str, payload: bytes) -> None:
        """Raise the refusal an NLMSG_ERROR or NLMSG_DONE carries, if it carries one."""
        if len(payload) < ERROR.size:
            raise RtnlError(what, errno.EBADMSG)
        code = -ERROR.unpack_from(payload)[0]
        if code:
            raise RtnlError(what, code)

    def _change(self, what: str, mtype: int, flags: int, body: bytes) -> None:
        """One change, asking for an ACK: its one answer is NLMSG_ERROR, 0 or a refusal."""
        seq = self._send(mtype, NLM_F_ACK | flags, body)
        atype, _flags, payload = next(self._answers(what, seq))
        if atype != NLMSG_ERROR:
            raise RtnlError(what, errno.EBADMSG)
        self._check(what, payload)

    def _dump(self, what: str, mtype: int, body: bytes) -> list[bytes]:
        """The payloads of a whole dump (parts until NLMSG_DONE), dumped again when the
        kernel flags it interrupted; RtnlError EINTR if it never completes undisturbed."""
        for _ in range(DUMP_ATTEMPTS):
            parts: list[bytes] = []
            intact = True
            for atype, flags, payload in self._answers(what, self._send(mtype, NLM_F_DUMP, body)):
                intact = intact and not flags & NLM_F_DUMP_INTR
                if atype in (NLMSG_DONE, NLMSG_ERROR):
                    self._check(what, payload)
                    break
                parts.append(payload)
            if intact:
                return parts
        raise RtnlError(what, errno.EINTR)

    # operations --------------------------------------------------------------------

    def index(self, name: str) -> int | None:
        """The interface index of `name`, None when there is no such interface."""
        seq = self._send(RTM_GETLINK, 0, ifinfo() + attr(IFLA_IFNAME, asciiz(name)))
        atype, _flags, payload = next(self._answers(f"lookup {name}", seq))
        if atype == NLMSG_ERROR:
            return None  # a refusal: ENODEV, or ERANGE for a name too long; either way, none
        return int(IFINFO.unpack_from(payload)[2])

    def require(self, name: str) -> int:
        """The interface index of `name`; RtnlError (ENODEV) when it does not exist."""
        idx = self.index(name)
        if idx is None:
            raise RtnlError(f"lookup {name}", errno.ENODEV)
        return idx

    def add_veth(self, name: str, peer: str, peer_netns_fd: int) -> None:
        """A veth `name` here whose peer `peer` is made inside the netns of `peer_netns_fd`."""
        # The peer is a link request of its own (ifinfomsg + attributes) nested in
        # IFLA_LINKINFO / IFLA_INFO_DATA / VETH_INFO_PEER.
        peer_link = ifinfo() + attr(IFLA_IFNAME, asciiz(peer))
        peer_link += attr(IFLA_NET_NS_FD, struct.pack("=i", peer_netns_fd))
        info = attr(IFLA_INFO_KIND, asciiz("veth"))
        info += attr(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer_link))
        body = ifinfo() + attr(IFLA_IFNAME, asciiz(name)) + attr(IFLA_LINKINFO, info)
        self._change(f"link add {name} type veth peer {peer}", RTM_NEWLINK,
                     NLM_F_CREATE | NLM_F_EXCL, body)  # fmt: skip

    def delete(self, name: str) -> bool:
        """Delete interface `name` (a veth takes its peer along); False if already gone."""
        body = ifinfo() + attr(IFLA_IFNAME, asciiz(name))
        try:
            self._change(f"link del {name}", RTM_DELLINK, 0, body)
        except RtnlError as exc:
            if exc.errno == errno.ENODEV:
                return False
            raise
        return True

    def set_link(self, index: int, *, up: bool = True, alias: str | None = None) -> None:
        """Bring interface `index` up (and set its alias, when given) in one request."""
        # `change` masks which of `flags` to apply: IFF_UP only.
        body = ifinfo(index, IFF_UP if up else 0, IFF_UP)
        if alias is not None:
            body += attr(IFLA_IFALIAS, asciiz(alias))
        self._change(f"link set {index}", RTM_NEWLINK, 0, body)

    def replace_address(self, index: int, address: str, prefixlen: int) -> None:
        """Set `address`/`prefixlen` on interface `index`; a no-op when it is there already."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        packed = socket.inet_pton(family, address)
        body = IFADDR.pack(family, prefixlen, 0, 0, index) + attr(IFA_ADDRESS, packed)
        if family == socket.AF_INET:  # IPv4 names the local address in IFA_LOCAL
            body += attr(IFA_LOCAL, packed)
        self._change(f"addr replace {address}/{prefixlen} dev {index}", RTM_NEWADDR,
                     NLM_F_CREATE | NLM_F_REPLACE, body)  # fmt: skip

    def replace_default_route(self, gateway: str) -> None:
        """0.0.0.0/0 via `gateway` in the main table (no RTA_DST: dst_len 0 is default)."""
        body = RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC,
                          RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)  # fmt: skip
        body += attr(RTA_GATEWAY, socket.inet_pton(socket.AF_INET, gateway))
        self._change(f"route replace default via {gateway}", RTM_NEWROUTE,
                     NLM_F_CREATE | NLM_F_REPLACE, body)  # fmt: skip

    def aliases(self) -> dict[str, str]:
        """name → alias ("" when none) of every interface here."""
        out: dict[str, str] = {}
        for link in self._dump("link dump", RTM_GETLINK, ifinfo()):
            name = alias = ""
            for atype, value in attributes(link, IFINFO.size):
                if atype == IFLA_IFNAME:
                    name = text(value)
                elif atype == IFLA_IFALIAS:
                    alias = text(value)
            out[name] = alias
        return out
