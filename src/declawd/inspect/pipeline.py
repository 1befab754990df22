"""What inspection does to one request/response exchange, in declaw-api.md §12.1's order.

Outbound: transformations (query values, body) -> invisible text -> PII (query values,
body) -> injection defense -> code security -> the custom policy's content
package -> vault injection (headers, query). Inbound: invisible text -> injection defense ->
code security -> transformations -> PII rehydration -> the content package ->
secret scrubbing (headers, body). Body stages are the `outbound`/`inbound` lists of a
`Pipeline`; a stage that must refuse raises `Blocked`. The content package is asked once
per direction, with what the stages found (`ExchangeState.scratch["scan_results"]`).
Invariant: a body is either rewritten whole, streamed through every stage with a bounded
hold-back, or passed byte for byte with the reason in `ExchangeState.unscanned`.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, NoReturn, Protocol
from urllib.parse import quote, unquote, unquote_plus

from declawd.guard import content
from declawd.inspect.bodies import (
    CodecError,
    Decoder,
    Encoder,
    Kind,
    SseRewriter,
    TextDecoder,
    body_kind,
    charset,
    coding_of,
    decode_all,
    encode_all,
    rewrite_text_or_json,
)
from declawd.inspect.invisible import InvisibleTextStage, describe
from declawd.inspect.messages import (
    Headers,
    RequestHead,
    ResponseHead,
    content_length,
    header,
    set_header,
)
from declawd.inspect.model import InspectContext, InspectionPolicy, SecretSource, TransformRule
from declawd.inspect.rules import RuleSet, RuleTimeout, compile_rules
from declawd.inspect.vaultinject import Scrubber, inject

if TYPE_CHECKING:
    from declawd.guard.injection import Judge

Way = Literal["outbound", "inbound"]
_DECODABLE = ("gzip", "deflate", "br", "identity")


class Blocked(Exception):
    """A stage refuses the exchange: the sandbox gets `status` with a JSON
    `{"error": error, "reason": reason}` and nothing more goes upstream."""

    def __init__(self, reason: str, *, error: str = "blocked", status: int = 403) -> None:
        super().__init__(reason)
        self.reason, self.error, self.status = reason, error, status


class InspectionFailed(Exception):
    """A body could not be scanned after all (a rule ran out of time, a compressed stream
    broke off): the exchange fails rather than pass unscanned. Never holds a secret."""


@dataclass
class ExchangeState:
    """What one exchange's stages share and count (the audit record's counters)."""

    transformations_applied: int = 0
    vault_injections: int = 0
    pii_redactions: int = 0
    injection_blocks: int = 0
    invisible_text: dict[str, Any] = field(default_factory=dict)  # the audit's, when found
    unscanned: str | None = None
    injected: tuple[str, ...] = field(default=(), repr=False)
    scrubber: Scrubber = field(default_factory=lambda: Scrubber(()), repr=False)
    scratch: dict[str, Any] = field(default_factory=dict, repr=False)  # for stages' own state

    def note(self, why: str) -> None:
        self.unscanned = self.unscanned or why


class TextStream(Protocol):
    def feed(self, text: str) -> str: ...

    def flush(self) -> str: ...


class TextPass(Protocol):
    """One stage's work on one body: a whole text (or one JSON string), or a stream."""

    def apply(self, text: str) -> str: ...

    def stream(self) -> TextStream: ...


class BodyStage(Protocol):
    def start(self, x: ExchangeState, way: Way) -> TextPass | None:
        """This stage's pass over one body of `x`, or None when it has nothing to do."""
        ...


# The stages of this issue -------------------------------------------------------------


class TransformStage:
    def __init__(self, rules: RuleSet) -> None:
        self._by_way: dict[Way, RuleSet] = {
            "outbound": rules.for_direction("outbound"),
            "inbound": rules.for_direction("inbound"),
        }

    def rules(self, way: Way) -> RuleSet:
        return self._by_way[way]

    def start(self, x: ExchangeState, way: Way) -> TextPass | None:
        rules = self._by_way[way]
        return _RulesPass(rules, x) if rules else None


class _RulesPass:
    def __init__(self, rules: RuleSet, x: ExchangeState) -> None:
        self._rules, self._x = rules, x

    def apply(self, text: str) -> str:
        new, n = _run(self._rules.apply, text)
        self._x.transformations_applied += n
        return new

    def stream(self) -> TextStream:
        return _CountedStream(self._rules, self._x)


class _CountedStream:
    def __init__(self, rules: RuleSet, x: ExchangeState) -> None:
        self._s = rules.stream()
        self._x = x
        self._seen = 0

    def feed(self, text: str) -> str:
        return self._count(_run(self._s.feed, text))

    def flush(self) -> str:
        return self._count(_run(lambda _: self._s.flush(), ""))

    def _count(self, out: str) -> str:
        now = self._s.replacements
        self._x.transformations_applied += now - self._seen
        self._seen = now
        return out


def _run(fn: Any, text: str) -> Any:
    try:
        return fn(text)
    except RuleTimeout as e:
        raise InspectionFailed(str(e)) from None


class ScrubStage:
    """Inbound only: the secrets this exchange knows of, replaced by the placeholder."""

    def start(self, x: ExchangeState, way: Way) -> TextPass | None:
        return x.scrubber if way == "inbound" and x.scrubber else None


class _Chain:
    def __init__(self, passes: Sequence[TextPass]) -> None:
        self._passes = passes
        # A pass that wants a value cut between two SSE events whole says how long the
        # suffix is that may be its first part (`tail(text) -> int`, PII rehydration).
        tails = [t for t in (getattr(p, "tail", None) for p in passes) if callable(t)]
        self.tail: Callable[[str], int] | None = (
            (lambda text: max(t(text) for t in tails)) if tails else None
        )

    def apply(self, text: str) -> str:
        for p in self._passes:
            text = p.apply(text)
        return text

    def stream(self) -> TextStream:
        return _ChainStream([p.stream() for p in self._passes])


class _ChainStream:
    def __init__(self, streams: list[TextStream]) -> None:
        self._streams = streams

    def feed(self, text: str) -> str:
        for s in self._streams:
            text = s.feed(text)
        return text

    def flush(self) -> str:
        text = ""
        for s in self._streams:
            text = s.feed(text) + s.flush() if text else s.flush()
        return text


# One exchange ---------------------------------------------------------------------------


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


@dataclass(frozen=True)
class GuardServices:
    """What the gateway process gives every pipeline: the operator's injection judge."""

    judge: Judge | None = None


class Pipeline:
    """The stages for one sandbox's policy; `request`/`response` per exchange."""

    def __init__(
        self,
        ctx: InspectContext,
        policy: InspectionPolicy,
        secrets: SecretSource,
        budget: BufferBudget | None = None,
        services: GuardServices | None = None,
    ) -> None:
        self.ctx, self.policy, self._secrets = ctx, policy, secrets
        self.budget = budget if budget is not None else SHARED_BUDGET
        # The guardrails' stages import this module (Blocked, ExchangeState): imported here.
        from declawd.guard.codesec import CodeSecurityStage
        from declawd.guard.injection import InjectionStage
        from declawd.guard.pii import PiiStage

        services = services or GuardServices()
        self.transforms = TransformStage(_compiled(policy.transformations))
        self.invisible = InvisibleTextStage(policy.invisible_text, ctx.host, _refuse_invisible)
        self.pii = PiiStage(policy.pii, ctx.host)
        scanners: list[BodyStage] = [
            InjectionStage(policy.injection, ctx.host, services.judge),
            CodeSecurityStage(policy.code_security, ctx.host),
        ]
        self.outbound: list[BodyStage] = [self.transforms, self.invisible, self.pii, *scanners]
        self.inbound: list[BodyStage] = [
            self.invisible,
            *scanners,
            self.transforms,
            self.pii,
            ScrubStage(),
        ]
        custom = policy.custom
        self.content = custom if custom is not None and custom.has(content.PACKAGE) else None

    def request(
        self, head: RequestHead, x: ExchangeState | None = None
    ) -> tuple[ExchangeState, RequestHead]:
        """Query transformations, invisible text and PII, then vault injection, counted in
        `x`; the content package now if the request has no body. Raises InspectionFailed,
        or Blocked (a guard under `block`, a content policy's deny)."""
        x = ExchangeState() if x is None else x
        if head.method == "CONNECT":
            return x, head  # a tunnel: nothing of it is ours to rewrite
        target = self._query(head.target, x)
        if self.content is not None:
            path = target.partition("?")[0]
            x.scratch["content_request"] = content.request_input(
                sandbox_id=self.ctx.sandbox_id,
                method=head.method,
                url=f"{head.scheme}://{head.authority}{target}",
                host=self.ctx.host,
                path=path,
                headers=head.headers,
                body=None,
                scan_results={},
            )
            if not head.has_body:
                self.check_content(x, "outbound", None)
        vault = inject(
            target,
            head.headers,
            authority=head.authority,
            ctx=self.ctx,
            policy=self.policy,
            secrets=self._secrets,
        )
        x.vault_injections, x.injected, x.scrubber = vault.count, vault.injected, vault.scrubber
        headers = _decodable_only(vault.headers)
        return x, replace(head, target=vault.target, headers=headers)

    def response(self, x: ExchangeState, head: ResponseHead) -> ResponseHead:
        """Secret scrubbing of the headers; the content package now if the response has no
        body (Blocked on a deny)."""
        x.scratch["content_response"] = (head.status, head.headers)
        if not head.has_body:
            self.check_content(x, "inbound", None)
        return replace(head, headers=x.scrubber.headers(head.headers))

    def check_content(self, x: ExchangeState, way: Way, text: str | None) -> None:
        """The content package on this direction of `x` (once), with the body's text when
        it was read whole. Blocked (403 policy_denied) on a deny; the verdict is kept for
        the audit under `scratch["policy"]`."""
        request = x.scratch.get("content_request")
        if self.content is None or request is None or x.scratch.get(f"content_{way}_done"):
            return
        x.scratch[f"content_{way}_done"] = True
        scans = x.scratch.get("scan_results", {})
        if way == "outbound":
            doc = {**request, "request": {**request["request"], "body": text}}
            doc["attributes"] = {"scan_results": scans, "model": content.model_of(text)}
            x.scratch["content_request"] = doc
        else:
            status, headers = x.scratch.get("content_response", (0, []))
            doc = content.response_input(
                request, status=status, headers=headers, body=text, scan_results=scans
            )
        verdict = content.evaluate(self.content, doc)
        x.scratch.setdefault("policy", {})[way] = content.verdict_record(verdict)
        if verdict.denied:
            reason = "; ".join(verdict.messages) or f"policy evaluation failed: {verdict.error}"
            raise Blocked(reason, error="policy_denied")

    def body(self, x: ExchangeState, headers: Headers, way: Way, *, status: int = 0) -> BodyPipe:
        """The pipe one body runs through. A body that will not be read whole has the
        content package asked now, without its text."""
        pipe = self._body(x, headers, way, status=status)
        if isinstance(pipe, BufferPipe):
            pipe.gate = functools.partial(self.check_content, x, way)
        else:
            self.check_content(x, way, None)
        return pipe

    def _body(self, x: ExchangeState, headers: Headers, way: Way, *, status: int) -> BodyPipe:
        length = content_length(headers)
        chain = self._chain(x, way)
        kind = body_kind(header(headers, "content-type"))
        gated = self.content is not None and "content_request" in x.scratch
        if chain is None and gated and kind != "opaque":
            chain = _Chain([])  # read whole for the content package, rewritten by nothing
        if chain is None or kind == "opaque":
            return BodyPipe(x, length)
        coding = coding_of(header(headers, "content-encoding"))
        cs = charset(header(headers, "content-type"))
        if status == 206:
            return BodyPipe(x, length, note="partial_content")
        if coding is None:
            return BodyPipe(x, length, note="content_encoding")
        if cs is None:
            return BodyPipe(x, length, note="charset")
        limit = self.policy.buffer_limit
        if kind == "sse" or (length is None and kind == "text"):
            return StreamPipe(x, chain, kind, coding, cs, limit)
        if length is not None and length > limit:
            return BodyPipe(x, length, note="over_buffer_limit")
        return BufferPipe(x, chain, kind, coding, cs, limit, length, self.budget)

    def _chain(self, x: ExchangeState, way: Way) -> _Chain | None:
        stages = self.outbound if way == "outbound" else self.inbound
        passes = [p for p in (s.start(x, way) for s in stages) if p is not None]
        return _Chain(passes) if passes else None

    def _query(self, target: str, x: ExchangeState) -> str:
        rules = self.transforms.rules("outbound")
        invisible = self.invisible.start(x, "outbound")
        pii = self.pii.start(x, "outbound")
        path, sep, query = target.partition("?")
        if pii is not None:
            path = _path_pii(path, pii)
        if not (rules or invisible or pii) or not sep:
            return f"{path}{sep}{query}"
        pairs = []
        for pair in query.split("&"):
            name, eq, raw = pair.partition("=")
            value = unquote_plus(raw)
            new, n = _run(rules.apply, value) if rules else (value, 0)
            x.transformations_applied += n
            new = invisible.apply(new) if invisible is not None else new
            new = pii.apply(new) if pii is not None else new
            pairs.append(f"{name}={quote(new, safe='')}" if new != value and eq else pair)
        return f"{path}?{'&'.join(pairs)}"


@functools.lru_cache(maxsize=256)
def _compiled(rules: tuple[TransformRule, ...]) -> RuleSet:
    """A sandbox's rules compile once, not on each of its inspected connections (the
    node validated them at create; RuleSets are immutable and RE2 matching is
    thread-safe, so connections on worker threads share one)."""
    return compile_rules(rules)


def _path_pii(path: str, pii: TextPass) -> str:
    """PII in the path's segments (an email in `/users/a@b.c`), each decoded, passed and
    re-quoted only when it changed."""
    parts = path.split("/")
    for i, seg in enumerate(parts):
        if not seg:
            continue
        value = unquote(seg)
        new = pii.apply(value)
        if new != value:
            parts[i] = quote(new, safe="@:+,;=-._~")
    return "/".join(parts)


def _refuse_invisible(counts: Mapping[str, int]) -> NoReturn:
    raise Blocked(describe(counts), error="invisible_text_detected")


def _decodable_only(headers: Headers) -> Headers:
    """Accept-Encoding narrowed to codings the inbound stages can decode (so a response is
    never unscannable for its coding alone)."""
    raw = header(headers, "accept-encoding")
    if raw is None:
        return headers
    kept = [c.strip() for c in raw.split(",") if c.split(";")[0].strip().lower() in _DECODABLE]
    return set_header(headers, "accept-encoding", ", ".join(kept) or "identity")


# Bodies -----------------------------------------------------------------------------------


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
        chain: _Chain,
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
        self, x: ExchangeState, chain: _Chain, kind: Kind, coding: str, cs: str, limit: int
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
