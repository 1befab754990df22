"""Body mechanics for the pipeline: which bodies are scanned, Content-Encoding codecs, and
rewriting that keeps a body's structure (JSON string value by string value, SSE event by
event). Pure. Invariant: every decoder is bounded (no single call expands more than
`_PIECE` bytes), and a rewrite that changes nothing returns the input unchanged, so
untouched bodies go out byte for byte.
"""

from __future__ import annotations

import codecs
import json
import re
import zlib
from collections.abc import Callable, Iterator
from typing import Literal

import brotli

Kind = Literal["json", "text", "sse", "opaque"]
Rewrite = Callable[[str], str]

_PIECE = 64 * 1024
_TEXT_SUBTYPES = (
    "xml",
    "javascript",
    "ecmascript",
    "x-www-form-urlencoded",
    "graphql",
    "ndjson",
    "jsonl",
)


class CodecError(Exception):
    """The body does not decode as its Content-Encoding says."""


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def body_kind(content_type: str | None) -> Kind:
    """How a body of this Content-Type is scanned (declaw-api.md §12.1)."""
    mt = media_type(content_type)
    if mt == "text/event-stream":
        return "sse"
    if mt == "application/json" or mt.endswith("+json"):
        return "json"
    if mt.startswith("text/") or any(mt.endswith(s) for s in _TEXT_SUBTYPES):
        return "text"
    return "opaque"


def charset(content_type: str | None) -> str | None:
    """The declared charset (default UTF-8), or None when Python has no codec for it."""
    for param in (content_type or "").split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            name = value.strip().strip('"') or "utf-8"
            try:
                return codecs.lookup(name).name
            except LookupError:
                return None
    return "utf-8"


# Content-Encoding ----------------------------------------------------------------------


class Decoder:
    """Incremental decoder of one Content-Encoding; output comes in bounded pieces."""

    def __init__(self, coding: str) -> None:
        self._coding = coding
        self._fed = False
        self._head = b""  # deflate: zlib-wrapped or raw is known after two bytes
        self._z: zlib._Decompress | None = None
        self._br = brotli.Decompressor() if coding == "br" else None
        if coding == "gzip":
            self._z = zlib.decompressobj(wbits=47)

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._fed = self._fed or bool(data)
        try:
            yield from self._feed(data)
        except (zlib.error, brotli.error) as e:
            raise CodecError(f"{self._coding}: {type(e).__name__}") from None

    def _feed(self, data: bytes) -> Iterator[bytes]:
        if self._coding == "identity":
            for i in range(0, len(data), _PIECE):
                yield data[i : i + _PIECE]
            return
        if self._br is not None:
            out = self._br.process(data, output_buffer_limit=_PIECE)
            while True:
                if out:
                    yield out
                if self._br.can_accept_more_data():
                    return
                out = self._br.process(b"", output_buffer_limit=_PIECE)
        if self._z is None:
            self._head += data
            if len(self._head) < 2:
                return
            b0, b1 = self._head[0], self._head[1]
            wrapped = b0 & 0x0F == 8 and (b0 << 8 | b1) % 31 == 0
            self._z = zlib.decompressobj(wbits=15 if wrapped else -15)
            data, self._head = self._head, b""
        yield from self._inflate(data)

    def _inflate(self, data: bytes) -> Iterator[bytes]:
        assert self._z is not None
        while data:
            out = self._z.decompress(data, _PIECE)
            if out:
                yield out
            data = self._z.unconsumed_tail
            if self._z.eof and self._z.unused_data:
                if self._coding != "gzip":
                    raise zlib.error("data after the end of the stream")
                data = self._z.unused_data  # a further gzip member
                self._z = zlib.decompressobj(wbits=47)

    def finish(self) -> None:
        """Raises CodecError when the stream stopped short."""
        if self._coding == "identity" or not self._fed:
            return  # an empty body is empty in every coding
        if self._br is not None:
            if not self._br.is_finished():
                raise CodecError("br: truncated")
            return
        if self._z is None or not self._z.eof:
            raise CodecError(f"{self._coding}: truncated")


class Encoder:
    """Incremental encoder; `feed` output is flushed so the peer can decode it at once."""

    def __init__(self, coding: str) -> None:
        self._coding = coding
        self._z: zlib._Compress | None = None
        self._br: brotli.Compressor | None = None
        if coding == "gzip":
            self._z = zlib.compressobj(5, zlib.DEFLATED, 31)
        elif coding == "deflate":
            self._z = zlib.compressobj(5, zlib.DEFLATED, 15)
        elif coding == "br":
            self._br = brotli.Compressor(quality=5)

    def feed(self, data: bytes, *, flush: bool = True) -> bytes:
        if not data:
            return b""
        if self._z is not None:
            out = self._z.compress(data)
            return out + self._z.flush(zlib.Z_SYNC_FLUSH) if flush else out
        if self._br is not None:
            out = bytes(self._br.process(data))
            return out + bytes(self._br.flush()) if flush else out
        return data

    def finish(self) -> bytes:
        if self._z is not None:
            return self._z.flush()
        if self._br is not None:
            return bytes(self._br.finish())
        return b""


def coding_of(content_encoding: str | None) -> str | None:
    """The one coding we can undo, "identity", or None (unknown, or several stacked)."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return "identity"
    if len(codings) > 1:
        return None
    c = {"x-gzip": "gzip"}.get(codings[0], codings[0])
    return c if c in ("gzip", "deflate", "br") else None


def decode_all(coding: str, data: bytes, limit: int) -> bytes | None:
    """The decoded body, or None when it would exceed `limit` bytes."""
    dec = Decoder(coding)
    out = bytearray()
    for piece in dec.feed(data):
        out += piece
        if len(out) > limit:
            return None
    dec.finish()
    return bytes(out)


def encode_all(coding: str, data: bytes) -> bytes:
    enc = Encoder(coding)
    return enc.feed(data, flush=False) + enc.finish()


class TextDecoder:
    """Bytes to text in the body's charset. On the first byte that is not valid text,
    `feed` returns the raw bytes from there: the caller passes them on unscanned."""

    def __init__(self, encoding: str) -> None:
        self._encoding = encoding
        self._dec = codecs.getincrementaldecoder(encoding)(errors="strict")

    def feed(self, data: bytes, final: bool = False) -> tuple[str, bytes | None]:
        held = self._dec.getstate()[0]
        try:
            return self._dec.decode(data, final), None
        except UnicodeDecodeError as e:
            # Decode up to the bad byte so the scanned/unscanned boundary does not depend
            # on how the body was chunked. `e.object` is what the decoder saw: held + data.
            whole = bytes(e.object) if e.object else held + data
            return whole[: e.start].decode(self._encoding, "replace"), whole[e.start :]


# Structure-keeping rewrites -----------------------------------------------------------

# A JSON string token; group 1 is set when it is an object key. Unrolled so matching is
# linear, and only applied to text json.loads accepted (no quote outside strings).
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"(\s*:)?', re.S)


def rewrite_json(text: str, rewrite: Rewrite) -> str | None:
    """`text` with `rewrite` applied to every string value (keys, numbers and layout
    untouched), or None when `text` is not JSON."""
    try:
        json.loads(text)
    except ValueError:
        return None
    out: list[str] = []
    pos = 0
    for m in _JSON_STRING.finditer(text):
        if m.group(1) is not None:
            continue
        raw = m.group(0)[1:-1]
        if "\\" not in raw:
            value = raw
        else:
            value = json.loads(m.group(0))
            if "\\u" in raw and not _encodable(value):
                continue  # lone surrogates: no engine can scan them
        new = rewrite(value)
        if new != value:
            out += (text[pos : m.start()], json.dumps(new, ensure_ascii=False))
            pos = m.end()
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Held:
    def __init__(self, block: str, end: str, doc: object, tails: dict[tuple[object, ...], int]):
        self.block, self.end, self.doc, self.tails = block, end, doc, tails


def _sse_json(block: str) -> object | None:
    """An event's data as a JSON object or array, or None (no data, not JSON, a scalar)."""
    values = [line[5:].removeprefix(" ") for line in _LINE.split(block)[0::2]]
    data = [
        v
        for line, v in zip(_LINE.split(block)[0::2], values, strict=True)
        if line.startswith("data:")
    ]
    if not data:
        return None
    try:
        doc = json.loads("\n".join(data))
    except ValueError:
        return None
    return doc if isinstance(doc, dict | list) else None


def _strings(
    doc: object, path: tuple[object, ...] = ()
) -> Iterator[tuple[tuple[object, ...], str]]:
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _strings(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _strings(v, (*path, i))
    elif isinstance(doc, str):
        yield path, doc


def _tails(doc: object, tail: Tail) -> dict[tuple[object, ...], int]:
    out = {}
    for path, value in _strings(doc):
        n = tail(value)
        if 0 < n <= len(value):
            out[path] = n
    return out


def _get(doc: object, path: tuple[object, ...]) -> object:
    for step in path:
        found = (isinstance(doc, dict) and isinstance(step, str) and step in doc) or (
            isinstance(doc, list) and isinstance(step, int) and step < len(doc)
        )
        if not found:
            return None
        doc = doc[step]  # type: ignore[index]
    return doc


def _set(doc: object, path: tuple[object, ...], value: str) -> None:
    parent = _get(doc, path[:-1])
    key = path[-1]
    if isinstance(parent, dict) or (isinstance(parent, list) and isinstance(key, int)):
        parent[key] = value  # type: ignore[call-overload]


def _move_tails(held: _Held, doc: object) -> bool:
    """Move each held value's tail to the front of the same value in `doc`."""
    moved = False
    for path, n in held.tails.items():
        nxt = _get(doc, path)
        cur = _get(held.doc, path)
        if isinstance(nxt, str) and isinstance(cur, str):
            _set(held.doc, path, cur[:-n])
            _set(doc, path, cur[-n:] + nxt)
            moved = True
    return moved


def _reserialised(block: str, doc: object) -> str:
    """The event with its data lines replaced by one line of `doc` (compact JSON)."""
    parts = _LINE.split(block)
    lines, seps = parts[0::2], parts[1::2]
    nl = seps[0] if seps else "\n"
    data = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    out, done = [], False
    for line in lines:
        if line.startswith("data:"):
            if not done:
                out.append(f"data: {data}")
                done = True
            continue
        out.append(line)
    return nl.join(out)


def rewrite_text_or_json(text: str, rewrite: Rewrite) -> str:
    """A JSON document value by value, anything else as plain text."""
    stripped = text.lstrip()
    if stripped[:1] in ("{", "[", '"'):
        out = rewrite_json(text, rewrite)
        if out is not None:
            return out
    return rewrite(text)


# Two line ends in a row, a CRLF counting as one.
_EVENT_END = re.compile(r"(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r(?!\n))")
_LINE = re.compile(r"(\r\n|\r|\n)")


# A suffix of a value that may be the first part of something a stage wants whole (a PII
# token `[REDACTED_EMAIL_1]` cut between two events): its length, 0 for none.
Tail = Callable[[str], int]


class SseRewriter:
    """Rewrites a text/event-stream event by event: each event's data (its `data:` lines
    joined) is rewritten as JSON when it is JSON, else as text; other lines stay. An event
    is held until its blank line, at most `limit` characters; a longer one makes the rest of
    the stream pass as it is (`overflowed`).

    With `tail`, a JSON string value that ends in a tail (a token's first part) is joined
    with the same value (same key path) of the next event: the event is held until the
    next one arrives; if that one has the value, the tail moves into it (both events are
    then re-serialised compactly), else it stays where it was. So a stage sees a token cut
    between two events whole, and no character is lost or duplicated."""

    def __init__(self, rewrite: Rewrite, limit: int, tail: Tail | None = None) -> None:
        self._rewrite = rewrite
        self._limit = limit
        self._tail = tail
        self._buf = ""
        self._scanned = 0  # no event end before this offset of _buf
        self.overflowed = False
        # An event held for its tail: (block, separator, doc, lines of the doc, tails).
        self._held: _Held | None = None

    def feed(self, text: str) -> str:
        if self.overflowed:
            return text
        self._buf += text
        out: list[str] = []
        pos = 0
        for m in _EVENT_END.finditer(self._buf, max(0, self._scanned - 3)):
            if m.end() == len(self._buf) and self._buf.endswith("\r"):
                break  # may be the first half of a CRLF
            out.append(self._next(self._buf[pos : m.start()], m.group(0)))
            pos = m.end()
        self._buf = self._buf[pos:]
        self._scanned = len(self._buf)
        if len(self._buf) > self._limit:
            self.overflowed = True
            out.append(self._release())
            out.append(self._buf)
            self._buf = ""
        return "".join(out)

    def flush(self) -> str:
        rest, self._buf = self._buf, ""
        if self.overflowed or not rest:
            return self._release() + rest
        return self._next(rest, "")

    def _next(self, block: str, end: str) -> str:
        """One whole event (and the event held before it, if any), rewritten."""
        if self._tail is None:
            return self._event(block) + end
        doc = _sse_json(block)
        held, self._held = self._held, None
        out = ""
        if held is not None:
            moved = _move_tails(held, doc) if doc is not None else False
            out = self._event(_reserialised(held.block, held.doc) if moved else held.block)
            out += held.end
            if moved and doc is not None:
                block = _reserialised(block, doc)
        if doc is not None and end:
            tails = _tails(doc, self._tail)
            if tails:
                self._held = _Held(block, end, doc, tails)
                return out
        return out + self._event(block) + end

    def _release(self) -> str:
        held, self._held = self._held, None
        return "" if held is None else self._event(held.block) + held.end

    def _event(self, block: str) -> str:
        parts = _LINE.split(block)
        lines, seps = parts[0::2], parts[1::2]
        data_at = [i for i, line in enumerate(lines) if line.startswith("data:")]
        if not data_at:
            return block
        values = [lines[i][5:].removeprefix(" ") for i in data_at]
        joined = "\n".join(values)
        new = rewrite_text_or_json(joined, self._rewrite)
        if new == joined:
            return block
        nl = seps[0] if seps else "\n"
        first = data_at[0]
        lines[first] = nl.join(f"data: {v}" for v in _LINE.split(new)[0::2])
        kept = [line for i, line in enumerate(lines) if i == first or i not in data_at]
        return nl.join(kept)
