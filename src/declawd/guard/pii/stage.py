"""The PII guardrail as a pipeline body stage: its config (`PiiGuard`, the SDK's PIIConfig)
and `PiiStage`, which redacts, blocks or logs PII going out and puts this exchange's
originals back into the response.

Outbound, each text or JSON string value is scanned (detect.py). `redact` replaces each
finding by its token (tokens.py; the exchange's `TokenTable` lives in
`x.scratch["pii_tokens"]`), `block` raises the pipeline's `Blocked(error="pii_detected")`
naming the types found (never a value), `log_only` leaves the body as it was. Inbound, when
the guard rehydrates and the exchange issued tokens, they are replaced by the originals.
`x.pii_redactions` counts tokens inserted (redact) or findings (log_only); the audit's
`x.scratch["scan_results"]["pii"]` is `{"detected", "action", "types": {type: n}}` (plus
`"rehydrated": n` when the response had tokens put back).
Invariant: a streamed outbound text is scanned with a hold-back of `HOLD` characters, so a
value shorter than that split between pieces is found as if whole; nothing else is held
beyond a token prefix on the way in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from declawd.guard.pii.detect import detect
from declawd.guard.pii.findings import TYPES, Finding
from declawd.guard.pii.tokens import Rehydrator, TokenTable, redact
from declawd.inspect.model import domain_listed

if TYPE_CHECKING:
    from declawd.inspect.pipeline import ExchangeState, TextPass, TextStream, Way

Action = Literal["redact", "block", "log_only"]
ACTIONS: tuple[str, ...] = ("redact", "block", "log_only")
HOLD = 256  # outbound streams: characters kept back for a value split between pieces
_CONTEXT = 64  # outbound streams: characters of already-sent text kept as cue context
TABLE_KEY = "pii_tokens"


@dataclass(frozen=True)
class PiiGuard:
    """An enabled PIIConfig: which types, what to do, whether responses get originals
    back, for which hosts (`domains` None or empty: all)."""

    types: tuple[str, ...] = TYPES
    action: Action = "redact"
    rehydrate: bool = True
    domains: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        unknown = set(self.types) - set(TYPES)
        if unknown:
            raise ValueError(f"invalid PII type(s): {sorted(unknown)}")
        if self.action not in ACTIONS:
            raise ValueError(f"invalid PII action: {self.action!r}")

    def applies_to(self, host: str | None) -> bool:
        return domain_listed(self.domains, host)

    def to_wire(self) -> dict[str, Any]:
        return {
            "types": list(self.types),
            "action": self.action,
            "rehydrate_response": self.rehydrate,
            "domains": None if self.domains is None else list(self.domains),
        }

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any] | None) -> PiiGuard | None:
        """The guard of a wire dict or a stored PIIConfig dict (None: absent or disabled)."""
        if not raw or raw.get("enabled") is False:
            return None
        types = raw.get("types")
        domains = raw.get("domains")
        return cls(
            types=TYPES if types is None else tuple(str(t) for t in types),
            action=raw.get("action") or "redact",
            rehydrate=bool(raw.get("rehydrate_response", raw.get("rehydrate", True))),
            domains=None if domains is None else tuple(str(d) for d in domains),
        )


def describe(types: Mapping[str, int]) -> str:
    """`pii detected: email, ssn` (the block reason: the types, no value)."""
    return "pii detected: " + ", ".join(t for t in TYPES if types.get(t))


def table_of(x: ExchangeState) -> TokenTable:
    """The exchange's token table (made on first use)."""
    table = x.scratch.get(TABLE_KEY)
    if table is None:
        table = x.scratch[TABLE_KEY] = TokenTable()
    return table


def redact_text(text: str, types: Sequence[str], tokens: TokenTable) -> str:
    """`text` with its PII of `types` replaced by `tokens`' tokens (for URL query values
    and path segments, which are not bodies)."""
    found = detect(text, types)
    return redact(text, found, tokens)[0] if found else text


class PiiStage:
    """A `BodyStage` for one connection's host: None passes when the guard is off or does
    not apply to the host, or (inbound) when there is nothing to put back."""

    def __init__(self, guard: PiiGuard | None, host: str) -> None:
        self.guard = guard if guard is not None and guard.applies_to(host) else None

    def start(self, x: ExchangeState, way: Way) -> TextPass | None:
        g = self.guard
        if g is None:
            return None
        if way == "outbound":
            return _OutboundPass(g, x)
        if not (g.rehydrate and g.action == "redact"):
            return None
        table = x.scratch.get(TABLE_KEY)
        return _InboundPass(table, x) if table else None


def _record(x: ExchangeState, action: str) -> dict[str, Any]:
    results = x.scratch.setdefault("scan_results", {})
    pii = results.get("pii")
    if pii is None:
        pii = results["pii"] = {"detected": False, "action": action, "types": {}}
    return pii


class _OutboundPass:
    def __init__(self, guard: PiiGuard, x: ExchangeState) -> None:
        self._guard, self._x = guard, x
        self._record = _record(x, guard.action)

    def apply(self, text: str) -> str:
        return self.handle(text, detect(text, self._guard.types))

    def handle(self, text: str, found: list[Finding]) -> str:
        """`text` after the action on its findings (`found`, from `detect`)."""
        if not found:
            return text
        counts: dict[str, int] = self._record["types"]
        for f in found:
            counts[f.type] = counts.get(f.type, 0) + 1
        self._record["detected"] = True
        action = self._guard.action
        if action == "block":
            from declawd.inspect.pipeline import Blocked  # the pipeline imports this module

            raise Blocked(describe(counts), error="pii_detected")
        if action == "log_only":
            self._x.pii_redactions += len(found)
            return text
        new, n = redact(text, found, table_of(self._x))
        self._x.pii_redactions += n
        return new

    def stream(self) -> TextStream:
        return _OutboundStream(self)


class _OutboundStream:
    """Text in pieces: scanned once at least `2 * HOLD` characters wait, emitting all but
    the last `HOLD` (less, so no finding is cut); `_CONTEXT` characters already sent stay
    as the scan's left context (cue words, boundaries)."""

    def __init__(self, owner: _OutboundPass) -> None:
        self._owner = owner
        self._buf = ""
        self._ctx = ""

    def feed(self, text: str) -> str:
        self._buf += text
        if len(self._buf) < 2 * HOLD:
            return ""
        return self._emit(len(self._buf) - HOLD)

    def flush(self) -> str:
        return self._emit(len(self._buf)) if self._buf else ""

    def _emit(self, cut: int) -> str:
        ctx, buf = self._ctx, self._buf
        whole = ctx + buf
        off = len(ctx)
        found: list[Finding] = []
        for f in detect(whole, self._owner._guard.types):
            if f.start < off:
                continue
            if f.start - off < cut < f.end - off:
                cut = f.start - off
            if f.end - off <= cut:
                found.append(Finding(f.type, f.start - off, f.end - off, f.value, f.score))
        head, self._buf = buf[:cut], buf[cut:]
        self._ctx = (ctx + head)[-_CONTEXT:]
        return self._owner.handle(head, found)


class _InboundPass:
    def __init__(self, table: TokenTable, x: ExchangeState) -> None:
        self._table, self._x = table, x
        self._carry = Rehydrator(table)

    def apply(self, text: str) -> str:
        return self._count(self._carry, self._carry.apply(text))

    def tail(self, text: str) -> int:
        """See Rehydrator.tail: the SSE rewriter joins such a suffix with the next event."""
        return self._carry.tail(text)

    def stream(self) -> TextStream:
        return _InboundStream(self)

    def _count(self, r: Rehydrator, out: str) -> str:
        if r.count:
            pii = _record(self._x, "redact")
            pii["rehydrated"] = pii.get("rehydrated", 0) + r.count
            r.count = 0
        return out


class _InboundStream:
    def __init__(self, owner: _InboundPass) -> None:
        self._owner = owner
        self._r = Rehydrator(owner._table)

    def feed(self, text: str) -> str:
        return self._owner._count(self._r, self._r.feed(text))

    def flush(self) -> str:
        return self._owner._count(self._r, self._r.flush())
