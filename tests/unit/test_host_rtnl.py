"""host.rtnl without root: the requests it encodes and how it reads the kernel's answers.

A scripted stand-in replaces the socket: it records each request and queues the datagrams
the script answers it with. The expected request bodies are the bytes pyroute2 0.9 sent
for the same calls (captured with strace), so the kernel is asked exactly what it was.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable, Iterator

import pytest

from declawd.host import rtnl as rt
from declawd.host.rtnl import HEADER, Rtnl, RtnlError

Datagram = tuple[bytes, int]  # data, sender port id (0: the kernel)
Script = Callable[[int], list[Datagram]]  # request seq → datagrams that answer it
NLM_F_MULTI = 0x2


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.script: list[Script] = []
        self.queue: list[Datagram] = []

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        self.queue.extend(self.script.pop(0)(HEADER.unpack_from(data)[3]))
        return len(data)

    def recvfrom_into(self, buf: bytearray, nbytes: int, flags: int) -> tuple[int, tuple[int, int]]:
        assert flags == rt.socket.MSG_TRUNC
        data, sender = self.queue.pop(0)
        buf[: min(nbytes, len(data))] = data[:nbytes]
        return len(data), (sender, 0)  # MSG_TRUNC: the real size, even when cut

    def close(self) -> None:
        pass

    def requests(self) -> list[tuple[int, int, bytes]]:
        """(type, flags, body) of each request sent."""
        return [(HEADER.unpack_from(m)[1], HEADER.unpack_from(m)[2], m[16:]) for m in self.sent]


@pytest.fixture
def kernel() -> Iterator[tuple[Rtnl, FakeSocket]]:
    rtnl = Rtnl()  # an unprivileged NETLINK_ROUTE socket, swapped for the stand-in
    rtnl._sock.close()
    fake = FakeSocket()
    rtnl._sock = fake  # type: ignore[assignment]
    yield rtnl, fake


def msg(mtype: int, seq: int, payload: bytes, flags: int = 0) -> bytes:
    data = HEADER.pack(16 + len(payload), mtype, flags, seq, 4242) + payload
    return data + b"\x00" * (-len(data) % 4)


def ack(code: int = 0) -> Script:
    """An NLMSG_ERROR answer: 0 is an ACK, a negative errno a refusal."""
    return lambda seq: [(msg(rt.NLMSG_ERROR, seq, struct.pack("=i", code) + bytes(16)), 0)]


def link(index: int, name: str, alias: str | None = None, flags: int = NLM_F_MULTI) -> bytes:
    payload = rt.ifinfo(index) + rt.attr(rt.IFLA_IFNAME, rt.asciiz(name))
    payload += rt.attr(4, struct.pack("=I", 1500))  # IFLA_MTU: attributes not asked for
    if alias is not None:
        payload += rt.attr(rt.IFLA_IFALIAS, rt.asciiz(alias))
    return payload


def dump(*datagrams: list[bytes], intr: bool = False) -> Script:
    """A link dump answered in `datagrams` (lists of link payloads), then NLMSG_DONE."""

    def answer(seq: int) -> list[Datagram]:
        flags = NLM_F_MULTI | (rt.NLM_F_DUMP_INTR if intr else 0)
        out = [(b"".join(msg(rt.RTM_NEWLINK, seq, p, flags) for p in d), 0) for d in datagrams]
        return [*out, (msg(rt.NLMSG_DONE, seq, struct.pack("=i", 0), flags), 0)]

    return answer


S1 = "00" * 16 + "07000300 73310000"  # ifinfomsg (all 0) + IFLA_IFNAME "s1"


def test_requests_are_the_ones_pyroute2_sent(kernel: tuple[Rtnl, FakeSocket]) -> None:
    rtnl, fake = kernel
    fake.script = [ack(), ack(), lambda seq: [(msg(rt.RTM_NEWLINK, seq, link(2, "s1")), 0)],
                   ack(), ack(), ack(), ack(), dump([])]  # fmt: skip
    rtnl.delete("s1")
    rtnl.add_veth("s1", "eth0", 3)
    assert rtnl.require("s1") == 2
    rtnl.set_link(2, up=True, alias="sbx-1")
    rtnl.set_link(1, up=False)
    rtnl.replace_address(2, "10.201.0.1", 30)
    rtnl.replace_default_route("10.201.0.1")
    assert rtnl.aliases() == {}
    veth = (S1 + "3c001200 09000100 76657468 00000000 2c000200 28000100" + "00" * 16
            + "09000300 65746830 00000000 08001c00 03000000")  # fmt: skip
    expected = [
        (rt.RTM_DELLINK, 0x5, S1),  # REQUEST|ACK
        (rt.RTM_NEWLINK, 0x605, veth),  # REQUEST|ACK|CREATE|EXCL
        (rt.RTM_GETLINK, 0x1, S1),  # REQUEST: the reply answers it (pyroute2 also asked ACK)
        (rt.RTM_NEWLINK, 0x5, "00000000 02000000 01000000 01000000 0a001400 7362782d 31000000"),
        (rt.RTM_NEWLINK, 0x5, "00000000 01000000 00000000 01000000"),
        (rt.RTM_NEWADDR, 0x505, "021e0000 02000000 08000100 0ac90001 08000200 0ac90001"),
        (rt.RTM_NEWROUTE, 0x505, "02000000 fe040001 00000000 08000500 0ac90001"),
        (rt.RTM_GETLINK, 0x301, "00" * 16),  # REQUEST|DUMP
    ]
    assert fake.requests() == [(t, f, bytes.fromhex(b)) for t, f, b in expected]
    seqs = [HEADER.unpack_from(m)[3] for m in fake.sent]
    assert seqs == list(range(1, 9))


def test_an_ipv6_address_goes_without_ifa_local(kernel: tuple[Rtnl, FakeSocket]) -> None:
    rtnl, fake = kernel
    fake.script = [ack()]
    rtnl.replace_address(2, "fd00::1", 64)
    body = "0a400000 02000000 14000100 fd000000 00000000 00000000 00000001"
    assert fake.requests() == [(rt.RTM_NEWADDR, 0x505, bytes.fromhex(body))]


def test_a_refusal_names_the_operation_and_the_errno(kernel: tuple[Rtnl, FakeSocket]) -> None:
    rtnl, fake = kernel
    fake.script = [ack(-errno.ENODEV), ack(-errno.EEXIST), ack(-errno.ENETUNREACH)]
    with pytest.raises(RtnlError, match=r"^rtnetlink link set 7: No such device$") as info:
        rtnl.set_link(7)
    assert (info.value.what, info.value.errno) == ("link set 7", errno.ENODEV)
    with pytest.raises(RtnlError) as info:
        rtnl.add_veth("s1", "eth0", 3)
    assert (info.value.what, info.value.errno) == ("link add s1 type veth peer eth0", errno.EEXIST)
    with pytest.raises(RtnlError) as info:
        rtnl.replace_default_route("10.77.0.1")
    assert info.value.what == "route replace default via 10.77.0.1"


def test_delete_of_a_missing_link_is_false_other_refusals_raise(
    kernel: tuple[Rtnl, FakeSocket],
) -> None:
    rtnl, fake = kernel
    fake.script = [ack(), ack(-errno.ENODEV), ack(-errno.EBUSY)]
    assert rtnl.delete("s1") is True
    assert rtnl.delete("s1") is False
    with pytest.raises(RtnlError) as info:
        rtnl.delete("s1")
    assert (info.value.what, info.value.errno) == ("link del s1", errno.EBUSY)


def test_a_lookup_the_kernel_refuses_is_no_interface(kernel: tuple[Rtnl, FakeSocket]) -> None:
    rtnl, fake = kernel
    fake.script = [ack(-errno.ENODEV), ack(-errno.ERANGE), ack(-errno.ENODEV)]
    assert rtnl.index("nope") is None
    assert rtnl.index("x" * 20) is None
    with pytest.raises(RtnlError, match="lookup nope: No such device") as info:
        rtnl.require("nope")
    assert info.value.errno == errno.ENODEV


def test_stale_and_foreign_answers_are_skipped(kernel: tuple[Rtnl, FakeSocket]) -> None:
    rtnl, fake = kernel

    def noisy(seq: int) -> list[Datagram]:
        refusal = struct.pack("=i", -errno.EPERM) + bytes(16)
        return [
            (msg(rt.NLMSG_ERROR, seq, refusal), 4242),  # not from the kernel: a forgery
            (msg(rt.NLMSG_ERROR, seq - 1, refusal), 0),  # an earlier request's
            (msg(rt.NLMSG_ERROR, seq, bytes(20)), 0),
        ]

    fake.script = [noisy]
    rtnl.set_link(3)
    assert fake.queue == []


def test_aliases_reads_a_dump_over_several_datagrams(kernel: tuple[Rtnl, FakeSocket]) -> None:
    rtnl, fake = kernel
    fake.script = [dump([link(1, "lo"), link(2, "s1", "sbx-1")], [link(3, "s2", "")])]
    assert rtnl.aliases() == {"lo": "", "s1": "sbx-1", "s2": ""}


def test_an_interrupted_dump_is_dumped_again(kernel: tuple[Rtnl, FakeSocket]) -> None:
    rtnl, fake = kernel
    fake.script = [dump([link(1, "lo"), link(2, "gone")], intr=True), dump([link(1, "lo")])]
    assert rtnl.aliases() == {"lo": ""}
    seqs = [HEADER.unpack_from(m)[3] for m in fake.sent]
    assert len(seqs) == 2 and seqs[0] != seqs[1]


def test_a_dump_never_undisturbed_fails(kernel: tuple[Rtnl, FakeSocket]) -> None:
    rtnl, fake = kernel
    fake.script = [dump([link(1, "lo")], intr=True)] * rt.DUMP_ATTEMPTS
    with pytest.raises(RtnlError) as info:
        rtnl.aliases()
    assert (info.value.what, info.value.errno) == ("link dump", errno.EINTR)
    assert len(fake.sent) == rt.DUMP_ATTEMPTS


def test_a_dump_the_kernel_aborts_raises(kernel: tuple[Rtnl, FakeSocket]) -> None:
    rtnl, fake = kernel
    fake.script = [
        lambda seq: [(msg(rt.NLMSG_DONE, seq, struct.pack("=i", -errno.EMSGSIZE), 2), 0)],
        ack(-errno.EPERM),
    ]
    with pytest.raises(RtnlError, match="link dump: Message too long"):
        rtnl.aliases()
    with pytest.raises(RtnlError, match="link dump: Operation not permitted"):
        rtnl.aliases()


def test_a_cut_or_malformed_datagram_is_reported(kernel: tuple[Rtnl, FakeSocket]) -> None:
    rtnl, fake = kernel
    big = lambda seq: [(msg(rt.RTM_NEWLINK, seq, bytes(rt.RECV_BUFFER)), 0)]  # noqa: E731
    short = lambda seq: [(HEADER.pack(12, rt.NLMSG_ERROR, 0, seq, 0) + bytes(4), 0)]  # noqa: E731
    fake.script = [big, short]
    with pytest.raises(RtnlError) as info:
        rtnl.index("s1")  # a lookup's refusals mean "none", a cut answer does not
    assert info.value.errno == errno.EMSGSIZE
    with pytest.raises(RtnlError) as info:
        rtnl.set_link(2)
    assert (info.value.what, info.value.errno) == ("link set 2", errno.EBADMSG)
