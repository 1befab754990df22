"""The Rego wrapper: compile errors carry the engine's message and place, both Rego syntaxes
evaluate, and a deny set comes back as its messages."""

from __future__ import annotations

import pytest

from declawd.errors import InvalidInput
from declawd.guard.rego import RegoEvalError, compile_policy, package_of

V1 = """package declaw.platform.cmd

deny contains msg if {
    input.action.command in {"rm", "dd"}
    msg := sprintf("dangerous command blocked: %s", [input.action.command])
}
"""

FUTURE = """package declaw.platform.cmd

import future.keywords.contains
import future.keywords.if
import future.keywords.in

deny contains msg if {
    some a in input.action.args
    a == "--force"
    msg := "no --force"
}
"""

OLD_SET = """package declaw.platform.cmd

deny[msg] {
    input.action.command == "shutdown"
    msg := "no shutdown"
}
"""


def cmd(command: str, *args: str) -> dict[str, object]:
    return {"action": {"command": command, "args": list(args)}}


def test_v1_syntax_evaluates_and_returns_the_messages() -> None:
    policy = compile_policy({"p.rego": V1})
    assert policy.deny("declaw.platform.cmd", cmd("rm", "-rf", "x")) == [
        "dangerous command blocked: rm"
    ]
    assert policy.deny("declaw.platform.cmd", cmd("ls", "-la")) == []


def test_future_keywords_syntax_evaluates() -> None:
    policy = compile_policy({"p.rego": FUTURE})
    assert policy.deny("declaw.platform.cmd", cmd("git", "push", "--force")) == ["no --force"]
    assert policy.deny("declaw.platform.cmd", cmd("git", "push")) == []


def test_old_partial_set_spelling_still_gives_its_messages() -> None:
    policy = compile_policy({"p.rego": OLD_SET})
    assert policy.deny("declaw.platform.cmd", cmd("shutdown", "now")) == ["no shutdown"]


def test_modules_of_one_package_add_to_one_deny_set() -> None:
    policy = compile_policy({"a.rego": V1, "b.rego": FUTURE})
    assert sorted(policy.deny("declaw.platform.cmd", cmd("rm", "--force"))) == [
        "dangerous command blocked: rm",
        "no --force",
    ]
    assert policy.packages == {"declaw.platform.cmd"}


def test_a_package_without_deny_or_an_unknown_package_denies_nothing() -> None:
    policy = compile_policy({"p.rego": "package declaw.platform.network\n\nallow := true\n"})
    assert policy.deny("declaw.platform.network", {"action": {}}) == []
    assert policy.deny("declaw.platform.cmd", cmd("rm")) == []


def test_the_rule_name_can_be_another_deny_set() -> None:
    src = (
        'package declaw.platform.cmd\n\ndeny_command contains "x" if input.action.command == "dd"\n'
    )
    policy = compile_policy({"p.rego": src})
    assert policy.deny("declaw.platform.cmd", cmd("dd"), rule="deny_command") == ["x"]
    assert policy.deny("declaw.platform.cmd", cmd("dd")) == []


def test_a_syntax_error_is_invalid_input_with_the_engines_message_and_place() -> None:
    src = "package declaw.platform.cmd\n\ndeny contains msg if {\n  msg := \n}\n"
    with pytest.raises(InvalidInput) as caught:
        compile_policy({"inline_rego": src}, field="custom_policy.inline_rego")
    err = caught.value
    assert err.field == "custom_policy.inline_rego"
    assert "Invalid assignment operator" in err.reason
    assert "inline_rego:4:" in err.reason


def test_recursion_is_refused_at_compile_time() -> None:
    src = 'package x\n\np := q\n\nq := p\n\ndeny contains "a" if p\n'
    with pytest.raises(InvalidInput, match="Recursion"):
        compile_policy({"r.rego": src})


def test_a_module_without_a_package_line_is_refused() -> None:
    with pytest.raises(InvalidInput, match="no package line"):
        compile_policy({"m.rego": 'deny contains "x" if true\n'})
    with pytest.raises(InvalidInput, match="no Rego module"):
        compile_policy({})


def test_package_of_reads_the_package_line() -> None:
    assert package_of("# comment\npackage declaw.platform.content\n") == "declaw.platform.content"
    assert package_of("# package not.this\ndeny := 1\n") is None


def test_a_deny_that_is_not_a_set_is_an_evaluation_error() -> None:
    policy = compile_policy({"p.rego": "package x\n\ndeny := 3\n"})
    with pytest.raises(RegoEvalError, match="set of messages"):
        policy.deny("x", {})


def test_the_engine_runs_in_its_own_process_so_re2_is_unharmed() -> None:
    """rego-cpp's own RE2 and google-re2 corrupt each other's heap in one process (this
    used to abort): the engine lives in the worker, and this process only ever loads re2."""
    import sys

    import re2

    policy = compile_policy(
        {"m.rego": 'package x\nimport rego.v1\ndeny contains "a" if { input.a == 1 }\n'}
    )
    assert policy.deny("x", {"a": 1}) == ["a"]
    assert "regopy" not in sys.modules
    assert re2.compile("(?s)hello-out").search("say hello-out") is not None


def test_a_query_past_its_time_kills_the_worker_and_the_next_one_recompiles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from declawd.guard import rego

    policy = compile_policy(
        {"m.rego": 'package x\nimport rego.v1\ndeny contains "b" if { input.b }\n'}
    )
    monkeypatch.setattr(rego, "EVAL_TIMEOUT_S", 0.0)
    with pytest.raises(rego.RegoEvalError, match="timed out"):
        policy.deny("x", {"b": True})
    monkeypatch.setattr(rego, "EVAL_TIMEOUT_S", 5.0)
    assert policy.deny("x", {"b": True}) == ["b"]  # a new worker, the policy compiled again
