"""One end of a TLS session over memory buffers (`ssl.SSLObject` + `ssl.MemoryBIO`): no
sockets, no event loop. The proxy runs two per inspected connection: a server end towards
the sandbox (fed the ClientHello it already peeked) and a client end towards the upstream.

Invariant: ciphertext in, plaintext out, and whatever must go to the peer waits in
`pending()`; every failure is one `TlsFailure`, a failed certificate check marked as such.
"""

from __future__ import annotations

import ssl
from typing import Literal

_READ_CHUNK = 256 * 1024


class TlsFailure(Exception):
    """The session cannot go on. `message` is short and safe to show (a 502 body, a log);
    `verify` tells a certificate the peer presented that did not verify from other errors."""

    def __init__(self, message: str, *, verify: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.verify = verify


def _failure(exc: ssl.SSLError) -> TlsFailure:
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or "certificate verify failed"
        return TlsFailure(f"certificate verify failed: {detail}", verify=True)
    return TlsFailure(f"TLS error: {(exc.reason or type(exc).__name__).lower()}")


class TlsEnd:
    """Build with `server(ctx)` or `client(ctx, server_hostname)`."""

    def __init__(self, ctx: ssl.SSLContext, *, server_side: bool, hostname: str | None) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(
            self._in, self._out, server_side=server_side, server_hostname=hostname
        )
        self.established = False
        self.peer_closed = False  # close_notify received, or EOF (truncation)
        self._closing = False

    @classmethod
    def server(cls, ctx: ssl.SSLContext) -> TlsEnd:
        return cls(ctx, server_side=True, hostname=None)

    @classmethod
    def client(cls, ctx: ssl.SSLContext, server_hostname: str) -> TlsEnd:
        """Starts the handshake: the ClientHello is in `pending()` at once."""
        end = cls(ctx, server_side=False, hostname=server_hostname)
        end._advance()
        return end

    @property
    def alpn(self) -> str | None:
        return self._obj.selected_alpn_protocol()

    @property
    def http_version(self) -> Literal["h1", "h2"]:
        """What the ALPN selected: h2 only when negotiated, HTTP/1.1 otherwise."""
        return "h2" if self.alpn == "h2" else "h1"

    def feed(self, data: bytes) -> bytes:
        """Ciphertext from the peer in; the plaintext it completes out (b"" while the
        handshake runs). Raises TlsFailure; queued alerts are still in `pending()`."""
        if data:
            self._in.write(data)
        return self._progress()

    def feed_eof(self) -> bytes:
        """The peer's TCP FIN: what plaintext was left, then `peer_closed`."""
        self._in.write_eof()
        return self._progress()

    def send(self, plaintext: bytes) -> None:
        """Encrypt for the peer (after the handshake); ignored once closing."""
        if self._closing or not plaintext:
            return
        try:
            self._obj.write(plaintext)
        except ssl.SSLError as exc:
            raise _failure(exc) from None

    def close(self) -> None:
        """Queue our close_notify (idempotent); the peer's is not waited for."""
        if self._closing:
            return
        self._closing = True
        try:
            self._obj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass  # our close_notify is queued; the peer's may come or not
        except ssl.SSLError:
            pass  # a session that already failed has nothing more to say

    def pending(self) -> bytes:
        """Ciphertext waiting for the peer."""
        return self._out.read() if self._out.pending else b""

    # Internals ------------------------------------------------------------------------

    def _advance(self) -> bool:
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            if self._in.eof:
                raise TlsFailure("peer closed during the TLS handshake") from None
            return False
        except ssl.SSLEOFError:
            raise TlsFailure("peer closed during the TLS handshake") from None
        except ssl.SSLError as exc:
            raise _failure(exc) from None
        self.established = True
        return True

    def _progress(self) -> bytes:
        if not self.established and not self._advance():
            return b""
        chunks: list[bytes] = []
        while not self.peer_closed:
            try:
                chunk = self._obj.read(_READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self.peer_closed = True
                break
            except ssl.SSLError as exc:
                raise _failure(exc) from None
            if not chunk:
                self.peer_closed = True
                break
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
