"""Transformation rules (`match`/`replace`/`direction`) compiled for RE2, and how they rewrite text.

The proxy rewrites whole texts with `RuleSet.apply` and streamed bodies with `stream()`.
Invariant: every search is linear in the text (RE2, its memory bounded by `MAX_MEM`), and one
call's time is bounded by a budget proportional to its size (`RuleTimeout` past it), so no
pattern can stall the proxy. Replacements follow Python's `re.sub` (the SDK's `apply`).
"""

from __future__ import annotations

import re._constants as _sre_constants
import re._parser as _sre_parser
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import re2

from declawd.errors import InvalidInput, TimedOut
from declawd.inspect.model import DIRECTIONS, TransformRule

MAX_PATTERN_LENGTH = 1000  # the SDK's MAX_PATTERN_LENGTH
MAX_RULES = 100
# Per compiled pattern (program + DFA cache; RE2's default is 8 MiB). A pattern too big for it
# is refused at compile time; a search whose DFA outgrows it falls back to RE2's NFA, which is
# slower but still linear.
MAX_MEM = 2 << 20
# One call's time: a floor plus a rate far above what real rules need (RE2 scans about a byte a
# nanosecond; a dense rule costs a few microseconds per replacement). Only a pattern that
# looks far ahead of every match (`a.*Z|a`: quadratic in the number of matches) gets near it.
BUDGET_FLOOR_S = 0.25
BUDGET_PER_BYTE_S = 1e-6

_LINEAR = "(patterns run in linear time)"
_OPTIONS = re2.Options()
_OPTIONS.max_mem = MAX_MEM
_OPTIONS.log_errors = False  # RE2 would print each refused pattern on stderr


class RuleTimeout(TimedOut):
    """The rules ran past their time budget on one text (see BUDGET_*). The text is neither
    rewritten nor released: the caller fails the request rather than pass it unscanned."""


# --- compiling -------------------------------------------------------------------------------


def _why_refused(pattern: str, error: str) -> str:
    """A user's reason for RE2's compile error (RE2 names the offending fragment last)."""
    fragment = error.rpartition(": ")[2]
    if error.startswith("invalid perl operator"):
        if fragment.startswith(("(?<=", "(?<!")):
            return f"lookbehind is not supported {_LINEAR}"
        if fragment.startswith(("(?=", "(?!")):
            return f"lookahead is not supported {_LINEAR}"
        if fragment.startswith("(?>"):
            return f"atomic groups are not supported {_LINEAR}"
        if fragment.startswith("(?("):
            return f"conditional groups are not supported {_LINEAR}"
        if fragment.startswith("(?P") and "(?P=" in pattern:
            return f"backreferences are not supported {_LINEAR}"
    if error.startswith("invalid escape sequence"):
        if fragment[1:2].isdigit() or fragment.startswith("\\k"):
            return f"backreferences are not supported {_LINEAR}"
        if fragment == "\\Z":
            return "\\Z is not supported: use \\z for the end of the text"
    if error.startswith("bad repetition operator") and fragment[-1:] == "+" and len(fragment) > 1:
        return f"possessive quantifiers are not supported {_LINEAR}"
    if "pattern too large" in error:
        return f"too large for the matching engine's memory limit of {MAX_MEM >> 20} MiB"
    return f"not a pattern the linear-time engine accepts: {error}"


def _any_byte_escape(pattern: str) -> bool:
    """`\\C` matches one byte of a character: a rewrite could split it (Python has no \\C)."""
    i = pattern.find("\\")
    while i != -1:
        if pattern[i + 1 : i + 2] == "C":
            return True
        i = pattern.find("\\", i + 2)
    return False


def _regex(pattern: str, label: str) -> Any:
    if _any_byte_escape(pattern):
        raise InvalidInput(label, "\\C (any byte) is not supported")
    try:
        return re2.compile(pattern, _OPTIONS)
    except UnicodeEncodeError as exc:
        raise InvalidInput(label, "must be valid Unicode text") from exc
    except re2.error as exc:
        raw = exc.args[0] if exc.args else ""
        error = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        raise InvalidInput(label, _why_refused(pattern, error)) from None


_TEMPLATE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_TEMPLATE_ESCAPES |= {"v": "\v", "\\": "\\"}
_OCTAL = "01234567"


def parse_template(repl: str, groups: int, groupindex: Mapping[str, int]) -> tuple[str | int, ...]:
    """A `re.sub` replacement string as literal pieces and group numbers, with Python's rules
    (sre_parse.parse_template): `\\1`..`\\99`, `\\g<n>`, `\\g<name>`, octal `\\0`/`\\ooo`,
    the escapes `\\a\\b\\f\\n\\r\\t\\v\\\\`; `\\` before another ASCII letter is an error, before
    anything else it stays literally. ValueError says what is wrong."""
    pieces: list[str | int] = []
    literal: list[str] = []

    def group(index: int) -> None:
        if index > groups:
            raise ValueError(f"invalid group reference {index}")
        if literal:
            pieces.append("".join(literal))
            literal.clear()
        pieces.append(index)

    i, n = 0, len(repl)
    while i < n:
        c = repl[i]
        if c != "\\":
            literal.append(c)
            i += 1
            continue
        if i + 1 == n:
            raise ValueError("bad escape (end of pattern)")
        c = repl[i + 1]
        if c == "g":
            close = repl.find(">", i + 3)
            if repl[i + 2 : i + 3] != "<" or close == -1:
                raise ValueError("\\g must be followed by <name> or <number>")
            name = repl[i + 3 : close]
            if name.isidentifier():
                if name not in groupindex:
                    raise ValueError(f"unknown group name {name!r}")
                group(groupindex[name])
            elif name.isascii() and name.isdigit():
                group(int(name))
            else:
                raise ValueError(f"bad character in group name {name!r}")
            i = close + 1
        elif c == "0":
            j = i + 2
            while j < n and j < i + 4 and repl[j] in _OCTAL:
                j += 1
            literal.append(chr(int(repl[i + 1 : j], 8) & 0xFF))
            i = j
        elif c in "123456789":
            j = i + 2
            if j < n and repl[j].isascii() and repl[j].isdigit():
                if c in _OCTAL and repl[j] in _OCTAL and j + 1 < n and repl[j + 1] in _OCTAL:
                    value = int(repl[i + 1 : j + 2], 8)
                    if value > 0o377:
                        raise ValueError(f"octal escape value \\{repl[i + 1 : j + 2]} out of range")
                    literal.append(chr(value))
                    i = j + 2
                    continue
                j += 1
            group(int(repl[i + 1 : j]))
            i = j
        elif c in _TEMPLATE_ESCAPES:
            literal.append(_TEMPLATE_ESCAPES[c])
            i += 2
        elif c.isascii() and c.isalpha():
            raise ValueError(f"bad escape \\{c}")
        else:
            literal.append("\\" + c)
            i += 2
    if literal or not pieces:
        pieces.append("".join(literal))
    return tuple(pieces)


@dataclass(frozen=True)
class CompiledRule:
    """A validated rule with its RE2 program and its parsed replacement (UTF-8 pieces)."""

    rule: TransformRule
    regex: Any = field(repr=False, compare=False)
    template: tuple[bytes | int, ...] = field(repr=False, compare=False)

    # The longest text a match can span, in characters, when the pattern bounds it (None:
    # unbounded or not known): a stream need hold back only that much, not HOLD_BACK.
    width: int | None = field(default=None, compare=False)

    def hold(self, limit: int) -> int:
        """Bytes of a stream's tail to hold back: more than a whole match (4 bytes per
        character in UTF-8), so a match that ends at the tail (`$`, `\\b`, a bounded
        repeat that more text would extend) is never taken before the text that decides it."""
        if self.width is None:
            return limit
        return min(limit, 4 * (self.width + 1))

    def expand(self, m: Any) -> bytes:
        if len(self.template) == 1 and isinstance(self.template[0], bytes):
            return self.template[0]
        return b"".join(p if isinstance(p, bytes) else (m[p] or b"") for p in self.template)


def _compile(rule: TransformRule, where: str) -> CompiledRule:
    match, replace, direction = rule.match, rule.replace, rule.direction
    if not isinstance(match, str):
        raise InvalidInput(f"{where}.match", "must be a string")
    if not match:
        raise InvalidInput(f"{where}.match", "must not be empty")
    if len(match) > MAX_PATTERN_LENGTH:
        raise InvalidInput(
            f"{where}.match", f"at most {MAX_PATTERN_LENGTH} characters (got {len(match)})"
        )
    if not isinstance(replace, str):
        raise InvalidInput(f"{where}.replace", "must be a string")
    if direction not in DIRECTIONS:
        raise InvalidInput(
            f"{where}.direction", f"must be 'outbound', 'inbound' or 'both' (got {direction!r})"
        )
    regex = _regex(match, f"{where}.match")
    try:
        pieces = parse_template(replace, regex.groups, regex.groupindex)
        template = tuple(p.encode() if isinstance(p, str) else p for p in pieces)
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{where}.replace", "must be valid Unicode text") from exc
    except ValueError as exc:
        raise InvalidInput(f"{where}.replace", str(exc)) from None
    return CompiledRule(rule, regex, template, _max_width(match))


def _max_width(pattern: str) -> int | None:
    """The pattern's maximum match length from Python's own regex parser (RE2's syntax is
    close to a subset). Anything it cannot parse, or an unbounded repeat, gives None."""
    try:
        _, hi = _sre_parser.parse(pattern).getwidth()
    except Exception:  # a pattern only RE2 understands: keep the full hold-back
        return None
    return int(hi) if hi < _sre_constants.MAXREPEAT and hi < 1 << 20 else None


def compile_rules(
    rules: Sequence[TransformRule], field: str = "security.transformations"
) -> RuleSet:
    """Validate and compile; InvalidInput names `<field>[i].match|replace|direction`."""
    if len(rules) > MAX_RULES:
        raise InvalidInput(field, f"at most {MAX_RULES} rules (got {len(rules)})")
    return RuleSet(tuple(_compile(r, f"{field}[{i}]") for i, r in enumerate(rules)))


# --- matching (on UTF-8 bytes: RE2's offsets, and one encoding per text) -----------------------


def _encode(text: str) -> bytes:
    # surrogatepass: a body decoded with surrogateescape keeps its undecodable bytes.
    return text.encode("utf-8", "surrogatepass")


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogatepass")


def _is_boundary(data: bytes, i: int) -> bool:
    return i >= len(data) or data[i] & 0xC0 != 0x80


def _next_char(data: bytes, i: int) -> int:
    if i >= len(data):
        return i + 1
    lead = data[i]
    return i + (1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4)


def _last_char(data: bytes, end: int) -> bytes:
    start = end - 1
    while start > 0 and end - start < 4 and not _is_boundary(data, start):
        start -= 1
    return data[max(start, 0) : end]


def _matches(regex: Any, data: bytes, pos: int) -> Iterator[Any]:
    """Matches from `pos` on, as `re.finditer` visits them, except that after an empty match
    the search resumes one character later (RE2 cannot ask for the next-preferred non-empty
    match at the same place, as Python's `|a` or `a*?` find)."""
    while pos <= len(data):
        m = regex.search(data, pos)
        if m is None:
            return
        start, end = m.span()
        if not (_is_boundary(data, start) and _is_boundary(data, end)):
            # Only inside the bytes of a lone surrogate (`\B` between two of them).
            pos = _next_char(data, start)
            continue
        yield m
        pos = end if end > start else _next_char(data, end)


@dataclass
class _Deadline:
    clock: Callable[[], float]
    at: float

    def check(self) -> None:
        if self.clock() > self.at:
            raise RuleTimeout(
                "transformations: matching ran past its time limit on one body (a pattern"
                " that looks far ahead of every match, like 'a.*Z|a', is quadratic)"
            )


def _sub(rule: CompiledRule, data: bytes, deadline: _Deadline) -> tuple[bytes, int]:
    out: list[bytes] = []
    last = count = 0
    for m in _matches(rule.regex, data, 0):
        start, end = m.span()
        out += (data[last:start], rule.expand(m))
        last = end
        count += 1
        deadline.check()
    deadline.check()
    if not count:
        return data, 0
    out.append(data[last:])
    return b"".join(out), count


@dataclass(frozen=True)
class RuleSet:
    """Compiled rules, applied in order (each to the previous one's output)."""

    # Bytes of UTF-8 (so at most as many characters) each rule of a stream holds back.
    HOLD_BACK: ClassVar[int] = 4096

    rules: tuple[CompiledRule, ...] = ()
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    def __bool__(self) -> bool:
        return bool(self.rules)

    @property
    def source(self) -> tuple[TransformRule, ...]:
        return tuple(r.rule for r in self.rules)

    def for_direction(self, direction: Literal["outbound", "inbound"]) -> RuleSet:
        return RuleSet(tuple(r for r in self.rules if r.rule.applies_to(direction)), self.clock)

    def deadline(self, size: int) -> _Deadline:
        return _Deadline(self.clock, self.clock() + BUDGET_FLOOR_S + size * BUDGET_PER_BYTE_S)

    def apply(self, text: str) -> tuple[str, int]:
        """The rewritten text and the number of replacements. Raises RuleTimeout."""
        if not self.rules:
            return text, 0
        data = _encode(text)
        deadline = self.deadline(len(data))
        total = 0
        for rule in self.rules:
            data, count = _sub(rule, data, deadline)
            total += count
        return (_decode(data), total) if total else (text, 0)

    def stream(self) -> StreamRewriter:
        return StreamRewriter(self)


# --- streaming -------------------------------------------------------------------------------


class _Stage:
    """One rule over a stream: holds back the last `hold` bytes of its input (the rule's
    bounded match width, else HOLD_BACK), where a match could still begin that more text
    would change; what lies before is rewritten and released.
    Exact as long as no match, and no preferred alternative a match must rule out, spans more
    than HOLD_BACK bytes (`a.{0,100}b` always is; `a.*b` across a long line may not be)."""

    def __init__(self, rule: CompiledRule, hold: int) -> None:
        self.rule = rule
        self.hold = hold
        self.buf = b""
        self.prev = b""  # the last released character: context for ^, \b, (?m)^
        self.count = 0

    def feed(self, data: bytes, deadline: _Deadline, *, final: bool) -> bytes:
        buf = self.buf + data if self.buf else data
        if final:
            cut = len(buf) + 1  # every match counts, an empty one at the very end too
        else:
            cut = len(buf) - self.hold
            if cut <= 0:
                self.buf = buf
                return b""
            while not _is_boundary(buf, cut):
                cut += 1
        context = self.prev + buf
        offset = len(self.prev)
        out: list[bytes] = []
        last = 0
        for m in _matches(self.rule.regex, context, offset):
            start, end = m.start() - offset, m.end() - offset
            if start >= cut:
                break
            out += (buf[last:start], self.rule.expand(m))
            last = end
            self.count += 1
            deadline.check()
        deadline.check()
        release = len(buf) if final else max(cut, last)
        out.append(buf[last:release])
        if final:
            self.prev = b""
        elif release:
            self.prev = _last_char(buf, release)
        self.buf = buf[release:]
        return b"".join(out)


class StreamRewriter:
    """A RuleSet over a text that arrives in pieces: `feed` returns what is final, `flush`
    the rest (it ends the text: the next `feed` starts a new one, `^` matching again).
    Each rule holds back at most `HOLD_BACK` bytes, so the rewriter at most
    len(rules) * HOLD_BACK. `replacements` counts the replacements made so far."""

    def __init__(self, rules: RuleSet) -> None:
        self._rules = rules
        self._stages = [_Stage(r, r.hold(rules.HOLD_BACK)) for r in rules.rules]

    @property
    def replacements(self) -> int:
        return sum(s.count for s in self._stages)

    @property
    def held(self) -> int:
        """Bytes held back right now."""
        return sum(len(s.buf) for s in self._stages)

    def feed(self, text: str) -> str:
        if not self._stages:
            return text
        return self._run(_encode(text), final=False)

    def flush(self) -> str:
        if not self._stages:
            return ""
        return self._run(b"", final=True)

    def _run(self, data: bytes, *, final: bool) -> str:
        deadline = self._rules.deadline(len(data) + self.held)
        for stage in self._stages:
            data = stage.feed(data, deadline, final=final)
        return _decode(data)
