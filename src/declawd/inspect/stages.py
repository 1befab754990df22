"""The stage contract of the inspection pipeline, and the stages of its own: what one body
stage is (`BodyStage.start` -> a `TextPass`: a whole text or a stream), what an exchange's
stages share (`ExchangeState`), how a stage refuses (`Blocked`) or fails (`InspectionFailed`),
and the transformation and secret-scrubbing stages. Pure. The guardrails' stages
(`declawd.guard.*`) implement the same contract.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from declawd.inspect.rules import RuleSet, RuleTimeout
from declawd.inspect.vaultinject import Scrubber

Way = Literal["outbound", "inbound"]


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
        new, n = run_rules(self._rules.apply, text)
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
        return self._count(run_rules(self._s.feed, text))

    def flush(self) -> str:
        return self._count(run_rules(lambda _: self._s.flush(), ""))

    def _count(self, out: str) -> str:
        now = self._s.replacements
        self._x.transformations_applied += now - self._seen
        self._seen = now
        return out


def run_rules(fn: Any, text: str) -> Any:
    try:
        return fn(text)
    except RuleTimeout as e:
        raise InspectionFailed(str(e)) from None


class ScrubStage:
    """Inbound only: the secrets this exchange knows of, replaced by the placeholder."""

    def start(self, x: ExchangeState, way: Way) -> TextPass | None:
        return x.scrubber if way == "inbound" and x.scrubber else None


class Chain:
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
        return ChainStream([p.stream() for p in self._passes])


class ChainStream:
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
