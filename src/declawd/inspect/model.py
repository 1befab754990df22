"""Types shared by every part of content inspection. Pure: no I/O, no asyncio.

The node builds an `InspectionPolicy` per sandbox (from its SecurityPolicy, its vault refs
and its envs) and hands it to the gateway in state.json (`to_wire`/`from_wire`). The proxy
asks `inspects(host)` once it knows the host (TLS SNI or HTTP Host); for an inspected
connection it stacks an `HttpLayer` (events in, commands out) between the two TLS ends.
Secret values are never in a policy: the layer asks a `SecretSource` at request time, so a
rotation takes effect on the next request.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import re2

if TYPE_CHECKING:
    from declawd.guard.codesec import CodeSecurityGuard
    from declawd.guard.custom import CustomPolicy
    from declawd.guard.injection import InjectionGuard
    from declawd.guard.pii import PiiGuard

Direction = Literal["outbound", "inbound", "both"]
DIRECTIONS: tuple[str, ...] = ("outbound", "inbound", "both")
INJECTION_TYPES: tuple[str, ...] = ("bearer", "header", "basic", "query")
PLACEHOLDER = "declaw:vault-managed"
# The SDK's DEFAULT_SENSITIVE_PATTERNS (declaw/security/env.py), matched on the upper-cased
# name with fnmatch, exactly as `EnvSecurityConfig.is_sensitive` does.
DEFAULT_MASK_PATTERNS: tuple[str, ...] = (
    "*_KEY",
    "*_SECRET",
    "*_TOKEN",
    "*_PASSWORD",
    "*_CREDENTIALS",
    "API_KEY",
    "SECRET_KEY",
)
DEFAULT_BUFFER_LIMIT = 8 * 1024 * 1024
# A custom policy with rules in these packages has all of its sandbox's TCP pass the proxy.
_PACKAGES_VIA_PROXY = frozenset({"declaw.platform.network", "declaw.platform.content"})


@functools.lru_cache(maxsize=1024)
def _host_regex(pattern: str) -> Any:
    """The compiled domain_regex (the vault validates it with the same options)."""
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False
    return re2.compile(pattern, options)


@dataclass(frozen=True)
class TransformRule:
    """One `TransformationRule` of the SDK, already validated (RE2-compilable)."""

    match: str
    replace: str
    direction: Direction = "outbound"

    def applies_to(self, direction: Literal["outbound", "inbound"]) -> bool:
        return self.direction == "both" or self.direction == direction


@dataclass(frozen=True)
class VaultScope:
    """One injection rule of a secret (the SDK's `VaultScope`, `injection_type` defaulted)."""

    domain_regex: str
    injection_type: str = "bearer"
    header_name: str = ""
    value_prefix: str = ""
    basic_username: str = ""
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    query_params: Mapping[str, str] = field(default_factory=dict)

    def matches(self, host: str) -> bool:
        """Case-insensitive FULL match of the host (declaw-api.md §12.2), with RE2: the host
        is the sandbox's choice, so a backtracking engine could be made to stall on it."""
        try:
            return _host_regex(self.domain_regex).fullmatch(host) is not None
        except re2.error:
            return False

    def to_wire(self) -> dict[str, Any]:
        return {
            "domain_regex": self.domain_regex,
            "injection_type": self.injection_type,
            "header_name": self.header_name,
            "value_prefix": self.value_prefix,
            "basic_username": self.basic_username,
            "extra_headers": dict(self.extra_headers),
            "query_params": dict(self.query_params),
        }

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> VaultScope:
        return cls(
            domain_regex=str(raw["domain_regex"]),
            injection_type=str(raw.get("injection_type") or "bearer"),
            header_name=str(raw.get("header_name") or ""),
            value_prefix=str(raw.get("value_prefix") or ""),
            basic_username=str(raw.get("basic_username") or ""),
            extra_headers={str(k): str(v) for k, v in (raw.get("extra_headers") or {}).items()},
            query_params={str(k): str(v) for k, v in (raw.get("query_params") or {}).items()},
        )


@dataclass(frozen=True)
class VaultBinding:
    """A secret a sandbox was created with: `env` holds the placeholder inside."""

    env: str
    secret_id: str
    ref: str  # vault://<team>/<env>/<name>
    scopes: tuple[VaultScope, ...] = ()

    def scope_for(self, host: str) -> VaultScope | None:
        return next((s for s in self.scopes if s.matches(host)), None)

    def to_wire(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "secret_id": self.secret_id,
            "ref": self.ref,
            "scopes": [s.to_wire() for s in self.scopes],
        }

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> VaultBinding:
        return cls(
            env=str(raw["env"]),
            secret_id=str(raw["secret_id"]),
            ref=str(raw.get("ref") or ""),
            scopes=tuple(VaultScope.from_wire(s) for s in raw.get("scopes") or ()),
        )


def parse_domains(
    value: Any, label: str, *, not_a_list: str = "must be an array of host names"
) -> tuple[str, ...] | None:
    """A guardrail's `domains` as a request carries it: None, or non-empty strings (exact
    host, `*.suffix`, `~regex` that RE2 compiles); InvalidInput naming the entry."""
    from declawd.errors import InvalidInput

    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidInput(label, not_a_list)
    for i, d in enumerate(value):
        if not isinstance(d, str) or not d.strip():
            raise InvalidInput(f"{label}[{i}]", "must be a non-empty string")
        if d.startswith("~"):
            try:
                re2.compile(d[1:])
            except re2.error as e:
                raise InvalidInput(f"{label}[{i}]", f"is not a valid pattern: {e}") from None
    return tuple(value)


def domain_listed(domains: Sequence[str] | None, host: str | None) -> bool:
    """A guardrail's `domains` (None or empty: every host). Entries as the SDK documents
    them: an exact host; `*.suffix`, the suffix itself and any name below it (the SDK's
    `domain_matches`); `~regex`, an RE2 full match. Case-insensitive, trailing dot ignored."""
    if not domains:
        return True
    if not host:
        return False
    host = host.rstrip(".").lower()
    for entry in domains:
        if entry.startswith("~"):
            try:
                if _host_regex(entry[1:]).fullmatch(host) is not None:
                    return True
            except re2.error:
                continue
        elif entry.startswith("*."):
            suffix = entry[2:].rstrip(".").lower()
            if host == suffix or host.endswith("." + suffix):
                return True
        elif host == entry.rstrip(".").lower():
            return True
    return False


@dataclass(frozen=True)
class InvisibleTextGuard:
    """An enabled `InvisibleTextConfig`: what to do with invisible text, for which hosts."""

    action: Literal["strip", "block", "log_only"] = "strip"
    domains: tuple[str, ...] | None = None

    @property
    def active(self) -> bool:
        return True

    def applies_to(self, host: str | None) -> bool:
        return domain_listed(self.domains, host)

    def to_wire(self) -> dict[str, Any]:
        domains = None if self.domains is None else list(self.domains)
        return {"action": self.action, "domains": domains}

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any] | None) -> InvisibleTextGuard | None:
        if not raw:
            return None
        domains = raw.get("domains")
        return cls(
            action=raw.get("action") or "strip",
            domains=None if domains is None else tuple(str(d) for d in domains),
        )


@dataclass(frozen=True)
class InspectionPolicy:
    """What the proxy does to one sandbox's HTTP traffic. `InspectionPolicy()` inspects
    nothing: every connection stays SNI/Host passthrough."""

    transformations: tuple[TransformRule, ...] = ()
    vault: tuple[VaultBinding, ...] = ()
    audit_enabled: bool = True
    mask_patterns: tuple[str, ...] = DEFAULT_MASK_PATTERNS
    auto_mask_in_audit: bool = True
    # Values of the sandbox's env vars whose names match `mask_patterns` (with
    # auto_mask_in_audit): they never appear in an audit event.
    masked_values: tuple[str, ...] = ()
    buffer_limit: int = DEFAULT_BUFFER_LIMIT
    vault_plain_http: bool = False
    invisible_text: InvisibleTextGuard | None = None  # None: the guard is off
    # Issue 10's guardrails (None: off). Each knows the hosts it applies to.
    pii: PiiGuard | None = None
    injection: InjectionGuard | None = None
    code_security: CodeSecurityGuard | None = None
    # content_gate's domains, opted into inspection for the content package (None: off).
    content_gate: tuple[str, ...] | None = None
    custom: CustomPolicy | None = None

    def _guards(self) -> tuple[Any, ...]:
        return tuple(
            g
            for g in (
                self.invisible_text,
                self.pii,
                self.injection,
                self.code_security,
            )
            if g is not None
        )

    @property
    def active(self) -> bool:
        """Whether the sandbox needs the inspection datapath at all (all its TCP through
        the proxy, UDP 443 refused): something to inspect, or a custom policy with a
        network or content package (CIDR-allowed and open-policy traffic is checked too)."""
        if self.transformations or self.vault or self.content_gate:
            return True
        if any(getattr(g, "active", True) for g in self._guards()):
            return True
        custom = self.custom
        return custom is not None and bool(_PACKAGES_VIA_PROXY & custom.packages)

    def inspects(self, host: str | None, *, tls: bool) -> bool:
        """Whether a connection to `host` is intercepted: any transformation (all hosts),
        or a vault secret whose scope matches (over TLS, or plain HTTP if allowed), or a
        guardrail whose `domains` list the host (None: all, except for injection defense
        and the content gate, where None lists none)."""
        if self.transformations:
            return True
        if any(g.applies_to(host) for g in self._guards()):
            return True
        if self.content_gate and domain_listed(self.content_gate, host):
            return True
        if host is None or not (tls or self.vault_plain_http):
            return False
        return any(b.scope_for(host) is not None for b in self.vault)

    def to_wire(self) -> dict[str, Any]:
        return {
            "transformations": [
                {"match": r.match, "replace": r.replace, "direction": r.direction}
                for r in self.transformations
            ],
            "vault": [b.to_wire() for b in self.vault],
            "audit_enabled": self.audit_enabled,
            "mask_patterns": list(self.mask_patterns),
            "auto_mask_in_audit": self.auto_mask_in_audit,
            "masked_values": list(self.masked_values),
            "buffer_limit": self.buffer_limit,
            "vault_plain_http": self.vault_plain_http,
            "invisible_text": self.invisible_text and self.invisible_text.to_wire(),
            "pii": self.pii and self.pii.to_wire(),
            "injection": self.injection and self.injection.to_wire(),
            "code_security": self.code_security and self.code_security.to_wire(),
            "content_gate": None if self.content_gate is None else list(self.content_gate),
            "custom": self.custom and self.custom.to_wire(),
        }

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any] | None) -> InspectionPolicy:
        if not raw:
            return cls()
        return cls(
            transformations=tuple(
                TransformRule(str(t["match"]), str(t["replace"]), t.get("direction", "outbound"))
                for t in raw.get("transformations") or ()
            ),
            vault=tuple(VaultBinding.from_wire(b) for b in raw.get("vault") or ()),
            audit_enabled=bool(raw.get("audit_enabled", True)),
            mask_patterns=tuple(raw.get("mask_patterns") or DEFAULT_MASK_PATTERNS),
            auto_mask_in_audit=bool(raw.get("auto_mask_in_audit", True)),
            masked_values=tuple(str(v) for v in raw.get("masked_values") or ()),
            buffer_limit=int(raw.get("buffer_limit") or DEFAULT_BUFFER_LIMIT),
            vault_plain_http=bool(raw.get("vault_plain_http", False)),
            invisible_text=InvisibleTextGuard.from_wire(raw.get("invisible_text")),
            **_guards_from_wire(raw),
        )


def _guards_from_wire(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Issue 10's guardrails from the wire (imported here: they import this module)."""
    from declawd.guard.codesec import CodeSecurityGuard
    from declawd.guard.custom import CustomPolicy
    from declawd.guard.injection import InjectionGuard
    from declawd.guard.pii import PiiGuard

    out: dict[str, Any] = {}
    for name, cls in (
        ("pii", PiiGuard),
        ("injection", InjectionGuard),
        ("code_security", CodeSecurityGuard),
        ("custom", CustomPolicy),
    ):
        if raw.get(name):
            out[name] = cls.from_wire(raw[name])
    gate = raw.get("content_gate")
    out["content_gate"] = None if gate is None else tuple(str(d) for d in gate)
    return out


class SecretSource(Protocol):
    """Current plaintext of a vault secret (None: deleted). Called per request."""

    def value(self, secret_id: str) -> str | None: ...


# The HTTP layer: sans-IO, one per inspected connection ------------------------------


@dataclass(frozen=True)
class InspectContext:
    """What an inspected connection's HTTP layer knows about it."""

    sandbox_id: str
    host: str  # the SNI (TLS) or the first request's Host (plain HTTP)
    scheme: Literal["https", "http"]
    dst_ip: str
    dst_port: int
    client_proto: Literal["h1", "h2"]
    # None: the upstream could not be reached or its certificate did not verify; every
    # request is then answered 502 with `upstream_error` as the message.
    upstream_proto: Literal["h1", "h2"] | None
    upstream_error: str | None = None


@dataclass(frozen=True)
class ToClient:
    data: bytes


@dataclass(frozen=True)
class ToUpstream:
    data: bytes


@dataclass(frozen=True)
class CloseClient:
    """Finish the client side gracefully after what was sent (TLS close_notify, FIN)."""


@dataclass(frozen=True)
class CloseUpstream:
    pass


@dataclass(frozen=True)
class ResetBoth:
    """Abort both sides with a TCP reset (a request the policy refuses on plain HTTP)."""

    reason: str


@dataclass(frozen=True)
class HttpAudit:
    """One inspected request (kind `http`): the SDK's `AuditEntry` fields plus ours."""

    record: Mapping[str, Any]
    verdict: Literal["allow", "deny"] = "allow"
    reason: str = "inspected"


HttpCommand = ToClient | ToUpstream | CloseClient | CloseUpstream | ResetBoth | HttpAudit


class HttpLayer(Protocol):
    """Plaintext in from either side, commands out. The proxy owns sockets and TLS."""

    def client_data(self, data: bytes) -> list[HttpCommand]: ...

    def upstream_data(self, data: bytes) -> list[HttpCommand]: ...

    def client_eof(self) -> list[HttpCommand]: ...

    def upstream_eof(self) -> list[HttpCommand]: ...
