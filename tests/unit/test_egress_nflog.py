"""nflog: prefix, packet-header and netlink message parsing from constructed bytes."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from declawd.egress.nflog import (
    NFNL_SUBSYS_ULOG,
    NFULA_IFINDEX_INDEV,
    NFULA_PAYLOAD,
    NFULA_PREFIX,
    LogPrefix,
    config_message,
    parse_messages,
    parse_packet,
    parse_prefix,
    slot_of,
)


def ipv4(src: str, dst: str, proto: int, l4: bytes, frag: int = 0) -> bytes:
    total = 20 + len(l4)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        1,
        frag,
        64,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return header + l4


def tcp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x02, 64240, 0, 0)


def udp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8, 0)


def attr(atype: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("=HH", length, atype) + value + b"\x00" * ((4 - length % 4) % 4)


def nflog_message(prefix: str, payload: bytes, indev: int = 5, seq: int = 1) -> bytes:
    body = struct.pack("=BBH", socket.AF_INET, 0, socket.htons(7))
    body += attr(1, struct.pack("!HBB", 0x0800, 1, 0))  # NFULA_PACKET_HDR
    body += attr(NFULA_IFINDEX_INDEV, struct.pack("!I", indev))
    body += attr(NFULA_PREFIX, prefix.encode() + b"\x00")
    body += attr(NFULA_PAYLOAD, payload)
    mtype = NFNL_SUBSYS_ULOG << 8
    return struct.pack("=IHHII", 16 + len(body), mtype, 0, seq, 0) + body


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("deny:floor", LogPrefix("deny", "floor")),
        ("allow:open", LogPrefix("allow", "open")),
        ("deny:udp_dns_only ", LogPrefix("deny", "udp_dns_only")),
        ("deny:gateway\x00", LogPrefix("deny", "gateway")),
    ],
)
def test_prefix_parsed(text: str, expected: LogPrefix) -> None:
    assert parse_prefix(text) == expected


@pytest.mark.parametrize(
    # The old layout's `<verdict>:<slot>:<reason>` named the slot; the shared rules cannot.
    "text",
    ["", "deny", "drop:floor", "deny:", "deny:3:floor", "deny:a:b"],
)
def test_foreign_or_malformed_prefix_ignored(text: str) -> None:
    assert parse_prefix(text) is None


def test_slot_of_the_input_interface() -> None:
    names = {5: "s12", 6: "lab0", 7: "s", 8: "sx1"}

    def indextoname(index: int) -> str:
        if index not in names:
            raise OSError(6, "No such device or address")
        return names[index]

    assert slot_of(5, indextoname) == 12
    assert [slot_of(i, indextoname) for i in (None, 6, 7, 8, 9)] == [None] * 5


def test_slot_of_the_loopback_in_this_netns() -> None:
    assert slot_of(socket.if_nametoindex("lo")) is None  # a real lookup: not a sandbox's


def test_ipv4_tcp_packet() -> None:
    info = parse_packet(ipv4("10.77.0.6", "203.0.113.66", 6, tcp(40000, 443)))
    assert info is not None
    assert (info.src, info.dst, info.protocol, info.dport) == (
        "10.77.0.6",
        "203.0.113.66",
        "tcp",
        443,
    )


def test_ipv4_udp_and_icmp_packets() -> None:
    info = parse_packet(ipv4("10.77.0.6", "1.1.1.1", 17, udp(5000, 443)))
    assert info is not None and (info.protocol, info.dport) == ("udp", 443)
    info = parse_packet(ipv4("10.77.0.6", "1.1.1.1", 1, b"\x08\x00\x00\x00"))
    assert info is not None and (info.protocol, info.dport) == ("icmp", None)


def test_non_first_fragment_has_no_port() -> None:
    info = parse_packet(ipv4("10.77.0.6", "1.1.1.1", 17, udp(1, 2), frag=5))
    assert info is not None and info.dport is None


def test_ipv6_packet() -> None:
    src = socket.inet_pton(socket.AF_INET6, "fd00::2")
    dst = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    header = struct.pack("!IHBB", 6 << 28, 20, 6, 64) + src + dst
    info = parse_packet(header + tcp(1, 443))
    assert info is not None and (info.dst, info.protocol, info.dport) == ("2001:db8::1", "tcp", 443)


@pytest.mark.parametrize("data", [b"", b"\x45", b"\x45" + b"\x00" * 10, b"\x41" + b"\x00" * 30])
def test_truncated_packets_rejected(data: bytes) -> None:
    assert parse_packet(data) is None


def test_netlink_batch_of_two_packet_messages() -> None:
    one = nflog_message("deny:floor", ipv4("10.77.0.14", "169.254.169.254", 6, tcp(1, 80)))
    two = nflog_message("allow:open", ipv4("10.77.0.18", "203.0.113.10", 17, udp(1, 53)), 9)
    records = list(parse_messages(one + two))
    assert [r.prefix for r in records] == ["deny:floor", "allow:open"]
    assert [r.indev for r in records] == [5, 9]
    info = parse_packet(records[0].payload)
    assert info is not None and (info.dst, info.dport) == ("169.254.169.254", 80)


def test_non_packet_messages_skipped() -> None:
    done = struct.pack("=IHHII", 20, 3, 0, 1, 0) + b"\x00" * 4
    assert list(parse_messages(done)) == []


def test_config_message_layout() -> None:
    msg = config_message(7, attr(1, b"\x01"), seq=9)
    length, mtype, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert length == len(msg) and mtype == (4 << 8) | 1 and seq == 9 and flags == 0x5
    assert msg[16:20] == bytes([socket.AF_UNSPEC, 0, 0, 7])


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_fuzz_random_netlink_bytes_never_crash(data: bytes) -> None:
    for record in parse_messages(data):
        parse_prefix(record.prefix)
        parse_packet(record.payload)
    parse_packet(data)
