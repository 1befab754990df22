"""Bodies through the pipeline: passed as they are (`BodyPipe`), held whole and rewritten
(`BufferPipe`, bounded by the buffer limit and a process-wide `BufferBudget`), or rewritten
as they flow (`StreamPipe`, SSE event by event). Invariant: a body is rewritten whole,
streamed with a bounded hold-back, or passed byte for byte with the reason noted.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

from declawd.inspect.bodies import (
    CodecError,
    Decoder,
    Encoder,
    Kind,
    SseRewriter,
    TextDecoder,
    decode_all,
    encode_all,
    rewrite_text_or_json,
)
from declawd.inspect.stages import Chain, ExchangeState, InspectionFailed, TextStream


class BufferBudget:
    """Bytes every buffered body of the process may hold together. Each body is bounded by
    the buffer limit, but a sandbox could open many streams and connections at once: past
    the budget a body passes unscanned (`over_memory_budget`), like one over the limit.
    Thread-safe (inspected connections run on worker threads)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.held = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.held + n > self.total:
                return False
            self.held += n
            return True

    def give_back(self, n: int) -> None:
        with self._lock:
            self.held = max(0, self.held - n)


# The gateway's: 32 bodies at the default 8 MiB limit.
SHARED_BUDGET = BufferBudget(256 * 1024 * 1024)


class BodyPipe:
    """A body that passes as it is. `head_ready`: the head may go before the body ended;
    `length`: the body's length as sent (None: unknown, send chunked / without length)."""

    def __init__(self, x: ExchangeState, length: int | None, note: str | None = None) -> None:
        self.x = x
        self.head_ready = True
        self.length = length
        if note:
            x.note(note)

    def feed(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""


class BufferPipe(BodyPipe):
    """Held whole (up to `limit`), then decoded, rewritten, re-encoded in its own coding."""

    def __init__(
        self,
        x: ExchangeState,
        chain: Chain,
        kind: Kind,
        coding: str,
        cs: str,
        limit: int,
        length: int | None,
        budget: BufferBudget,
    ) -> None:
        super().__init__(x, length)
        self.head_ready = False
        self._chain, self._kind, self._coding, self._cs = chain, kind, coding, cs
        self._limit = limit
        self._raw = bytearray()
        self._passing = False
        self._budget = budget
        # What this body holds of the budget; given back when it ends, gives up, or is
        # dropped with its exchange (the finalizer), so nothing leaks from the budget.
        self._held = [0]
        weakref.finalize(self, _give_back, budget, self._held)
        # Asked with the body's text once it was read whole (None if it was not).
        self.gate: Callable[[str | None], None] | None = None

    def feed(self, data: bytes) -> bytes:
        if self._passing:
            return data
        if not self._budget.take(len(data)):
            self._raw += data
            return self._give_up("over_memory_budget")
        self._held[0] += len(data)
        self._raw += data
        if len(self._raw) <= self._limit:
            return b""
        return self._give_up("over_buffer_limit")

    def _give_up(self, why: str) -> bytes:
        self.x.note(why)
        if self.gate is not None:
            self.gate(None)
        self._passing = self.head_ready = True
        out, self._raw = bytes(self._raw), bytearray()
        _give_back(self._budget, self._held)
        return out

    def finish(self) -> bytes:
        try:
            return self._finish()
        finally:
            _give_back(self._budget, self._held)

    def _finish(self) -> bytes:
        if self._passing:
            return b""
        raw = bytes(self._raw)
        try:
            plain = decode_all(self._coding, raw, self._limit)
        except CodecError:
            plain = None
            return self._fixed(self._give_up("undecodable"))
        if plain is None:
            return self._fixed(self._give_up("over_buffer_limit"))
        try:
            text = plain.decode(self._cs)
        except UnicodeDecodeError:
            return self._fixed(self._give_up("undecodable"))
        if self._kind == "json":
            new = rewrite_text_or_json(text, self._chain.apply)
        else:
            new = self._chain.apply(text)
        if self.gate is not None:
            self.gate(text)
        out = raw if new == text else encode_all(self._coding, new.encode(self._cs, "replace"))
        self.head_ready, self.length = True, len(out)
        self._raw = bytearray()
        return out

    def _fixed(self, out: bytes) -> bytes:
        self.length = len(out)
        return out


def _give_back(budget: BufferBudget, held: list[int]) -> None:
    budget.give_back(held[0])
    held[0] = 0


class StreamPipe(BodyPipe):
    """Rewritten as it flows: decoded, through every stage's stream (SSE: event by event),
    re-encoded and flushed, so the peer gets data before the body ends."""

    def __init__(
        self, x: ExchangeState, chain: Chain, kind: Kind, coding: str, cs: str, limit: int
    ) -> None:
        super().__init__(x, None)
        self._cs = cs
        self._dec = Decoder(coding)
        self._text = TextDecoder(cs)
        self._enc = Encoder(coding)
        self._sse = SseRewriter(chain.apply, limit, chain.tail) if kind == "sse" else None
        self._rw: TextStream = self._sse if self._sse is not None else chain.stream()
        self._raw = False  # past a byte that is not text: the rest passes unscanned

    def feed(self, data: bytes) -> bytes:
        try:
            plain = b"".join(self._plain(piece) for piece in self._dec.feed(data))
        except CodecError as e:
            raise InspectionFailed(str(e)) from None
        return self._enc.feed(plain)

    def finish(self) -> bytes:
        try:
            self._dec.finish()
        except CodecError as e:
            raise InspectionFailed(str(e)) from None
        plain = b"" if self._raw else self._plain(b"", final=True)
        if not self._raw:
            plain += self._rw.flush().encode(self._cs, "replace")
        if self._sse is not None and self._sse.overflowed:
            self.x.note("over_buffer_limit")
        return self._enc.feed(plain, flush=False) + self._enc.finish()

    def _plain(self, piece: bytes, final: bool = False) -> bytes:
        if self._raw:
            return piece
        text, rest = self._text.feed(piece, final)
        out = self._rw.feed(text)
        if rest is None:
            return out.encode(self._cs, "replace")
        self._raw = True
        self.x.note("undecodable")
        return (out + self._rw.flush()).encode(self._cs, "replace") + rest
