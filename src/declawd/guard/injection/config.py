"""`InjectionDefenseConfig` (the SDK's `injection_defense` section) validated into an
`InjectionGuard`, the frozen settings the gateway's injection stage runs with.

`parse_injection` names every wrong field under the caller's label and returns the section
normalised as the SDK's `to_dict()` writes it (the legacy action `audit` read as
`log_only`). Invariant: a guard exists only for an enabled section, and it scans a host only
when `domains` lists it: None or empty domains scan no host at all (the SDK's opt-in).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from declawd.errors import InvalidInput
from declawd.guard.injection.modes import MODES, SENSITIVITIES, Mode, resolve
from declawd.inspect.model import domain_listed, parse_domains

Action = Literal["block", "log_only"]
Sensitivity = Literal["low", "medium", "high"]
ACTIONS: tuple[str, ...] = ("block", "log_only")
_LEGACY_ACTIONS = {"audit": "log_only"}
MAX_POLICY = 4000  # characters of the judge's agent policy


@dataclass(frozen=True)
class JudgeSettings:
    """`InjectionJudgeConfig`: ask the operator's judge (`always`: every scanned text, else
    only texts in the grey band), telling it what the agent may do (`policy`)."""

    enabled: bool = False
    always: bool = False
    policy: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"enabled": self.enabled}
        if self.always:
            out["always"] = True
        if self.policy:
            out["policy"] = self.policy
        return out


@dataclass(frozen=True)
class InjectionGuard:
    """An enabled injection defense."""

    action: Action = "log_only"
    sensitivity: Sensitivity = "medium"
    threshold: float = 0.95
    domains: tuple[str, ...] | None = None
    mode: str | None = None
    judge: JudgeSettings | None = None

    @property
    def profile(self) -> Mode:
        return resolve(self.mode, self.sensitivity)

    @property
    def judge_enabled(self) -> bool:
        return self.judge is not None and self.judge.enabled

    def applies_to(self, host: str | None) -> bool:
        """Opt-in per domain: no domains, no host."""
        return bool(self.domains) and domain_listed(self.domains, host)

    def to_wire(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "sensitivity": self.sensitivity,
            "threshold": self.threshold,
            "domains": None if self.domains is None else list(self.domains),
            "mode": self.mode,
            "judge": None if self.judge is None else self.judge.to_dict(),
        }

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any] | None) -> InjectionGuard | None:
        if not raw:
            return None
        domains = raw.get("domains")
        judge = raw.get("judge")
        return cls(
            action=cast(Action, raw.get("action") or "log_only"),
            sensitivity=cast(Sensitivity, raw.get("sensitivity") or "medium"),
            threshold=float(raw.get("threshold", 0.95)),
            domains=None if domains is None else tuple(str(d) for d in domains),
            mode=raw.get("mode") or None,
            judge=None
            if judge is None
            else JudgeSettings(
                enabled=bool(judge.get("enabled")),
                always=bool(judge.get("always")),
                policy=str(judge.get("policy") or ""),
            ),
        )


def _bool(raw: Mapping[str, Any], name: str, default: bool, label: str) -> bool:
    value = raw.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidInput(f"{label}.{name}", "must be a boolean")
    return value


def _judge(value: Any, label: str) -> JudgeSettings | None:
    if value is None:
        return None
    if isinstance(value, bool):
        value = {"enabled": value}
    if not isinstance(value, Mapping):
        raise InvalidInput(label, "must be an object")
    policy = value.get("policy")
    if policy is None:
        policy = ""
    if not isinstance(policy, str):
        raise InvalidInput(f"{label}.policy", "must be a string")
    if len(policy) > MAX_POLICY:
        raise InvalidInput(f"{label}.policy", f"must be at most {MAX_POLICY} characters")
    return JudgeSettings(
        enabled=_bool(value, "enabled", False, label),
        always=_bool(value, "always", False, label),
        policy=policy,
    )


def parse_injection(
    raw: Mapping[str, Any] | bool | None, label: str
) -> tuple[dict[str, Any], InjectionGuard | None]:
    """Validate an `injection_defense` section (a bool is read as `{"enabled": ...}`).
    Returns it normalised in the SDK's shape, and the guard when it is enabled."""
    if raw is None:
        raw = {}
    if isinstance(raw, bool):
        raw = {"enabled": raw}
    if not isinstance(raw, Mapping):
        raise InvalidInput(label, "must be an object")
    enabled = _bool(raw, "enabled", False, label)
    action = raw.get("action", "log_only")
    action = _LEGACY_ACTIONS.get(action, action) if isinstance(action, str) else action
    if action not in ACTIONS:
        raise InvalidInput(f"{label}.action", "must be 'block' or 'log_only'")
    sensitivity = raw.get("sensitivity", "medium")
    if sensitivity not in SENSITIVITIES:
        raise InvalidInput(f"{label}.sensitivity", "must be 'low', 'medium' or 'high'")
    threshold = raw.get("threshold", 0.95)
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not math.isfinite(threshold)
        or not 0.0 <= threshold <= 1.0
    ):
        raise InvalidInput(f"{label}.threshold", "must be between 0 and 1")
    domains = parse_domains(raw.get("domains"), f"{label}.domains")
    judge = _judge(raw.get("judge"), f"{label}.judge")
    mode = raw.get("injection_mode")
    if mode is not None and not isinstance(mode, str):
        raise InvalidInput(f"{label}.injection_mode", "must be a string")
    if mode and mode not in MODES:
        raise InvalidInput(f"{label}.injection_mode", f"must be one of {', '.join(MODES)}")
    out: dict[str, Any] = {
        "enabled": enabled,
        "action": action,
        "sensitivity": sensitivity,
        "threshold": float(threshold),
    }
    if domains:
        out["domains"] = list(domains)
    if judge is not None:
        out["judge"] = judge.to_dict()
    if mode is not None:
        out["injection_mode"] = mode
    if not enabled:
        return out, None
    guard = InjectionGuard(
        action=cast(Action, action),
        sensitivity=cast(Sensitivity, sensitivity),
        threshold=float(threshold),
        domains=domains or None,
        mode=mode or None,
        judge=judge,
    )
    return out, guard
