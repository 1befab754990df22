"""ClientHello parsing: real hellos from Python's ssl module, split every possible way."""

from __future__ import annotations

import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from declawd.egress.policy import EgressPolicy
from declawd.egress.proxy import SandboxView, decide_tls
from declawd.egress.resolved import ResolvedNames
from declawd.egress.sni import (
    MAX_HELLO_BYTES,
    ClientHello,
    Malformed,
    NeedMore,
    NotTls,
    is_ip_literal,
    parse_client_hello,
)


def real_hello(server_hostname: str | None, alpn: list[str] | None = None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def handshake_message(wire: bytes) -> bytes:
    """The handshake bytes of a single-record hello."""
    assert wire[0] == 0x16
    length = struct.unpack("!H", wire[3:5])[0]
    assert len(wire) == 5 + length
    return wire[5:]


def as_records(message: bytes, sizes: list[int]) -> bytes:
    out = bytearray()
    pos = 0
    for size in [*sizes, len(message)]:
        chunk = message[pos : pos + size]
        if not chunk:
            break
        out += b"\x16\x03\x01" + struct.pack("!H", len(chunk)) + chunk
        pos += len(chunk)
    return bytes(out)


def synthetic_hello(extensions: list[tuple[int, bytes]]) -> bytes:
    exts = b"".join(struct.pack("!HH", t, len(d)) + d for t, d in extensions)
    body = (
        b"\x03\x03"
        + b"\x11" * 32
        + b"\x00"
        + b"\x00\x02\x13\x01"
        + b"\x01\x00"
        + struct.pack("!H", len(exts))
        + exts
    )
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return as_records(message, [16000] * 8)


def sni_ext(*names: bytes) -> tuple[int, bytes]:
    entries = b"".join(b"\x00" + struct.pack("!H", len(n)) + n for n in names)
    return 0, struct.pack("!H", len(entries)) + entries


HELLO = real_hello("api.openai.com", alpn=["h2", "http/1.1"])


def test_real_hello_yields_sni_and_alpn() -> None:
    result = parse_client_hello(HELLO)
    assert isinstance(result, ClientHello)
    assert result.sni == "api.openai.com"
    assert result.alpn == ("h2", "http/1.1")
    assert 0x0304 in result.supported_versions
    assert result.wire_length == len(HELLO)


def test_hello_without_server_hostname_has_no_sni() -> None:
    result = parse_client_hello(real_hello(None))
    assert isinstance(result, ClientHello) and result.sni is None


def test_ip_address_hostname_sends_no_sni() -> None:
    # OpenSSL omits SNI for IP literals; the proxy then sees "no SNI".
    result = parse_client_hello(real_hello("203.0.113.10"))
    assert isinstance(result, ClientHello) and result.sni is None


def test_ip_literal_sni_is_flagged() -> None:
    # Same length as "example.com", so every length field stays valid.
    wire = real_hello("example.com").replace(b"example.com", b"203.0.113.1")
    result = parse_client_hello(wire)
    assert isinstance(result, ClientHello)
    assert result.sni == "203.0.113.1" and result.sni_is_ip_literal


def test_sni_is_lowercased_and_trailing_dot_dropped() -> None:
    wire = synthetic_hello([sni_ext(b"API.OpenAI.com.")])
    result = parse_client_hello(wire)
    assert isinstance(result, ClientHello) and result.sni == "api.openai.com"


def test_every_prefix_needs_more_and_the_whole_parses() -> None:
    for cut in range(1, len(HELLO)):
        assert parse_client_hello(HELLO[:cut]) == NeedMore(), cut
    assert isinstance(parse_client_hello(HELLO), ClientHello)


def test_bytes_after_the_hello_are_ignored() -> None:
    result = parse_client_hello(HELLO + b"\x17\x03\x03\x00\x05hello")
    assert isinstance(result, ClientHello) and result.wire_length == len(HELLO)


def test_split_into_two_records_at_every_boundary() -> None:
    message = handshake_message(HELLO)
    for cut in range(1, len(message)):
        wire = as_records(message, [cut])
        result = parse_client_hello(wire)
        assert isinstance(result, ClientHello) and result.sni == "api.openai.com", cut
        # and each of those also incrementally, at a few segment boundaries
        for seg in (1, 4, 5, 6, cut + 5, cut + 9, len(wire) - 1):
            if 0 < seg < len(wire):
                assert parse_client_hello(wire[:seg]) == NeedMore()


@pytest.mark.parametrize("size", [1, 3, 7, 64])
def test_many_small_records(size: int) -> None:
    message = handshake_message(real_hello("a.example.org"))
    sizes = [size] * 40
    result = parse_client_hello(as_records(message, sizes))
    assert isinstance(result, ClientHello) and result.sni == "a.example.org"


def test_too_many_records_is_malformed() -> None:
    message = handshake_message(HELLO)
    assert parse_client_hello(as_records(message, [1] * 100)) == Malformed("too_many_records")


def test_large_hello_up_to_limit_parses_and_over_limit_is_refused() -> None:
    padding = 0x0015
    fits = synthetic_hello([sni_ext(b"api.openai.com"), (padding, b"\x00" * 15000)])
    result = parse_client_hello(fits)
    assert isinstance(result, ClientHello) and result.sni == "api.openai.com"
    too_big = synthetic_hello([sni_ext(b"api.openai.com"), (padding, b"\x00" * MAX_HELLO_BYTES)])
    assert parse_client_hello(too_big) == Malformed("too_large")
    # refused as soon as the header announces it, without waiting for the bytes
    assert parse_client_hello(too_big[:20]) == Malformed("too_large")


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"\x00\x00\x00\x08\x04\xd2\x16/",
        b"\x16\x01",
    ],
)
def test_other_protocols_are_not_tls(data: bytes) -> None:
    assert parse_client_hello(data) == NotTls()


def test_ambiguous_hellos_are_malformed() -> None:
    two_names = synthetic_hello([sni_ext(b"api.openai.com", b"evil.com")])
    assert parse_client_hello(two_names) == Malformed("multiple_server_names")
    duplicate = synthetic_hello([sni_ext(b"api.openai.com"), sni_ext(b"evil.com")])
    assert parse_client_hello(duplicate) == Malformed("duplicate_extension")
    nul = synthetic_hello([sni_ext(b"api.openai.com\x00.evil.com")])
    assert parse_client_hello(nul) == Malformed("bad_server_name")
    utf8 = synthetic_hello([sni_ext("bücher.example".encode())])
    assert parse_client_hello(utf8) == Malformed("bad_server_name")


def test_non_handshake_record_inside_hello_is_malformed() -> None:
    message = handshake_message(HELLO)
    first = as_records(message[:50], [])
    alert = b"\x15\x03\x03\x00\x02\x01\x00"
    assert parse_client_hello(first + alert) == Malformed("unexpected_record")


def test_server_hello_type_is_not_a_client_hello() -> None:
    message = bytearray(handshake_message(HELLO))
    message[0] = 0x02
    assert parse_client_hello(as_records(bytes(message), [])) == Malformed("not_client_hello")


@pytest.mark.parametrize(
    ("name", "literal"),
    [
        ("203.0.113.1", True),
        ("[::1]", True),
        ("127.1", True),
        ("2130706433", True),
        ("0x7f.1", True),
        ("api.openai.com", False),
        ("1.example.org", False),
    ],
)
def test_ip_literal_detection(name: str, literal: bool) -> None:
    assert is_ip_literal(name) is literal


POLICY = EgressPolicy.parse(["api.openai.com"], ["0.0.0.0/0"])
VIEW = SandboxView("sbx-000000000001", POLICY)
DST = "203.0.113.10"


def _resolved() -> ResolvedNames:
    names = ResolvedNames()
    names.record(VIEW.sandbox_id, "api.openai.com", [DST], 60)
    names.record(VIEW.sandbox_id, "evil.com", [DST], 60)  # shared address, name not allowed
    return names


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_never_crash_and_never_allow_denied_names(data: bytes) -> None:
    result = parse_client_hello(data)
    assert isinstance(result, NeedMore | NotTls | Malformed | ClientHello)
    if isinstance(result, ClientHello):
        verdict = decide_tls(result, VIEW, _resolved(), DST)
        assert not verdict.allowed or result.sni == "api.openai.com"


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, len(HELLO) - 1), st.integers(0, 255)), min_size=1, max_size=6
    ),
    st.sampled_from([HELLO, real_hello("evil.com"), real_hello(None)]),
)
def test_fuzz_mutated_hellos(mutations: list[tuple[int, int]], base: bytes) -> None:
    data = bytearray(base)
    for pos, value in mutations:
        data[pos % len(data)] = value
    result = parse_client_hello(bytes(data))
    if isinstance(result, ClientHello):
        verdict = decide_tls(result, VIEW, _resolved(), DST)
        assert not verdict.allowed or result.sni == "api.openai.com"
        # incremental consistency: every prefix is a prefix, never a different answer
        for cut in range(0, result.wire_length, 37):
            assert not isinstance(parse_client_hello(bytes(data[:cut])), ClientHello)
