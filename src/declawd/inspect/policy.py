"""A sandbox's SecurityPolicy (the SDK's `to_dict()` JSON) as our model, and its InspectionPolicy.

`parse_security` validates a policy as the request carries it (every error names the field
under the caller's prefix) and normalises it to the SDK's shape with its defaults filled;
`inspection_policy` turns it, the sandbox's vault bindings and envs into what the proxy
enforces. Invariant: a section we do not build is refused when enabled, never ignored
(toxicity: no offline detector met the bar, docs/guardrails-quality.md).

A governance pack named by `custom_policy.policy_ref` adds its guardrails: each section the
pack enables that the sandbox's own policy leaves off is enforced with the pack's settings
(a pack only tightens).
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from declawd.config import Settings
from declawd.errors import InvalidInput, NotSupported
from declawd.guard.codesec import CodeSecurityGuard, parse_code_security
from declawd.guard.custom import CustomPolicy, parse_custom_policy
from declawd.guard.injection import InjectionGuard, parse_injection
from declawd.guard.packs import find_pack
from declawd.guard.pii import PiiGuard
from declawd.inspect.invisible import ACTIONS as INVISIBLE_ACTIONS
from declawd.inspect.model import (
    DEFAULT_MASK_PATTERNS,
    PLACEHOLDER,
    InspectionPolicy,
    InvisibleTextGuard,
    TransformRule,
    VaultBinding,
    parse_domains,
)
from declawd.inspect.rules import compile_rules

# The SDK's defaults of the sections issue 10 builds (declaw-api.md §6.3), so a stored policy
# reads back as `SecurityPolicy.from_dict(...).to_dict()` would.
PII_TYPES = (
    "ssn",
    "credit_card",
    "email",
    "phone",
    "person_name",
    "api_key",
    "address",
    "ip_address",
)
PII_ACTIONS = ("redact", "block", "log_only")
UNBUILT_DEFAULTS: dict[str, dict[str, Any]] = {
    "toxicity": {"enabled": False, "threshold": 0.9, "action": "block"},
}
# Why a section is refused when enabled (the 501's message).
UNBUILT_REASONS = {
    "toxicity": (
        "no offline detector meets the bar (measured: alt-profanity-check, held-out "
        "precision 1.00, recall 0.55 at threshold 0.9; it misses threats and harassment "
        "worded without abusive words); see docs/guardrails-quality.md"
    ),
}
# Always in `to_dict()`; the others only when the policy has them.
ALWAYS = ("pii", "injection_defense", "transformations", "audit", "env_security")
OPTIONAL = ("network", "toxicity", "code_security", "invisible_text", "content_gate")
SECTIONS = (*ALWAYS, *OPTIONAL, "custom_policy")


@dataclass(frozen=True)
class SecuritySpec:
    """A validated SecurityPolicy. `policy` is its JSON in the SDK's shape with defaults
    filled, without `network` (the egress policy lives in the record's own column);
    `network` is that section as sent (the API parses it as an egress policy); `carried`
    names the sections the request had (a PUT replaces those only)."""

    transformations: tuple[TransformRule, ...] = ()
    audit_enabled: bool = True
    mask_patterns: tuple[str, ...] = DEFAULT_MASK_PATTERNS
    auto_mask_in_audit: bool = True
    network: Mapping[str, Any] | None = None
    invisible_text: InvisibleTextGuard | None = None  # None: off
    pii: PiiGuard | None = None
    injection: InjectionGuard | None = None
    code_security: CodeSecurityGuard | None = None
    content_gate: tuple[str, ...] | None = None  # the domains opted in; None: off
    custom: CustomPolicy | None = None
    carried: frozenset[str] = frozenset()
    policy: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.policy) if self.policy else parse_security({}).to_dict()

    def carried_sections(self) -> dict[str, Any]:
        """The normalised sections the request carried (without `network`)."""
        return {k: v for k, v in self.to_dict().items() if k in self.carried}


def _label(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _bool(raw: Mapping[str, Any], name: str, default: bool, label: str) -> bool:
    value = raw.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidInput(label, "must be a boolean")
    return value


def _unbuilt(name: str, value: Any, label: str) -> dict[str, Any]:
    """An issue-10 section: its shape checked, its defaults filled; enabled → NotSupported."""
    if isinstance(value, bool):
        value = {"enabled": value}
    if not isinstance(value, Mapping):
        raise InvalidInput(label, "must be an object")
    enabled = _bool(value, "enabled", False, f"{label}.enabled")
    if enabled:
        raise NotSupported(f"security.{name}: {UNBUILT_REASONS[name]}")
    return {**copy.deepcopy(UNBUILT_DEFAULTS[name]), **value, "enabled": False}


def _pii(value: Any, label: str) -> tuple[dict[str, Any], PiiGuard | None]:
    """`PIIConfig` normalised as its `to_dict()` writes it, and the guard if on."""
    if isinstance(value, bool):
        value = {"enabled": value}
    if not isinstance(value, Mapping):
        raise InvalidInput(label, "must be an object")
    enabled = _bool(value, "enabled", False, f"{label}.enabled")
    types = value.get("types")
    if types is None:
        types = list(PII_TYPES)
    if not isinstance(types, list):
        raise InvalidInput(f"{label}.types", "must be an array")
    for i, t in enumerate(types):
        if t not in PII_TYPES:
            raise InvalidInput(
                f"{label}.types[{i}]",
                f"unknown PII type {t!r}: must be one of {', '.join(PII_TYPES)}",
            )
    action = value.get("action", "redact")
    if action not in PII_ACTIONS:
        raise InvalidInput(f"{label}.action", "must be 'redact', 'block' or 'log_only'")
    rehydrate = _bool(value, "rehydrate_response", True, f"{label}.rehydrate_response")
    domains = parse_domains(value.get("domains"), f"{label}.domains")
    out: dict[str, Any] = {
        "enabled": enabled,
        "types": list(dict.fromkeys(types)),
        "action": action,
        "rehydrate_response": rehydrate,
    }
    if domains is not None:
        out["domains"] = list(domains)
    if not enabled or not types:
        return out, None
    guard = PiiGuard(tuple(dict.fromkeys(types)), action, rehydrate, domains)
    return out, guard


def _content_gate(value: Any, label: str) -> tuple[dict[str, Any], tuple[str, ...] | None]:
    """`ContentGateConfig`: its domains opt hosts into inspection for the content package
    (None or empty: none)."""
    if isinstance(value, bool):
        value = {"enabled": value}
    if not isinstance(value, Mapping):
        raise InvalidInput(label, "must be an object")
    enabled = _bool(value, "enabled", False, f"{label}.enabled")
    domains = parse_domains(value.get("domains"), f"{label}.domains")
    out: dict[str, Any] = {"enabled": enabled}
    if domains is not None:
        out["domains"] = list(domains)
    return out, (domains or None) if enabled else None


def _transformations(value: Any, label: str) -> tuple[TransformRule, ...]:
    if not isinstance(value, list):
        raise InvalidInput(label, "must be an array")
    rules: list[TransformRule] = []
    for i, item in enumerate(value):
        where = f"{label}[{i}]"
        if not isinstance(item, Mapping):
            raise InvalidInput(where, "must be an object")
        for key in ("match", "replace"):
            if item.get(key) is None:
                raise InvalidInput(f"{where}.{key}", "is required")
        direction = item.get("direction")
        # Types are checked by compile_rules, which names the same fields.
        rules.append(
            TransformRule(
                item["match"], item["replace"], "outbound" if direction is None else direction
            )
        )
    compile_rules(rules, label)
    return tuple(rules)


def _invisible_text(value: Any, label: str) -> tuple[dict[str, Any], InvisibleTextGuard | None]:
    """`InvisibleTextConfig` normalised as its `to_dict()` writes it, and the guard if on."""
    if isinstance(value, bool):
        value = {"enabled": value}
    if not isinstance(value, Mapping):
        raise InvalidInput(label, "must be an object")
    enabled = _bool(value, "enabled", False, f"{label}.enabled")
    action = value.get("action", "strip")
    if action not in INVISIBLE_ACTIONS:
        raise InvalidInput(f"{label}.action", "must be 'strip', 'block' or 'log_only'")
    domains = parse_domains(value.get("domains"), f"{label}.domains")
    out: dict[str, Any] = {"enabled": enabled, "action": action}
    if domains is not None:
        out["domains"] = list(domains)
    return out, InvisibleTextGuard(action, domains) if enabled else None


def _audit(value: Any, label: str) -> bool:
    if isinstance(value, bool):
        return value
    if not isinstance(value, Mapping):
        raise InvalidInput(label, "must be a boolean or an object")
    return _bool(value, "enabled", True, f"{label}.enabled")


def _env_security(value: Any, label: str) -> tuple[tuple[str, ...], bool]:
    if not isinstance(value, Mapping):
        raise InvalidInput(label, "must be an object")
    patterns = value.get("mask_patterns")
    if patterns is None:
        patterns = list(DEFAULT_MASK_PATTERNS)
    if not isinstance(patterns, list):
        raise InvalidInput(f"{label}.mask_patterns", "must be an array")
    for i, p in enumerate(patterns):
        if not isinstance(p, str):
            raise InvalidInput(f"{label}.mask_patterns[{i}]", "must be a string")
    auto = _bool(value, "auto_mask_in_audit", True, f"{label}.auto_mask_in_audit")
    return tuple(patterns), auto


def parse_security(raw: Mapping[str, Any] | None, field: str = "security") -> SecuritySpec:
    """Validate a SecurityPolicy JSON object; `field` is where it sits in the request
    (`security.policy_json` at create, "" for a PUT body). Unknown keys are ignored, as the
    reference server does; an absent or null section takes the SDK's default."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise InvalidInput(field or "request body", "must be a JSON object")
    carried = frozenset(k for k in SECTIONS if raw.get(k) is not None)
    policy: dict[str, Any] = {}
    value = raw.get("pii")
    policy["pii"], pii = _pii({} if value is None else value, _label(field, "pii"))
    value = raw.get("injection_defense")
    policy["injection_defense"], injection = parse_injection(
        False if value is None else value, _label(field, "injection_defense")
    )
    value = raw.get("transformations")
    rules = _transformations([] if value is None else value, _label(field, "transformations"))
    policy["transformations"] = [
        {"match": r.match, "replace": r.replace, "direction": r.direction} for r in rules
    ]
    value = raw.get("audit")
    audit = _audit(True if value is None else value, _label(field, "audit"))
    policy["audit"] = {"enabled": audit}
    value = raw.get("env_security")
    patterns, auto = _env_security({} if value is None else value, _label(field, "env_security"))
    policy["env_security"] = {"mask_patterns": list(patterns), "auto_mask_in_audit": auto}
    network = raw.get("network")
    if network is not None and not isinstance(network, Mapping):
        raise InvalidInput(_label(field, "network"), "must be an object")
    invisible: InvisibleTextGuard | None = None
    code_security: CodeSecurityGuard | None = None
    gate: tuple[str, ...] | None = None
    custom: CustomPolicy | None = None
    for name in ("toxicity", "code_security", "invisible_text", "content_gate", "custom_policy"):
        if raw.get(name) is None:
            continue
        label = _label(field, name)
        if name == "invisible_text":
            policy[name], invisible = _invisible_text(raw[name], label)
        elif name == "code_security":
            policy[name], code_security = parse_code_security(raw[name], label)
        elif name == "content_gate":
            policy[name], gate = _content_gate(raw[name], label)
        elif name == "custom_policy":
            value = {"enabled": raw[name]} if isinstance(raw[name], bool) else raw[name]
            section, custom = parse_custom_policy(value, label)
            if section is not None:
                policy[name] = section
        else:
            policy[name] = _unbuilt(name, raw[name], label)
    spec = SecuritySpec(
        transformations=rules,
        audit_enabled=audit,
        mask_patterns=patterns,
        auto_mask_in_audit=auto,
        network=network,
        invisible_text=invisible,
        pii=pii,
        injection=injection,
        code_security=code_security,
        content_gate=gate,
        custom=custom,
        carried=carried,
        policy=policy,
    )
    return _with_pack_guardrails(spec)


def _with_pack_guardrails(spec: SecuritySpec) -> SecuritySpec:
    """The policy_ref pack's guardrails for the sections the sandbox leaves off."""
    ref = spec.custom.policy_ref if spec.custom is not None else None
    if not ref:
        return spec
    rails = find_pack(ref).guardrails
    where = f"governance pack {ref} guardrails"
    changes: dict[str, Any] = {}
    if spec.pii is None and rails.get("pii"):
        changes["pii"] = _pii(dict(rails["pii"]), f"{where}.pii")[1]
    if spec.injection is None and rails.get("injection_defense"):
        changes["injection"] = parse_injection(
            dict(rails["injection_defense"]), f"{where}.injection_defense"
        )[1]
    if spec.invisible_text is None and rails.get("invisible_text"):
        changes["invisible_text"] = _invisible_text(
            dict(rails["invisible_text"]), f"{where}.invisible_text"
        )[1]
    audit = rails.get("audit")
    if isinstance(audit, Mapping) and audit.get("enabled") and not spec.audit_enabled:
        changes["audit_enabled"] = True
    return replace(spec, **changes) if changes else spec


def is_sensitive(name: str, patterns: Sequence[str]) -> bool:
    """The SDK's `EnvSecurityConfig.is_sensitive`: fnmatch of the upper-cased name."""
    return any(fnmatch.fnmatch(name.upper(), p) for p in patterns)


def masked_values(spec: SecuritySpec, envs: Mapping[str, str]) -> tuple[str, ...]:
    """Values of the envs whose names are sensitive, longest first (so a masker replaces a
    value before any shorter one inside it); never empty, never the vault placeholder."""
    if not spec.auto_mask_in_audit:
        return ()
    values = {
        v for k, v in envs.items() if v and v != PLACEHOLDER and is_sensitive(k, spec.mask_patterns)
    }
    return tuple(sorted(values, key=lambda v: (-len(v), v)))


def inspection_policy(
    spec: SecuritySpec | None,
    vault: Sequence[VaultBinding],
    envs: Mapping[str, str],
    settings: Settings,
) -> InspectionPolicy:
    """What the proxy enforces for a sandbox (None: a sandbox created without a policy)."""
    spec = spec or SecuritySpec()
    return InspectionPolicy(
        transformations=spec.transformations,
        vault=tuple(vault),
        audit_enabled=spec.audit_enabled,
        mask_patterns=spec.mask_patterns,
        auto_mask_in_audit=spec.auto_mask_in_audit,
        masked_values=masked_values(spec, envs),
        buffer_limit=int(settings.inspect_buffer_limit_mb * 1024 * 1024),
        vault_plain_http=settings.vault_plain_http,
        invisible_text=spec.invisible_text,
        pii=spec.pii,
        injection=spec.injection,
        code_security=spec.code_security,
        content_gate=spec.content_gate,
        custom=spec.custom,
    )
