"""Vault secrets in flight: put them into requests to the hosts they are scoped to, take
them out of what comes back, keep them out of audit URLs. Pure.

Invariant: a secret's value is only ever written into a request whose Host is the
connection's verified host and matches one of the secret's scopes; it never appears in a
repr, an exception or a log line of this module (values live in fields with repr off).
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, quote_plus, unquote_plus

from declawd.inspect.messages import Headers, set_header
from declawd.inspect.model import (
    PLACEHOLDER,
    InspectContext,
    InspectionPolicy,
    SecretSource,
    VaultBinding,
    VaultScope,
)

log = logging.getLogger(__name__)

MASK = "***"
# Masked env values shorter than this are masked only where they are a whole query value:
# replacing e.g. "1" everywhere would make every URL unreadable.
_MIN_SUBSTRING_MASK = 4
_BAD_HEADER_CHARS = re.compile(r"[\r\n\x00]")


def request_host(authority: str) -> str:
    """The host of a Host/:authority value: port and brackets stripped, lower-case."""
    host = authority.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    return host.rstrip(".")


def scoped_bindings(host: str, policy: InspectionPolicy) -> list[tuple[VaultBinding, VaultScope]]:
    out = []
    for binding in policy.vault:
        scope = binding.scope_for(host)
        if scope is not None:
            out.append((binding, scope))
    return out


@dataclass(frozen=True)
class VaultResult:
    """One request after injection."""

    target: str
    headers: Headers = field(repr=False)
    count: int  # bindings injected
    injected: tuple[str, ...] = field(repr=False)  # values written (for mask_url)
    scrubber: Scrubber = field(repr=False)


def inject(
    target: str,
    headers: Headers,
    *,
    authority: str,
    ctx: InspectContext,
    policy: InspectionPolicy,
    secrets: SecretSource,
) -> VaultResult:
    """Apply every binding whose scope matches the connection's host (declaw-api.md §12.2).
    The scrubber covers those bindings even when nothing was injected (plain HTTP, or a Host
    other than the verified one): whatever we know of them never reaches the sandbox."""
    host = ctx.host.lower().rstrip(".")
    allowed = (ctx.scheme == "https" or policy.vault_plain_http) and request_host(authority) == host
    needles: list[str] = []
    injected: list[str] = []
    count = 0
    for binding, scope in scoped_bindings(host, policy):
        value = secrets.value(binding.secret_id)
        if not value:
            continue
        needles += scrub_forms(value, scope)
        if not allowed:
            continue
        applied = _apply(scope, value, target, headers)
        if applied is None:
            log.warning("vault: %s not injected: not valid in a header", binding.env)
            continue
        target, headers, written = applied
        injected += written
        count += 1
    return VaultResult(target, headers, count, tuple(injected), Scrubber(needles))


def _apply(
    scope: VaultScope, value: str, target: str, headers: Headers
) -> tuple[str, Headers, list[str]] | None:
    kind = scope.injection_type or "bearer"
    if kind == "query":
        written = [
            (t.replace("{value}", value).replace("{secret}", value) if t else value)
            for t in scope.query_params.values()
        ]
        params = dict(zip(scope.query_params, written, strict=True))
        return set_query(target, params), headers, written
    if kind == "basic":
        token = base64.b64encode(f"{scope.basic_username}:{value}".encode()).decode()
        pairs = [("authorization", f"Basic {token}")]
    elif kind == "header":
        name = (scope.header_name or "authorization").lower()
        pairs = [(name, f"{scope.value_prefix}{value}")]
        pairs += [(k.lower(), v) for k, v in scope.extra_headers.items()]
    else:  # bearer; other types are refused when the secret is created
        pairs = [("authorization", f"Bearer {value}")]
    if any(_BAD_HEADER_CHARS.search(v) or _BAD_HEADER_CHARS.search(k) for k, v in pairs):
        return None
    for name, v in pairs:
        headers = set_header(headers, name, v)
    return target, headers, [value]


def set_query(target: str, params: dict[str, str]) -> str:
    """`target` with each param set to its value: the first occurrence replaced in place,
    any others dropped, missing ones appended. Other parameters stay byte for byte."""
    path, sep, query = target.partition("?")
    out: list[str] = []
    done: set[str] = set()
    for pair in query.split("&") if sep else []:
        name = unquote_plus(pair.split("=", 1)[0])
        if name not in params:
            out.append(pair)
        elif name not in done:
            out.append(f"{quote(name, safe='')}={quote(params[name], safe='')}")
            done.add(name)
    out += [f"{quote(n, safe='')}={quote(v, safe='')}" for n, v in params.items() if n not in done]
    return f"{path}?{'&'.join(out)}" if out else path


def scrub_forms(value: str, scope: VaultScope) -> list[str]:
    """What the secret looks like when a server echoes it: as is, URL-encoded, and for
    basic auth base64 of `user:secret`."""
    forms = {value, quote(value, safe=""), quote_plus(value)}
    if (scope.injection_type or "bearer") == "basic":
        forms.add(base64.b64encode(f"{scope.basic_username}:{value}".encode()).decode())
    return sorted(forms, key=len, reverse=True)


class Scrubber:
    """Replaces known secret forms by the placeholder, in text and in headers."""

    def __init__(self, needles: Iterable[str]) -> None:
        self._needles = sorted({n for n in needles if n}, key=len, reverse=True)
        self._re = (
            re.compile("|".join(re.escape(n) for n in self._needles)) if self._needles else None
        )
        self.hold_back = max((len(n) for n in self._needles), default=1) - 1

    def __bool__(self) -> bool:
        return self._re is not None

    def __repr__(self) -> str:
        return f"Scrubber({len(self._needles)} forms)"

    def apply(self, text: str) -> str:
        return self._re.sub(PLACEHOLDER, text) if self._re is not None else text

    def headers(self, headers: Headers) -> Headers:
        if self._re is None:
            return headers
        return [(k, self.apply(v)) for k, v in headers]

    def stream(self) -> ScrubStream:
        return ScrubStream(self)

    def _release(self, buf: str, final: bool) -> tuple[str, str]:
        """(what can go now, what must wait for more text)."""
        if self._re is None:
            return buf, ""
        cut = len(buf) if final else max(0, len(buf) - self.hold_back)
        out: list[str] = []
        pos = 0
        for m in self._re.finditer(buf):
            if m.start() >= cut:
                break
            out += (buf[pos : m.start()], PLACEHOLDER)
            pos = m.end()
        end = max(pos, cut)
        out.append(buf[pos:end])
        return "".join(out), buf[end:]


class ScrubStream:
    """Streaming scrub: holds back at most the longest form minus one character, so a
    secret split across chunks is still caught."""

    def __init__(self, scrubber: Scrubber) -> None:
        self._s = scrubber
        self._tail = ""

    def feed(self, text: str) -> str:
        out, self._tail = self._s._release(self._tail + text, final=False)
        return out

    def flush(self) -> str:
        out, self._tail = self._s._release(self._tail, final=True)
        return out


def mask_url(url: str, policy: InspectionPolicy, injected_values: Sequence[str]) -> str:
    """The URL for an audit record: a query value that is (or holds) an injected secret or
    a masked env value becomes `***`, and any such value left anywhere else is cut out."""
    secrets = [v for v in (*injected_values, *policy.masked_values) if v]
    if not secrets:
        return url
    base, sep, query = url.partition("?")
    if sep:
        pairs = []
        for pair in query.split("&"):
            name, eq, raw = pair.partition("=")
            value = unquote_plus(raw)
            hit = value in secrets or any(
                s in value for s in secrets if len(s) >= _MIN_SUBSTRING_MASK
            )
            pairs.append(f"{name}{eq}{MASK}" if hit else pair)
        url = f"{base}?{'&'.join(pairs)}"
    for s in sorted(secrets, key=len, reverse=True):
        if len(s) < _MIN_SUBSTRING_MASK:
            continue
        for form in {s, quote(s, safe=""), quote_plus(s)}:
            url = url.replace(form, MASK)
    return url
