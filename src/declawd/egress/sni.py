"""TLS ClientHello parser for the L7 proxy: pure, no I/O, re-run on the growing peek buffer.

The proxy feeds it every byte the client sent so far; the answer is one of NeedMore,
NotTls, Malformed or ClientHello. Invariant: anything ambiguous (duplicate extensions,
several host names, a name that is not plain ASCII DNS, a hello over 16 KB) is Malformed,
never a ClientHello, so the name the proxy checks is the only name the server can see.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

MAX_HELLO_BYTES = 16 * 1024
"""Largest handshake message (header included) we accept; post-quantum key shares fit."""
MAX_RECORDS = 64
"""A hello spread over more records than this is hostile, not a real client."""
RECORD_HEADER = 5
MAX_PEEK_BYTES = MAX_HELLO_BYTES + MAX_RECORDS * RECORD_HEADER
"""Upper bound of wire bytes the proxy ever buffers for one ClientHello."""

_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_EXT_SERVER_NAME = 0x0000
_EXT_ALPN = 0x0010
_EXT_SUPPORTED_VERSIONS = 0x002B
_EXT_ECH = 0xFE0D
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._")


@dataclass(frozen=True)
class NeedMore:
    """The bytes so far are a valid prefix of a ClientHello."""


@dataclass(frozen=True)
class NotTls:
    """The stream does not start like a TLS handshake record."""


@dataclass(frozen=True)
class Malformed:
    reason: str


@dataclass(frozen=True)
class ClientHello:
    sni: str | None
    """host_name from server_name, lowercased, trailing dot removed; None if absent."""
    alpn: tuple[str, ...] = ()
    legacy_version: int = 0x0303
    supported_versions: tuple[int, ...] = ()
    has_ech: bool = False
    wire_length: int = 0
    """Bytes of the stream the hello (its records) occupies."""

    @property
    def sni_is_ip_literal(self) -> bool:
        return self.sni is not None and is_ip_literal(self.sni)


ParseResult = NeedMore | NotTls | Malformed | ClientHello


def is_ip_literal(name: str) -> bool:
    """True for names a resolver or a server would read as an address.

    Besides dotted quads and IPv6, an all-numeric last label ("127.1", "2130706433",
    "0x7f.1") is never a DNS name but inet_aton accepts several of those forms.
    """
    candidate = name.strip("[]").rstrip(".")
    try:
        ipaddress.ip_address(candidate)
        return True
    except ValueError:
        pass
    last = candidate.rsplit(".", 1)[-1]
    if last.isdigit():
        return True
    return last.startswith("0x") and all(c in "0123456789abcdef" for c in last[2:])


def normalize_host(raw: bytes) -> str | None:
    """Lowercased ASCII host name without trailing dot, or None if it is not one."""
    try:
        text = raw.decode("ascii").lower()
    except UnicodeDecodeError:
        return None
    if text.endswith("."):
        text = text[:-1]
    if not text or len(text) > 253 or any(c not in _HOST_CHARS for c in text):
        return None
    if any(not label or len(label) > 63 for label in text.split(".")):
        return None
    return text


def starts_like_tls(data: bytes) -> bool | None:
    """True/False once decidable, None if more bytes are needed (at most 3)."""
    if not data:
        return None
    if data[0] != _HANDSHAKE:
        return False
    if len(data) >= 2 and data[1] != 0x03:
        return False
    if len(data) >= 3 and data[2] > 0x04:
        return False
    return True if len(data) >= 3 else None


def parse_client_hello(data: bytes) -> ParseResult:
    """Parse the ClientHello at the start of `data`, which may hold more bytes after it."""
    tls = starts_like_tls(data)
    if tls is False:
        return NotTls()
    if tls is None:
        return NeedMore()
    message = bytearray()
    expected: int | None = None
    offset = 0
    records = 0
    while True:
        if len(data) - offset < RECORD_HEADER:
            return NeedMore()
        header = data[offset : offset + RECORD_HEADER]
        if header[0] != _HANDSHAKE or header[1] != 0x03 or header[2] > 0x04:
            # Anything but handshake records before the hello is complete is a protocol error.
            return Malformed("unexpected_record")
        length = int.from_bytes(header[3:5], "big")
        if length == 0 or length > 16384:
            return Malformed("bad_record_length")
        records += 1
        if records > MAX_RECORDS:
            return Malformed("too_many_records")
        fragment = data[offset + RECORD_HEADER : offset + RECORD_HEADER + length]
        message += fragment
        if expected is None and len(message) >= 4:
            if message[0] != _CLIENT_HELLO:
                return Malformed("not_client_hello")
            expected = 4 + int.from_bytes(message[1:4], "big")
            if expected > MAX_HELLO_BYTES:
                return Malformed("too_large")
        if len(fragment) < length:
            if len(message) > MAX_HELLO_BYTES:
                return Malformed("too_large")
            return NeedMore()
        offset += RECORD_HEADER + length
        if expected is not None and len(message) >= expected:
            if len(message) > expected:
                # A second handshake message coalesced into the hello's last record.
                return Malformed("trailing_handshake_data")
            return _parse_body(bytes(message[4:expected]), offset)
        if len(message) > MAX_HELLO_BYTES:
            return Malformed("too_large")


class _Reader:
    """Bounds-checked cursor; every overrun raises _Short."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise _Short
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, len_bytes: int) -> bytes:
        return self.take(self.uint(len_bytes))

    @property
    def done(self) -> bool:
        return self.pos == len(self.buf)


class _Short(Exception):
    pass


def _parse_body(body: bytes, wire_length: int) -> ParseResult:
    try:
        return _parse_body_fields(_Reader(body), wire_length)
    except _Short:
        return Malformed("truncated_field")


def _parse_body_fields(r: _Reader, wire_length: int) -> ParseResult:
    legacy_version = r.uint(2)
    r.take(32)  # random
    if len(r.vector(1)) > 32:
        return Malformed("bad_session_id")
    suites = r.vector(2)
    if not suites or len(suites) % 2:
        return Malformed("bad_cipher_suites")
    if not r.vector(1):
        return Malformed("bad_compression")
    if r.done:
        return ClientHello(sni=None, legacy_version=legacy_version, wire_length=wire_length)
    ext_block = _Reader(r.vector(2))
    if not r.done:
        return Malformed("trailing_bytes")
    seen: set[int] = set()
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    while not ext_block.done:
        ext_type = ext_block.uint(2)
        ext = _Reader(ext_block.vector(2))
        if ext_type in seen:
            return Malformed("duplicate_extension")
        seen.add(ext_type)
        if ext_type == _EXT_SERVER_NAME:
            parsed = _parse_server_name(ext)
            if isinstance(parsed, Malformed):
                return parsed
            sni = parsed
        elif ext_type == _EXT_ALPN:
            protocols = _Reader(ext.vector(2))
            names = []
            while not protocols.done:
                proto = protocols.vector(1)
                if not proto:
                    return Malformed("bad_alpn")
                names.append(proto.decode("latin-1"))
            alpn = tuple(names)
        elif ext_type == _EXT_SUPPORTED_VERSIONS:
            raw = ext.vector(1)
            if len(raw) % 2:
                return Malformed("bad_supported_versions")
            versions = tuple(int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2))
    return ClientHello(
        sni=sni,
        alpn=alpn,
        legacy_version=legacy_version,
        supported_versions=versions,
        has_ech=_EXT_ECH in seen,
        wire_length=wire_length,
    )


def _parse_server_name(ext: _Reader) -> str | None | Malformed:
    names = _Reader(ext.vector(2))
    if not ext.done:
        return Malformed("bad_server_name")
    host: str | None = None
    count = 0
    while not names.done:
        name_type = names.uint(1)
        raw = names.vector(2)
        if name_type != 0:
            continue
        count += 1
        if count > 1:
            # RFC 6066 allows one host_name; two would let proxy and server disagree.
            return Malformed("multiple_server_names")
        host = normalize_host(raw)
        if host is None:
            return Malformed("bad_server_name")
    return host
