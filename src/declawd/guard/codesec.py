"""Code security: insecure code found in traffic text, scored, logged or refused (issue 10).

`find_code` pulls the code out of a text: each markdown fence (``` or ~~~), its language
from the info string or, unlabelled, Python when `ast.parse` accepts it, else shell; a text
without fences is one Python block when the whole of it parses. Python is scanned with
bandit's own tests (its node visitor, in process, fresh per block; `# nosec` is ignored, as
the code's author is the party being checked); shell with the `SHELL_RULES` below. Other
languages are reported as `unscanned_languages`.

Score: each finding `SEVERITY[sev] * CONFIDENCE[conf]` (HIGH/HIGH 1.0, HIGH/MEDIUM 0.9,
MEDIUM/HIGH 0.7, MEDIUM/MEDIUM 0.63, HIGH/LOW 0.6, MEDIUM/LOW 0.42, LOW/HIGH 0.4, LOW/MEDIUM
0.36); a text's score is its best finding's. Bandit's low-severity import notices (B4xx at
LOW: `import subprocess`, `import pickle`) are dropped: the call they warn of is its own test.

Invariant: pure but for the lazily built bandit test set (one per process, read-only once
built, guarded by a lock); a scan never holds or reports the code's text, only rule ids,
ratings and line numbers.
"""

from __future__ import annotations

import ast
import io
import logging
import re
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from declawd.errors import InvalidInput
from declawd.inspect.model import domain_listed

if TYPE_CHECKING:
    from declawd.inspect.pipeline import ExchangeState, TextPass, TextStream, Way

Action = Literal["block", "log_only"]
ACTIONS: tuple[str, ...] = ("block", "log_only")
DEFAULT_THRESHOLD = 0.6
SEVERITY: Mapping[str, float] = {"LOW": 0.4, "MEDIUM": 0.7, "HIGH": 1.0}
CONFIDENCE: Mapping[str, float] = {"LOW": 0.6, "MEDIUM": 0.9, "HIGH": 1.0}
# What a stream holds of one open fence before it scans and releases it anyway.
STREAM_HOLD = 64 * 1024
# Longest text scanned whole; past it only the first MAX_SCAN characters are.
MAX_SCAN = 1024 * 1024

# Fence labels, normalised (what `excluded_languages` entries also go through).
_ALIASES: Mapping[str, str] = {
    "py": "python",
    "py3": "python",
    "python3": "python",
    "pycon": "python",
    "ipython": "python",
    "sh": "shell",
    "bash": "shell",
    "zsh": "shell",
    "ksh": "shell",
    "console": "shell",
    "shell-session": "shell",
    "shellsession": "shell",
    "terminal": "shell",
}
SCANNED_LANGUAGES: tuple[str, ...] = ("python", "shell")


def language_name(label: str) -> str:
    """A fence label or an `excluded_languages` entry as the language it names."""
    name = label.strip().lower()
    return _ALIASES.get(name, name)


@dataclass(frozen=True)
class CodeSecurityGuard:
    """An enabled `CodeSecurityConfig`: flag code whose score reaches `threshold`."""

    threshold: float = DEFAULT_THRESHOLD
    action: Action = "log_only"
    excluded_languages: tuple[str, ...] | None = None
    domains: tuple[str, ...] | None = None

    def applies_to(self, host: str | None) -> bool:
        return domain_listed(self.domains, host)

    @property
    def excluded(self) -> frozenset[str]:
        return frozenset(language_name(x) for x in self.excluded_languages or ())

    def to_wire(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "action": self.action,
            "excluded_languages": _list(self.excluded_languages),
            "domains": _list(self.domains),
        }

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any] | None) -> CodeSecurityGuard | None:
        if not raw:
            return None
        excluded, domains = raw.get("excluded_languages"), raw.get("domains")
        return cls(
            threshold=float(raw.get("threshold", DEFAULT_THRESHOLD)),
            action=raw.get("action") or "log_only",
            excluded_languages=None if excluded is None else tuple(str(x) for x in excluded),
            domains=None if domains is None else tuple(str(d) for d in domains),
        )


def _list(values: tuple[str, ...] | None) -> list[str] | None:
    return None if values is None else list(values)


# Finding code ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CodeBlock:
    """One piece of code: its language (normalised), its text, where its label came from
    ("fence", "parsed": unlabelled but parses as Python, "guessed": unlabelled, not Python)."""

    language: str
    code: str
    source: Literal["fence", "parsed", "guessed", "whole"] = "fence"


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*([^\s`{]*)[^\n]*$", re.M)


def _closing(marker: str) -> re.Pattern[str]:
    return re.compile(rf"^ {{0,3}}{re.escape(marker[0])}{{{len(marker)},}}[ \t]*$", re.M)


def fences(text: str) -> list[tuple[str, str]]:
    """The fenced blocks of a markdown text as (label, code); an unclosed fence runs to the
    end of the text (CommonMark)."""
    out: list[tuple[str, str]] = []
    pos = 0
    while (m := _FENCE.search(text, pos)) is not None:
        marker, label = m.group(1), m.group(2)
        if marker[0] == "`" and "`" in m.group(0)[m.end(1) :]:
            pos = m.end()  # inline code, not a fence
            continue
        start = m.end() + 1
        close = _closing(marker).search(text, start)
        end = len(text) if close is None else close.start()
        out.append((label, text[start:end]))
        pos = len(text) if close is None else close.end()
    return out


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return True


def _classify(label: str, code: str) -> CodeBlock:
    if label:
        return CodeBlock(language_name(label), code, "fence")
    if _parses(code):
        return CodeBlock("python", code, "parsed")
    return CodeBlock("shell", code, "guessed")


# What a one-line text needs before it is worth parsing as Python (prose rarely parses).
_CODE_HINT = re.compile(r"\n\s*\S|[(=]|^\s*(?:import|from)\s", re.M)


def find_code(text: str) -> list[CodeBlock]:
    """The code in `text`: its fences, or the whole text when it is Python without any."""
    text = text[:MAX_SCAN]
    found = fences(text)
    if found:
        return [_classify(label, code) for label, code in found if code.strip()]
    if _CODE_HINT.search(text) and _parses(text):
        return [CodeBlock("python", text, "whole")]
    return []


# Scanning ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One rule that fired: a bandit test id (B602) or a shell rule's (SH001)."""

    test_id: str
    name: str
    severity: str
    confidence: str
    line: int
    language: str

    @property
    def score(self) -> float:
        return rating(self.severity, self.confidence)

    def to_wire(self) -> dict[str, Any]:
        return {
            "test_id": self.test_id,
            "name": self.name,
            "severity": self.severity,
            "confidence": self.confidence,
            "score": round(self.score, 3),
            "line": self.line,
            "language": self.language,
        }


def rating(severity: str, confidence: str) -> float:
    return SEVERITY.get(severity, 0.0) * CONFIDENCE.get(confidence, 0.0)


@dataclass(frozen=True)
class Report:
    """What one text's scan found."""

    findings: tuple[Finding, ...] = ()
    blocks: int = 0
    languages: tuple[str, ...] = ()
    unscanned_languages: tuple[str, ...] = ()
    unparsed: int = 0  # Python-labelled blocks that did not parse

    @property
    def score(self) -> float:
        return max((f.score for f in self.findings), default=0.0)


@dataclass(frozen=True)
class ShellRule:
    test_id: str
    name: str
    pattern: re.Pattern[str]
    severity: str
    confidence: str


def _rule(test_id: str, name: str, pattern: str, sev: str, conf: str) -> ShellRule:
    return ShellRule(test_id, name, re.compile(pattern, re.I | re.M), sev, conf)


_SH = r"(?:sudo\s+(?:-\S+\s+)*)?(?:ba|z|k|da)?sh\b"
SHELL_RULES: tuple[ShellRule, ...] = (
    _rule(
        "SH001",
        "remote_script_piped_to_shell",
        rf"\b(?:curl|wget|fetch)\b[^|\n;]*\|\s*{_SH}"
        r"|\b(?:ba|z)?sh\s+(?:-c\s+)?[\"']?\s*(?:<\(|\$\()\s*(?:curl|wget)\b"
        r"|\beval\s+[\"']?\$\(\s*(?:curl|wget)\b",
        "MEDIUM",
        "HIGH",
    ),
    _rule(
        "SH002",
        "world_writable_permissions",
        r"\bchmod\s+(?:-\w+\s+)*(?:0?777|0?666|a\+rwx|ugo\+rwx|o\+w|a\+w)\b",
        "MEDIUM",
        "HIGH",
    ),
    _rule(
        "SH003",
        "recursive_delete_of_root_or_home",
        r"\brm\s+(?:-[a-z]*r[a-z]*f[a-z]*|-[a-z]*f[a-z]*r[a-z]*|-r\s+-f|-f\s+-r|--recursive\s+"
        r"--force|--force\s+--recursive)\s+(?:--no-preserve-root\s+)?[\"']?"
        r"(?:/|/\*|~/?|~/\*|\$HOME/?|\$\{HOME\}/?|\*|\$[A-Za-z_]\w*/\*?)[\"']?(?=\s|;|$|&)",
        "HIGH",
        "HIGH",
    ),
    _rule(
        "SH004",
        "tls_verification_disabled",
        r"\bcurl\b[^\n|;]*\s(?:-k|--insecure)\b|\bwget\b[^\n|;]*--no-check-certificate"
        r"|http\.sslverify[= ]+false|\bGIT_SSL_NO_VERIFY=\S|--trusted-host\b"
        r"|\bNODE_TLS_REJECT_UNAUTHORIZED=0|\bPYTHONHTTPSVERIFY=0",
        "MEDIUM",
        "HIGH",
    ),
    _rule(
        "SH005",
        "reverse_shell",
        r"/dev/tcp/|\b(?:nc|ncat|netcat)\b[^\n|;]*\s-[a-z]*e\s|\bbash\s+-i\s*>&"
        r"|\bmkfifo\b[^\n]*\|\s*(?:ba)?sh\b[^\n]*\|\s*(?:nc|ncat)\b",
        "HIGH",
        "HIGH",
    ),
    _rule(
        "SH006",
        "disk_destroyed",
        r"\bdd\b[^\n]*\bof=/dev/(?:sd|nvme|hd|xvd|vd|disk)|\bmkfs(?:\.\w+)?\s+/dev/"
        r"|:\(\)\s*\{\s*:\s*\|\s*:\s*&\s*\}\s*;\s*:|>\s*/dev/(?:sd|nvme)[a-z0-9]*\b",
        "HIGH",
        "HIGH",
    ),
    _rule(
        "SH007",
        "protection_disabled",
        r"\bsetenforce\s+0\b|\bufw\s+disable\b|\biptables\s+-F\b|\bchmod\s+(?:[ug]\+s|[0-7]?4[0-7]{3})\b"
        r"|NOPASSWD\s*:\s*ALL|\bsystemctl\s+(?:stop|disable)\s+(?:firewalld|apparmor|auditd)\b",
        "MEDIUM",
        "MEDIUM",
    ),
    _rule(
        "SH008",
        "password_on_command_line",
        r"\bsshpass\s+-p\s*\S|\bmysql\b[^\n]*\s-p[^\s-]\S*|\b(?:PGPASSWORD|MYSQL_PWD)=[^\s$]",
        "LOW",
        "MEDIUM",
    ),
)


def scan_shell(code: str) -> tuple[Finding, ...]:
    """The shell rules that fire on `code`, once per rule and line."""
    out: dict[tuple[str, int], Finding] = {}
    for rule in SHELL_RULES:
        for m in rule.pattern.finditer(code):
            line = code.count("\n", 0, m.start()) + 1
            out.setdefault(
                (rule.test_id, line),
                Finding(rule.test_id, rule.name, rule.severity, rule.confidence, line, "shell"),
            )
    return tuple(out.values())


class _Bandit:
    """Bandit's test set, built once per process on first use (its plugins load then)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tests: Any = None

    def tests(self) -> Any:
        with self._lock:
            if self._tests is None:
                logging.getLogger("bandit").setLevel(logging.CRITICAL)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # stevedore's deprecation notices
                    from bandit.core import config, test_set

                    self._tests = test_set.BanditTestSet(config.BanditConfig())
            return self._tests

    def scan(self, code: str) -> tuple[Finding, ...] | None:
        """Bandit's findings in `code`; None when it is not Python."""
        tests = self.tests()
        from bandit.core import meta_ast, metrics, node_visitor

        visitor = node_visitor.BanditNodeVisitor(
            "snippet.py",
            io.BytesIO(code.encode("utf-8", "replace")),
            meta_ast.BanditMetaAst(),
            tests,
            False,
            {},  # nosec lines: none honoured
            metrics.Metrics(),
        )
        try:
            visitor.process(code)
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            return None
        out = []
        for r in visitor.tester.results:
            sev, conf = str(r.severity), str(r.confidence)
            if r.test_id.startswith("B4") and sev == "LOW":
                continue
            out.append(Finding(r.test_id, r.test, sev, conf, int(r.lineno or 0), "python"))
        return tuple(out)


BANDIT = _Bandit()


def scan_code(blocks: Sequence[CodeBlock], excluded: frozenset[str] = frozenset()) -> Report:
    findings: list[Finding] = []
    langs: list[str] = []
    skipped: list[str] = []
    unparsed = 0
    for b in blocks:
        if b.language in excluded:
            continue
        if b.language == "python":
            found = BANDIT.scan(b.code)
            if found is None:
                unparsed += 1
                # A Python-labelled block that does not parse may still be a shell session.
                found = scan_shell(b.code)
            findings.extend(found)
        elif b.language == "shell":
            findings.extend(scan_shell(b.code))
        else:
            skipped.append(b.language)
            continue
        langs.append(b.language)
    return Report(
        findings=tuple(findings),
        blocks=len(blocks),
        languages=tuple(sorted(set(langs))),
        unscanned_languages=tuple(sorted(set(skipped))),
        unparsed=unparsed,
    )


def scan(text: str, excluded: frozenset[str] = frozenset()) -> Report:
    """Find the code in `text` and scan it."""
    return scan_code(find_code(text), excluded)


# The SDK section ---------------------------------------------------------------------------


def parse_code_security(
    raw: Any, label: str = "security.code_security"
) -> tuple[dict[str, Any], CodeSecurityGuard | None]:
    """`CodeSecurityConfig` normalised as its `to_dict()` writes it, and the guard if on."""
    if isinstance(raw, bool):
        raw = {"enabled": raw}
    if not isinstance(raw, Mapping):
        raise InvalidInput(label, "must be an object")
    enabled = _flag(raw, "enabled", label)
    threshold = threshold_of(raw, DEFAULT_THRESHOLD, label)
    action = raw.get("action", "log_only")
    if action not in ACTIONS:
        raise InvalidInput(f"{label}.action", "must be 'block' or 'log_only'")
    excluded = _strings(raw.get("excluded_languages"), f"{label}.excluded_languages")
    domains = domains_of(raw.get("domains"), f"{label}.domains")
    out: dict[str, Any] = {"enabled": enabled, "threshold": threshold, "action": action}
    if excluded is not None:
        out["excluded_languages"] = list(excluded)
    if domains is not None:
        out["domains"] = list(domains)
    guard = CodeSecurityGuard(threshold, action, excluded, domains) if enabled else None
    return out, guard


def _flag(raw: Mapping[str, Any], name: str, label: str) -> bool:
    value = raw.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidInput(f"{label}.{name}", "must be a boolean")
    return value


def threshold_of(raw: Mapping[str, Any], default: float, label: str) -> float:
    value = raw.get("threshold")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise InvalidInput(f"{label}.threshold", "must be between 0 and 1")
    return float(value)


def _strings(value: Any, label: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidInput(label, "must be an array of strings")
    for i, v in enumerate(value):
        if not isinstance(v, str) or not v.strip():
            raise InvalidInput(f"{label}[{i}]", "must be a non-empty string")
    return tuple(value)


def domains_of(value: Any, label: str) -> tuple[str, ...] | None:
    """A guardrail's `domains` (see `parse_domains`)."""
    from declawd.inspect.model import parse_domains

    return parse_domains(value, label, not_a_list="must be an array of strings")


# The pipeline stage (a `BodyStage`, structurally) -------------------------------------------


class CodeSecurityStage:
    """Both directions, for the hosts the guard applies to: inbound is where a model's code
    arrives, outbound is code the agent sends (a tool call's arguments, a paste to an API).
    Findings land in `x.scratch["scan_results"]["code_security"]`; under `block` a body whose
    score reaches the threshold raises the pipeline's `Blocked("insecure_code_detected")`."""

    def __init__(self, guard: CodeSecurityGuard | None, host: str | None) -> None:
        self._guard = guard if guard is not None and guard.applies_to(host) else None

    def start(self, x: ExchangeState, way: Way) -> TextPass | None:
        if self._guard is None:
            return None
        return _CodePass(self._guard, x, way)


@dataclass
class _Record:
    """The exchange's `code_security` scan result, built up over its bodies' texts."""

    guard: CodeSecurityGuard
    score: float = 0.0
    findings: list[dict[str, Any]] = field(default_factory=list)
    ways: set[str] = field(default_factory=set)
    languages: set[str] = field(default_factory=set)
    unscanned: set[str] = field(default_factory=set)
    MAX_FINDINGS = 50

    def add(self, report: Report, way: str) -> None:
        self.languages.update(report.languages)
        self.unscanned.update(report.unscanned_languages)
        for f in report.findings:
            if len(self.findings) < self.MAX_FINDINGS:
                self.findings.append({**f.to_wire(), "way": way})
            if f.score >= self.guard.threshold:
                self.ways.add(way)
        self.score = max(self.score, report.score)

    def to_wire(self) -> dict[str, Any]:
        detected = bool(self.findings) and self.score >= self.guard.threshold
        return {
            "detected": detected,
            "score": round(self.score, 3),
            "threshold": self.guard.threshold,
            "action": self.guard.action,
            # The rules at or above the threshold (what Rego reads); `findings` has them all.
            "categories": sorted(
                {f["test_id"] for f in self.findings if f["score"] >= self.guard.threshold}
            ),
            "findings": list(self.findings),
            "ways": sorted(self.ways),
            "languages": sorted(self.languages),
            "unscanned_languages": sorted(self.unscanned),
        }


class _CodePass:
    def __init__(self, guard: CodeSecurityGuard, x: ExchangeState, way: Way) -> None:
        self._guard, self._x, self._way = guard, x, way
        self._excluded = guard.excluded

    def apply(self, text: str) -> str:
        self._found(scan(text, self._excluded))
        return text

    def stream(self) -> TextStream:
        return CodeStream(self._guard.action == "block", self._check)

    def _check(self, blocks: Sequence[CodeBlock]) -> None:
        self._found(scan_code(blocks, self._excluded))

    def _found(self, report: Report) -> None:
        if not report.blocks:
            return
        results = self._x.scratch.setdefault("scan_results", {})
        record: _Record | None = self._x.scratch.get("_code_security")
        if record is None:
            record = self._x.scratch["_code_security"] = _Record(self._guard)
        record.add(report, self._way)
        results["code_security"] = record.to_wire()
        if self._guard.action == "block" and flagged(report, self._guard.threshold):
            from declawd.inspect.pipeline import Blocked

            ids = sorted({f.test_id for f in report.findings if f.score >= self._guard.threshold})
            raise Blocked(
                f"insecure code ({', '.join(ids)}; score {report.score:.2f})",
                error="insecure_code_detected",
            )


def flagged(report: Report, threshold: float) -> bool:
    """A report reaches the threshold: some finding scores at least `threshold` (a text
    without findings is never flagged, even at threshold 0)."""
    return bool(report.findings) and report.score >= threshold


class CodeStream:
    """Streamed text, line by line: text outside a fence passes at once (whole lines);
    a fence's lines are held until it closes (under `hold`; else they pass too) and the
    block is checked before it is released. A fence over `STREAM_HOLD` characters is
    checked as it stands and released, and the rest of it passes as it comes, checked
    when it closes. Unfenced streamed text is not scanned as Python (it has no end to wait
    for); the held tail of a partial line is at most one line."""

    def __init__(self, hold: bool, check: Any, limit: int = STREAM_HOLD) -> None:
        self._hold, self._check, self._limit = hold, check, limit
        self._partial = ""
        self._fence: str | None = None  # the open fence's marker
        self._label = ""
        self._code: list[str] = []
        self._code_len = 0
        self._held: list[str] = []
        self._overflowed = False

    def feed(self, text: str) -> str:
        buf = self._partial + text
        lines = buf.splitlines(keepends=True)
        if lines and not lines[-1].endswith(("\n", "\r")):
            self._partial = lines.pop()
        else:
            self._partial = ""
        return "".join(self._line(line) for line in lines)

    def flush(self) -> str:
        out = self._line(self._partial) if self._partial else ""
        self._partial = ""
        if self._fence is not None:
            out += self._close()
        return out

    def _line(self, line: str) -> str:
        bare = line.rstrip("\r\n")
        if self._fence is None:
            m = _FENCE.match(bare)
            if m is None or (m.group(1)[0] == "`" and "`" in bare[m.end(1) :]):
                return line
            self._fence, self._label = m.group(1), m.group(2)
            self._code, self._code_len, self._overflowed = [], 0, False
            return self._keep(line)
        if _closing(self._fence).fullmatch(bare):
            return self._keep(line) + self._close()
        self._code.append(line)
        self._code_len += len(line)
        out = self._keep(line)
        if self._hold and not self._overflowed and self._code_len > self._limit:
            self._overflowed = True
            self._check([_classify(self._label, "".join(self._code))])
            out, self._held = "".join(self._held), []
        return out

    def _keep(self, line: str) -> str:
        if self._hold and not self._overflowed:
            self._held.append(line)
            return ""
        return line

    def _close(self) -> str:
        code = "".join(self._code)
        self._fence, self._code, self._code_len = None, [], 0
        if code.strip():
            self._check([_classify(self._label, code)])
        out, self._held = "".join(self._held), []
        return out
