"""custom.parse_custom_policy and CustomPolicy.deny, against the real engine (regopy)."""

from __future__ import annotations

import pytest

from declawd.errors import InvalidInput
from declawd.guard.custom import CustomPolicy, Verdict, parse_custom_policy

LABEL = "security.custom_policy"
# The SDK's CustomPolicyConfig.inline_rego docstring example, verbatim.
SDK_EXAMPLE = """deny_command contains msg if {
    input.action.command in {"rm", "dd"}
    msg := "dangerous command blocked"
}
"""


def cmd_input(command: str, *args: str) -> dict[str, object]:
    return {"action": {"type": "command", "command": command, "args": list(args)}}


def build(**raw: object) -> CustomPolicy:
    _, policy = parse_custom_policy({"enabled": True, **raw}, LABEL)
    assert policy is not None
    return policy


def test_sdk_docstring_example_lands_in_cmd_and_denies() -> None:
    policy = build(inline_rego=SDK_EXAMPLE)
    assert policy.packages == frozenset({"declaw.platform.cmd"})
    assert policy.deny("declaw.platform.cmd", cmd_input("rm", "-rf", "x")) == Verdict(
        True, ("dangerous command blocked",)
    )
    assert policy.deny("declaw.platform.cmd", cmd_input("ls")) == Verdict(False)


@pytest.mark.parametrize(
    "source",
    [
        'package declaw.platform.cmd\nimport rego.v1\ndeny contains "no" if input.action.command == "rm"\n',
        'package declaw.platform.cmd\nimport future.keywords.*\ndeny contains "no" if { input.action.command == "rm" }\n',
        'package declaw.platform.cmd\nimport future.keywords.if\nimport future.keywords.contains\ndeny contains "no" if { input.action.command == "rm" }\n',
        'package declaw.platform.cmd\ndeny contains msg if {\n  input.action.command == "rm"\n  msg := "no"\n}\n',
        'package declaw.platform.cmd\ndeny[msg] {\n  input.action.command == "rm"\n  msg := "no"\n}\n',
    ],
    ids=["rego.v1", "future-star", "future-each", "v1-bare", "v0-partial-set"],
)
@pytest.mark.parametrize("ref", [None, "baseline-hardening@v1"])
def test_both_syntaxes_alone_and_with_a_pack(source: str, ref: str | None) -> None:
    policy = build(inline_modules=[source], policy_ref=ref)
    assert policy.deny("declaw.platform.cmd", cmd_input("rm", "x")).messages == ("no",)
    assert not policy.deny("declaw.platform.cmd", cmd_input("ls")).denied


def test_pack_and_user_rules_union() -> None:
    policy = build(inline_rego=SDK_EXAMPLE, policy_ref="baseline-hardening@v1")
    got = policy.deny(
        "declaw.platform.cmd",
        {"action": {"command": "rm", "args": ["-rf", "/"], "command_line": "rm -rf /"}},
    )
    assert got.denied and "dangerous command blocked" in got.messages
    assert any(m.startswith("baseline-hardening@v1 BH-2 cmd.root_delete:") for m in got.messages)
    assert policy.packages == {"declaw.platform.cmd", "declaw.platform.network"}


def test_packages_follow_user_modules() -> None:
    net = 'package declaw.platform.network\nimport rego.v1\ndeny contains "x" if input.action.destination == "a:1"\n'
    policy = build(inline_modules=[net])
    assert policy.packages == {"declaw.platform.network"}
    assert policy.deny("declaw.platform.network", {"action": {"destination": "a:1"}}).denied
    assert policy.deny("declaw.platform.cmd", cmd_input("rm")) == Verdict(False)


def test_normalised_shape_and_disabled() -> None:
    raw = {"enabled": False, "inline_rego": SDK_EXAMPLE, "policy_ref": None, "default_deny": True}
    normalised, policy = parse_custom_policy(raw, LABEL)
    assert policy is None
    assert normalised == {**raw}
    assert parse_custom_policy(None, LABEL) == (None, None)
    assert parse_custom_policy({"enabled": True}, LABEL) == (
        {"enabled": True, "inline_rego": None, "policy_ref": None, "default_deny": False},
        None,
    )


@pytest.mark.parametrize(
    ("raw", "field", "reason"),
    [
        ({"inline_rego": "deny contains msg if {"}, f"{LABEL}.inline_rego", "does not compile"),
        ({"inline_rego": 3}, f"{LABEL}.inline_rego", "must be a string"),
        (
            {"inline_modules": ["package ok\nimport rego.v1\np := 1\n", "package b\np := {"]},
            f"{LABEL}.inline_modules[1]",
            "does not compile",
        ),
        ({"inline_modules": ["p := 1"]}, f"{LABEL}.inline_modules[0]", "package line"),
        ({"inline_modules": "x"}, f"{LABEL}.inline_modules", "list"),
        ({"policy_ref": "x@v9"}, f"{LABEL}.policy_ref", "unknown governance pack policy 'x@v9'"),
        ({"policy_ref": "baseline-hardening"}, f"{LABEL}.policy_ref", "<name>@v<N>"),
        ({"default_deny": "yes"}, f"{LABEL}.default_deny", "boolean"),
        ({"enabled": 1}, f"{LABEL}.enabled", "boolean"),
        ({"bogus": 1}, f"{LABEL}.bogus", "unknown field"),
        (
            {"inline_modules": ["package declaw.packs.lib.cmd\npipe_to_shell := false\n"]},
            f"{LABEL}.inline_modules[0]",
            "reserved",
        ),
    ],
)
def test_validation_names_the_field(raw: dict[str, object], field: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_custom_policy({"enabled": True, **raw}, LABEL)
    assert err.value.field == field
    assert reason in err.value.reason


def test_compile_error_line_is_the_users() -> None:
    with pytest.raises(InvalidInput) as err:
        parse_custom_policy({"enabled": True, "inline_rego": "\n\ndeny contains msg if {"}, LABEL)
    assert "(at line 3:" in err.value.reason


CONFLICT = """package declaw.platform.cmd
import rego.v1
v := 1 if input.action.command == "boom"
v := 2 if input.action.command == "boom"
deny contains "never" if v == 3
"""


@pytest.mark.parametrize("default_deny", [True, False])
def test_default_deny_on_eval_error(default_deny: bool) -> None:
    policy = build(inline_modules=[CONFLICT], default_deny=default_deny)
    verdict = policy.deny("declaw.platform.cmd", cmd_input("boom"))
    assert verdict.error is not None
    assert verdict.denied is default_deny
    assert bool(verdict.messages) is default_deny
    assert policy.deny("declaw.platform.cmd", cmd_input("fine")) == Verdict(False)


SLOW = """package declaw.platform.cmd
import rego.v1
deny contains "slow" if {
    input.action.command == "slow"
    count([x | some x in numbers.range(1, 50000000)]) > 0
}
"""


def test_timeout_is_an_eval_error_under_default_deny() -> None:
    policy = build(inline_rego=SLOW, default_deny=True)
    verdict = policy.deny("declaw.platform.cmd", cmd_input("slow"))
    assert verdict.denied and verdict.error is not None and "timed out" in verdict.error
    # the worker restarts and the policy compiles there again
    assert policy.deny("declaw.platform.cmd", cmd_input("ls")) == Verdict(False)


def test_wire_round_trip_recompiles() -> None:
    policy = build(inline_rego=SDK_EXAMPLE, policy_ref="owasp-agentic@v1", default_deny=True)
    wire = policy.to_wire()
    assert "rego" not in str(type(wire))  # plain JSON data
    again = CustomPolicy.from_wire(wire)
    assert again == policy
    assert again.deny("declaw.platform.cmd", cmd_input("dd")).messages == (
        "dangerous command blocked",
    )
