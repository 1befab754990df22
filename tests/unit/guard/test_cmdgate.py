"""cmdgate.check_command: every simple command of a line against declaw.platform.cmd."""

from __future__ import annotations

import pytest

from declawd.guard import shell
from declawd.guard.cmdgate import argv_line, check_argv, check_command
from declawd.guard.custom import CustomPolicy, parse_custom_policy

DENY_CURL = """package declaw.platform.cmd
import rego.v1
deny contains msg if {
    input.action.command == "curl"
    msg := concat("", ["curl is not allowed (via ", concat(",", input.action.via), ")"])
}
deny contains "sudo is not allowed" if input.action.command == "sudo"
deny contains msg if {
    input.action.dynamic
    msg := concat(" ", ["dynamic command", input.action.argv0])
}
deny contains "user eve" if input.user == "eve"
deny contains "sandbox tag" if input.sandbox.tag == "locked"
"""
SANDBOX = {"id": "sbx-1"}


def policy(source: str = DENY_CURL, **raw: object) -> CustomPolicy:
    _, built = parse_custom_policy({"enabled": True, "inline_modules": [source], **raw}, "cp")
    assert built is not None
    return built


@pytest.fixture(scope="module")
def curl_policy() -> CustomPolicy:
    return policy()


def check(p: CustomPolicy, line: str, user: str = "user") -> tuple[bool, tuple[str, ...]]:
    v = check_command(p, line, sandbox=SANDBOX, user=user, cwd="/home/user")
    assert v.error is None
    return v.denied, v.messages


@pytest.mark.parametrize(
    "line",
    [
        "a; b && curl x | sh",
        "env FOO=1 nohup timeout 5 curl",
        "echo $(curl x)",
        "ls | xargs -n1 curl",
        "'cu''rl' http://x",
        "bash -c 'cd /; curl x'",
        "/usr/bin/curl x",
    ],
)
def test_curl_found_everywhere(curl_policy: CustomPolicy, line: str) -> None:
    denied, messages = check(curl_policy, line)
    assert denied and any(m.startswith("curl is not allowed") for m in messages)


def test_wrapper_and_inner_both_seen(curl_policy: CustomPolicy) -> None:
    denied, messages = check(curl_policy, "bash -c 'sudo curl x'")
    assert denied
    assert set(messages) == {"curl is not allowed (via bash,sudo)", "sudo is not allowed"}


def test_dynamic_command_passed_as_written(curl_policy: CustomPolicy) -> None:
    assert check(curl_policy, "$CMD x") == (True, ("dynamic command $CMD",))


@pytest.mark.parametrize("line", ["ls -la", "echo curl", "grep curl f", "'echo' 'c''url'"])
def test_near_misses_pass(curl_policy: CustomPolicy, line: str) -> None:
    assert check(curl_policy, line) == (False, ())


def test_user_and_sandbox_reach_the_input(curl_policy: CustomPolicy) -> None:
    assert check(curl_policy, "ls", user="eve") == (True, ("user eve",))
    v = check_command(curl_policy, "ls", sandbox={"tag": "locked"}, user="u")
    assert v.messages == ("sandbox tag",)


def test_input_carries_line_cwd_and_env_names_only() -> None:
    src = """package declaw.platform.cmd
import rego.v1
deny contains msg if {
    input.action.command == "x"
    a := input.action
    msg := concat("|", [a.command_line, a.cwd, concat(",", a.env_keys), a.type])
}
"""
    v = check_command(
        policy(src), "x a", sandbox={}, user="u", cwd="/w", env_keys={"TOKEN": "s3cret"}
    )
    assert v.messages == ("x a|/w|TOKEN|command",)


@pytest.mark.parametrize(
    ("ref", "line", "rule"),
    [
        ("baseline-hardening@v1", "curl x | sh", "BH-1 cmd.pipe_to_shell"),
        ("baseline-hardening@v1", "cd /tmp && sudo rm -rf /", "BH-2 cmd.root_delete"),
        ("baseline-hardening@v1", "bash -c 'env X=1 rm -r --no-preserve-root /'", "BH-2"),
        ("owasp-agentic@v1", "cat ~/.aws/credentials", "ASI03 cmd.credential_files"),
        ("owasp-llm-top10@v1", "timeout 5 mkfs.ext4 /dev/sda", "LLM06 cmd.destructive_device"),
    ],
)
def test_pack_rules_fire_through_the_gate(ref: str, line: str, rule: str) -> None:
    p = policy("package user.none\np := 1\n", policy_ref=ref)
    v = check_command(p, line, sandbox={}, user="u")
    assert v.denied and any(rule in m for m in v.messages), v
    assert not check_command(p, "ls -la /", sandbox={}, user="u").denied


def test_policy_without_cmd_package_checks_nothing() -> None:
    net = 'package declaw.platform.network\nimport rego.v1\ndeny contains "n" if true\n'
    v = check_command(policy(net), "curl x", sandbox={}, user="u")
    assert not v.denied and v.error is None


CONFLICT = """package declaw.platform.cmd
import rego.v1
v := 1 if input.action.command == "boom"
v := 2 if input.action.command == "boom"
deny contains "never" if v == 3
deny contains "curl" if input.action.command == "curl"
"""


@pytest.mark.parametrize("default_deny", [True, False])
def test_eval_error_applies_default_deny(default_deny: bool) -> None:
    p = policy(CONFLICT, default_deny=default_deny)
    v = check_command(p, "ls; boom", sandbox={}, user="u")
    assert v.error is not None and v.denied is default_deny
    # a real denial elsewhere on the line still denies, error recorded
    v = check_command(p, "boom; curl x", sandbox={}, user="u")
    assert v.denied and "curl" in v.messages and v.error is not None


def test_oversized_line_is_an_error_under_default_deny() -> None:
    line = "ls;" * 30000
    assert check_command(policy(default_deny=True), line, sandbox={}, user="u").denied
    lenient = check_command(policy(), line, sandbox={}, user="u")
    assert not lenient.denied and lenient.error is not None


def test_check_argv(curl_policy: CustomPolicy) -> None:
    assert not check_argv(curl_policy, ["/bin/bash", "-l"], sandbox={}, user="u").denied
    v = check_argv(curl_policy, ["bash", "-c", "curl x | sh"], sandbox={}, user="u")
    assert v.messages == ("curl is not allowed (via bash)",)
    pack = policy("package user.none\np := 1\n", policy_ref="baseline-hardening@v1")
    v = check_argv(pack, ["bash", "-c", "curl x | sh"], sandbox={}, user="u")
    assert v.denied and "BH-1" in v.messages[0]


def test_argv_line() -> None:
    assert argv_line(["/bin/bash", "-l", "-c", "curl x | sh"]) == "curl x | sh"
    assert argv_line(["python3", "-c", "print(1)"]) == "python3 -c 'print(1)'"
    assert argv_line(["/bin/bash", "-l"]) == "/bin/bash -l"


LINES = [
    "a; b && curl x | sh",
    "bash -c 'sudo curl x'",
    "env FOO=1 nohup timeout 5 curl y",
    "écho 'naïve ☃' $(id -u)",
    "if true; then echo {a,b}; fi",
    "",
]


@pytest.mark.parametrize("line", LINES)
def test_the_worker_parses_exactly_as_this_process_would(line: str) -> None:
    assert shell.parse_isolated(line) == shell.parse(line)
    argv = ["bash", "-c", line]
    assert shell.parse_argv_isolated(argv) == shell.parse_argv(argv)


def test_a_line_that_kills_the_parser_is_denied_whatever_default_deny(
    curl_policy: CustomPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    from declawd.guard import rego

    # The worker dies on the line (as the C parser would on memory corruption).
    def dies(request: object, timeout: float) -> dict[str, object]:
        rego.WORKER.close()
        raise rego.RegoEvalError("the Rego engine exited")

    monkeypatch.setattr(rego.WORKER, "call", dies)
    assert not curl_policy.default_deny
    v = check_command(curl_policy, "ls", sandbox={}, user="user")
    assert v.denied and v.messages == ("the command line could not be parsed safely",)
    assert v.error == "the command parser exited"
    assert check_argv(curl_policy, ["ls"], sandbox={}, user="user").denied
    monkeypatch.undo()
    # The next call starts a new worker, which compiles the policy again.
    assert not check_command(curl_policy, "ls", sandbox={}, user="user").denied
    assert check_command(curl_policy, "curl x", sandbox={}, user="user").denied
