"""parse_injection: validation, the SDK's shape, legacy action, the guard and its wire form."""

from __future__ import annotations

from typing import Any

import pytest

from declawd.errors import InvalidInput
from declawd.guard.injection.config import InjectionGuard, JudgeSettings, parse_injection
from declawd.guard.injection.modes import MODES, PROFILES

L = "security.injection_defense"


def test_defaults_normalise_to_the_sdk_shape_and_no_guard() -> None:
    out, guard = parse_injection({}, L)
    assert out == {
        "enabled": False,
        "action": "log_only",
        "sensitivity": "medium",
        "threshold": 0.95,
    }
    assert guard is None
    assert parse_injection(False, L) == (out, None)


def test_full_section_round_trips_like_the_sdk() -> None:
    declaw = pytest.importorskip("declaw.security.policy")
    policy = declaw.SecurityPolicy.full_injection_defense(
        domains=["api.openai.com"], agent_policy="Summarise only."
    )
    sent = policy.to_dict()["injection_defense"]
    out, guard = parse_injection(sent, L)
    assert out == sent
    assert guard == InjectionGuard(
        action="block",
        threshold=0.95,
        domains=("api.openai.com",),
        mode="balanced",
        judge=JudgeSettings(enabled=True, policy="Summarise only."),
    )


def test_legacy_audit_reads_log_only() -> None:
    out, guard = parse_injection({"enabled": True, "action": "audit", "domains": ["x.example"]}, L)
    assert out["action"] == "log_only" and guard is not None and guard.action == "log_only"


@pytest.mark.parametrize(
    ("raw", "field", "reason"),
    [
        ({"threshold": 1.5}, "threshold", "must be between 0 and 1"),
        ({"threshold": -0.1}, "threshold", "must be between 0 and 1"),
        ({"threshold": True}, "threshold", "must be between 0 and 1"),
        ({"threshold": "0.9"}, "threshold", "must be between 0 and 1"),
        ({"action": "drop"}, "action", "must be 'block' or 'log_only'"),
        ({"sensitivity": "extreme"}, "sensitivity", "must be 'low', 'medium' or 'high'"),
        ({"enabled": "yes"}, "enabled", "must be a boolean"),
        ({"judge": {"enabled": 1}}, "judge.enabled", "must be a boolean"),
        ({"judge": {"always": "no"}}, "judge.always", "must be a boolean"),
        ({"judge": {"policy": 3}}, "judge.policy", "must be a string"),
        ({"judge": []}, "judge", "must be an object"),
        ({"injection_mode": "paranoid"}, "injection_mode", "must be one of " + ", ".join(MODES)),
        ({"domains": "x.example"}, "domains", "must be an array of host names"),
        ({"domains": ["ok.example", ""]}, "domains[1]", "must be a non-empty string"),
        ({"domains": ["~(bad"]}, "domains[0]", None),
    ],
)
def test_errors_name_the_field(raw: dict[str, Any], field: str, reason: str | None) -> None:
    with pytest.raises(InvalidInput) as e:
        parse_injection({"enabled": True, **raw}, L)
    assert e.value.field == f"{L}.{field}"
    if reason is not None:
        assert e.value.reason == reason


def test_not_an_object() -> None:
    with pytest.raises(InvalidInput) as e:
        parse_injection([], L)  # type: ignore[arg-type]
    assert e.value.field == L


def test_modes_are_the_sdks_and_empty_mode_is_default() -> None:
    assert MODES == ("strict", "balanced", "permissive", "agentic-tool", "data-egress-sensitive")
    assert set(PROFILES) == set(MODES)
    out, guard = parse_injection({"enabled": True, "injection_mode": ""}, L)
    assert out["injection_mode"] == "" and guard is not None and guard.mode is None


def test_domains_opt_in() -> None:
    _, none = parse_injection({"enabled": True}, L)
    _, empty = parse_injection({"enabled": True, "domains": []}, L)
    _, some = parse_injection({"enabled": True, "domains": ["*.openai.com", "~api\\.x\\.io"]}, L)
    assert none is not None and not none.applies_to("api.openai.com")
    assert empty is not None and not empty.applies_to("api.openai.com")
    assert some is not None and some.applies_to("api.openai.com") and some.applies_to("api.x.io")
    assert not some.applies_to("example.com") and not some.applies_to(None)


def test_wire_round_trip() -> None:
    g = InjectionGuard(
        "block", "high", 0.8, ("a.example",), "strict", JudgeSettings(True, True, "p")
    )
    assert InjectionGuard.from_wire(g.to_wire()) == g
    assert InjectionGuard.from_wire(InjectionGuard().to_wire()) == InjectionGuard()
    assert InjectionGuard.from_wire(None) is None
