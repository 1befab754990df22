"""The command gate of a custom policy: every simple command of a line against
`declaw.platform.cmd`.

`check_command(policy, line, ...)` splits the line with `shell.parse` (wrappers unwrapped, both
wrapper and wrapped reported) and evaluates one input per distinct simple command:

    {"action": {"type": "command", "command": <argv0 base name>, "args": [argv1..],
                "command_line": <the whole line as submitted>, "argv0", "dynamic", "via",
                "parse_error", "cwd", "env_keys"},
     "sandbox": {...}, "user": <user>}

`command`, `args` and `command_line` are the documented pack contract (docs/governance.md);
the rest are additions a user's Rego may read. `check_argv` does the same for a process
started from an argv (PTY, stdio): its `command_line` is the string a `<shell> -c STR` argv
hands the shell, else the argv shell-quoted.

Invariant: the verdict is the union of every command's denials; an engine failure on any
command, or a line the parser could not cover fully (over shell.MAX_LINE or another bound),
sets `error` and denies exactly when the policy says `default_deny`. Environment VALUES never
reach the policy, only their names.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from declawd.guard import shell
from declawd.guard.custom import CustomPolicy, Verdict

PACKAGE = "declaw.platform.cmd"


def command_input(
    cmd: shell.SimpleCommand,
    line: str,
    *,
    sandbox: Mapping[str, Any],
    user: str,
    cwd: str | None = None,
    env_keys: Iterable[str] = (),
    parse_error: bool = False,
) -> dict[str, Any]:
    """The Rego input for one simple command of `line`."""
    return {
        "action": {
            "type": "command",
            "command": cmd.command,
            "args": list(cmd.args),
            "command_line": line,
            "argv0": cmd.argv0,
            "dynamic": cmd.dynamic,
            "via": list(cmd.via),
            "parse_error": parse_error,
            "cwd": cwd,
            "env_keys": sorted(env_keys),
        },
        "sandbox": dict(sandbox),
        "user": user,
    }


def _check(
    policy: CustomPolicy,
    parsed: shell.ParsedLine,
    line: str,
    sandbox: Mapping[str, Any],
    user: str,
    cwd: str | None,
    env_keys: Iterable[str],
) -> Verdict:
    if not policy.has(PACKAGE):
        return Verdict(False)
    keys = sorted(env_keys)
    messages: set[str] = set()
    errors: list[str] = []
    if parsed.truncated:
        errors.append("the command line is too large to check every command")
    for cmd in parsed.commands:
        verdict = policy.deny(
            PACKAGE,
            command_input(
                cmd,
                line,
                sandbox=sandbox,
                user=user,
                cwd=cwd,
                env_keys=keys,
                parse_error=not parsed.exact,
            ),
        )
        if verdict.error is not None:
            errors.append(verdict.error)
            if "timed out" in verdict.error:
                break  # each further query could take the whole timeout again
        else:
            messages.update(verdict.messages)
    if messages:
        return Verdict(True, tuple(sorted(messages)), "; ".join(errors) or None)
    if errors:
        return policy.failed("; ".join(dict.fromkeys(errors)))
    return Verdict(False)


def argv_line(argv: Sequence[str]) -> str:
    """The command line an argv stands for (see check_argv)."""
    words = [str(a) for a in argv]
    if words and shell.base_name(words[0]) in shell.SHELLS:
        inner = shell.shell_string(words[1:])
        if inner is not None:
            return inner
    return shlex.join(words)


def check_command(
    policy: CustomPolicy,
    line: str,
    *,
    sandbox: Mapping[str, Any],
    user: str,
    cwd: str | None = None,
    env_keys: Iterable[str] = (),
) -> Verdict:
    """Every simple command of `line` (as a shell would run it) against declaw.platform.cmd.
    The line is parsed in the worker process; one that kills or hangs the parser is denied
    whatever `default_deny` says (it is an attack on the gate, not a policy failure)."""
    if not policy.has(PACKAGE):
        return Verdict(False)
    try:
        parsed = shell.parse_isolated(line)
    except shell.ParseCrashed as exc:
        return _unparsable(str(exc))
    return _check(policy, parsed, line, sandbox, user, cwd, env_keys)


def _unparsable(why: str) -> Verdict:
    return Verdict(True, ("the command line could not be parsed safely",), error=why)


def check_argv(
    policy: CustomPolicy,
    argv: Sequence[str],
    *,
    sandbox: Mapping[str, Any],
    user: str,
    cwd: str | None = None,
    env_keys: Iterable[str] = (),
) -> Verdict:
    """The same for a process started from `argv` (no shell parses it; `bash -c` inside does).

    `command_line` is STR for `<shell> [opts] -c STR` (the line that shell is handed, as a
    process API's `bash -l -c <cmd>` submits it), else the argv shell-quoted.
    """
    if not policy.has(PACKAGE):
        return Verdict(False)
    line = argv_line(argv)
    try:
        parsed = shell.parse_argv_isolated(argv)
    except shell.ParseCrashed as exc:
        return _unparsable(str(exc))
    return _check(policy, parsed, line, sandbox, user, cwd, env_keys)


__all__ = ["PACKAGE", "argv_line", "check_argv", "check_command", "command_input"]
