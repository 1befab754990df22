"""The sans-IO TLS ends: a real handshake between our server end and our client end in
memory (trustme CA and leaves), ALPN selection, close_notify, and verification failures
reported as such."""

from __future__ import annotations

import ssl

import pytest
import trustme

from declawd.egress.proxy import TlsEnd, TlsFailure
from tests.unit.proxy.support import client_ctx, server_ctx

HOST = "api.example.com"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def handshake(client: TlsEnd, server: TlsEnd) -> None:
    for _ in range(4):
        if out := client.pending():
            assert server.feed(out) == b""
        if out := server.pending():
            assert client.feed(out) == b""


@pytest.mark.parametrize(
    ("offered", "accepted", "selected", "version"),
    [
        (["h2", "http/1.1"], ["h2", "http/1.1"], "h2", "h2"),
        (["http/1.1"], ["h2", "http/1.1"], "http/1.1", "h1"),
        (["h2", "http/1.1"], ["http/1.1"], "http/1.1", "h1"),
        (None, ["h2", "http/1.1"], None, "h1"),
    ],
)
def test_a_handshake_in_memory_selects_alpn(
    ca: trustme.CA,
    offered: list[str] | None,
    accepted: list[str],
    selected: str | None,
    version: str,
) -> None:
    client = TlsEnd.client(client_ctx(ca, offered), HOST)
    server = TlsEnd.server(server_ctx(ca, HOST, alpn=accepted))
    hello = client.pending()
    assert not client.established and hello[:1] == b"\x16"
    server.feed(hello)
    handshake(client, server)
    assert client.established and server.established
    assert client.alpn == server.alpn == selected
    assert client.http_version == server.http_version == version


def test_plaintext_both_ways_and_close_notify(ca: trustme.CA) -> None:
    client = TlsEnd.client(client_ctx(ca), HOST)
    server = TlsEnd.server(server_ctx(ca, HOST))
    handshake(client, server)
    client.send(b"ping" * 50_000)
    wire = client.pending()
    assert b"ping" not in wire
    got = b"".join(server.feed(wire[i : i + 1000]) for i in range(0, len(wire), 1000))
    assert got == b"ping" * 50_000
    server.send(b"pong")
    assert client.feed(server.pending()) == b"pong"
    client.close()
    client.close()  # idempotent
    client.send(b"ignored once closing")
    assert server.feed(client.pending()) == b""
    assert server.peer_closed


def test_a_tcp_eof_without_close_notify_is_a_closed_peer(ca: trustme.CA) -> None:
    client = TlsEnd.client(client_ctx(ca), HOST)
    server = TlsEnd.server(server_ctx(ca, HOST))
    handshake(client, server)
    client.send(b"last")
    assert server.feed(client.pending()) == b"last"
    assert server.feed_eof() == b"" and server.peer_closed


def test_an_untrusted_ca_is_a_verification_failure(ca: trustme.CA) -> None:
    client = TlsEnd.client(client_ctx(trustme.CA()), HOST)
    server = TlsEnd.server(server_ctx(ca, HOST))
    server.feed(client.pending())
    with pytest.raises(TlsFailure) as failure:
        client.feed(server.pending())
    assert failure.value.verify
    assert failure.value.message == (
        "certificate verify failed: unable to get local issuer certificate"
    )
    # Our alert is queued for the peer, which fails on it without a verify flag.
    with pytest.raises(TlsFailure) as peer:
        server.feed(client.pending())
    assert not peer.value.verify and peer.value.message.startswith("TLS error: ")


def test_a_certificate_for_another_name_is_a_verification_failure(ca: trustme.CA) -> None:
    client = TlsEnd.client(client_ctx(ca), "other.example.com")
    server = TlsEnd.server(server_ctx(ca, HOST))
    server.feed(client.pending())
    with pytest.raises(TlsFailure) as failure:
        client.feed(server.pending())
    assert failure.value.verify
    assert "Hostname mismatch" in failure.value.message


def test_garbage_and_an_eof_during_the_handshake_are_plain_failures(ca: trustme.CA) -> None:
    server = TlsEnd.server(server_ctx(ca, HOST))
    with pytest.raises(TlsFailure) as garbage:
        server.feed(b"\x16\x03\x01\x00\x04nope")
    assert not garbage.value.verify
    client = TlsEnd.client(client_ctx(ca), HOST)
    client.pending()
    with pytest.raises(TlsFailure, match="peer closed during the TLS handshake"):
        client.feed_eof()


def test_ssl_errors_never_escape_as_anything_but_tls_failure(ca: trustme.CA) -> None:
    client = TlsEnd.client(client_ctx(ca), HOST)
    server = TlsEnd.server(server_ctx(ca, HOST))
    handshake(client, server)
    client.send(b"data")
    record = bytearray(client.pending())
    record[-1] ^= 0xFF  # a flipped MAC
    with pytest.raises(TlsFailure):
        server.feed(bytes(record))
    assert not isinstance(TlsFailure("x"), ssl.SSLError)
