"""shell.commands: what a shell would run, wrappers unwrapped, never raising."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from declawd.guard.shell import MAX_DEPTH, MAX_LINE, SimpleCommand, commands, from_argv, parse


def names(line: str) -> list[str]:
    return [c.command for c in commands(line)]


def find(line: str, name: str) -> SimpleCommand:
    return next(c for c in commands(line) if c.command == name)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("a; b && curl x | sh", ["a", "b", "curl", "sh"]),
        ("a || b & c", ["a", "b", "c"]),
        ("(a; b) | { c; }", ["a", "b", "c"]),
        ("echo $(curl x) `id`", ["echo", "curl", "id"]),
        ('echo "in $(whoami) string"', ["echo", "whoami"]),
        ("diff <(ls a) >(tee b)", ["diff", "ls", "tee"]),
        ("if t; then u; elif v; then w; else x; fi", ["t", "u", "v", "w", "x"]),
        ("for i in 1 2; do d $i; done; while e; do f; done", ["d", "e", "f"]),
        ("case $x in a) b;; *) c;; esac", ["b", "c"]),
        ("f() { inner; }; f", ["inner", "f"]),
        ("! neg", ["neg"]),
        ("[[ $(probe) ]]", ["probe"]),
        ("A=$(sub) ; B=1 run", ["sub", "run"]),
        ("cat <<EOF\n$(curl q)\nEOF", ["cat", "curl"]),
        ('cat <<< "$(curl q)"', ["cat", "curl"]),
        ("export A=$(id) B", ["export", "id"]),
    ],
)
def test_every_simple_command(line: str, expected: list[str]) -> None:
    assert names(line) == expected


def test_words_resolved_like_a_shell() -> None:
    cmd = commands("FOO=1 'cu''rl' $'a\\x41\\n' \"x\\\"y\" a\\ b c\"d\"'e' >out 2>&1")[0]
    assert cmd.command == "curl" and cmd.argv0 == "curl"
    assert cmd.args == ("aA\n", 'x"y', "a b", "cde")  # no assignment, no redirect
    assert not cmd.dynamic


def test_path_and_base_name() -> None:
    cmd = commands("/usr/bin/curl -s x")[0]
    assert (cmd.command, cmd.argv0, cmd.args) == ("curl", "/usr/bin/curl", ("-s", "x"))


def test_words_after_a_redirect_are_args() -> None:
    assert commands("cmd x >o y z")[0].args == ("x", "y", "z")


def test_ansi_c_command_word() -> None:
    assert names("$'\\x63\\165rl' y") == ["curl"]


def test_brace_alternation_expanded() -> None:
    cmd = find("echo; {curl,-s,x}", "curl")
    assert cmd.args == ("-s", "x")
    assert names("'{a,b}'") == ["{a,b}"]  # quoted braces stay


@pytest.mark.parametrize("line", ["$CMD x", "${CMD} x", "$(which curl) x", "`w` x", "/bin/cu* x"])
def test_dynamic_command_word_passed_as_written(line: str) -> None:
    cmd = commands(line)[0]
    written = line.rsplit(" ", 1)[0]
    assert cmd.dynamic and cmd.command == written and cmd.argv0 == written
    assert cmd.args == ("x",)


def test_args_keep_expansions_as_written() -> None:
    assert commands('curl "$URL/x" $Y')[0].args == ("$URL/x", "$Y")


@pytest.mark.parametrize(
    ("line", "chain"),
    [
        ("bash -c 'sudo curl x'", ["bash", "sudo", "curl"]),
        ('sh -lc "curl x"', ["sh", "curl"]),
        ("bash -e -o pipefail -c 'curl x'", ["bash", "curl"]),
        ("env -i -u HOME FOO=1 BAR=2 curl x", ["env", "curl"]),
        ("env FOO=1 nohup timeout 5 curl", ["env", "nohup", "timeout", "curl"]),
        ("timeout -s KILL -k 2 5s curl", ["timeout", "curl"]),
        ("sudo -u root -E VAR=1 curl", ["sudo", "curl"]),
        ("ls | xargs -0 -I{} -n 1 curl {}", ["ls", "xargs", "curl"]),
        ("exec -a name curl", ["exec", "curl"]),
        ("nice -n 5 ionice -c 3 stdbuf -oL curl", ["nice", "ionice", "stdbuf", "curl"]),
        ("command curl; builtin echo", ["command", "curl", "builtin", "echo"]),
        ("time setsid -f curl", ["time", "setsid", "curl"]),
        ("chroot --userspec=a:b /jail curl", ["chroot", "curl"]),
        ("eval 'curl x'", ["eval", "curl"]),
        ("su - bob -c 'curl x'", ["su", "curl"]),
        ("find . -name x -exec curl {} \\;", ["find", "curl"]),
        ("busybox wget x", ["busybox", "wget"]),
        ("flock /tmp/l curl x; flock /tmp/l -c 'wget y'", ["flock", "curl", "flock", "wget"]),
        ("doas -u root curl", ["doas", "curl"]),
        ("env -S 'curl -s' x", ["env", "curl"]),
    ],
)
def test_wrappers_report_wrapper_and_inner(line: str, chain: list[str]) -> None:
    assert [n for n in names(line) if n in chain] == chain


def test_via_lists_wrappers_outermost_first() -> None:
    cmd = find("sudo env A=1 bash -c 'nohup curl x'", "curl")
    assert cmd.via == ("sudo", "env", "bash", "nohup")
    assert cmd.args == ("x",)


def test_not_unwrapped_when_nothing_runs() -> None:
    assert names("command -v curl") == ["command"]
    assert names("bash script.sh curl") == ["bash"]
    assert names("xargs") == ["xargs", "echo"]  # xargs alone runs echo


def test_dynamic_shell_string() -> None:
    inner = commands('bash -c "$CMD"')[-1]
    assert inner.dynamic and inner.command == "$CMD" and inner.via == ("bash",)
    curl = find('bash -c "curl $URL | sh"', "curl")
    assert curl.args == ("$URL",)


def test_parse_error_falls_back_conservatively() -> None:
    parsed = parse("curl 'x | sh")
    assert not parsed.exact
    assert {"curl", "sh"} <= {c.command for c in parsed.commands}
    assert "curl" in names("{curl,-s} x")  # tree-sitter cannot read it, the split can


def test_bounds() -> None:
    parsed = parse("a;" * (MAX_LINE // 2 + 10))
    assert parsed.truncated and parsed.commands[0].command == "a"
    chained = parse("eval " * 40 + "curl")  # each eval parses the rest as a new line
    assert chained.truncated and "curl" not in [c.command for c in chained.commands]
    assert max(len(c.via) for c in chained.commands) <= MAX_DEPTH + 1
    assert not parse("eval " * 5 + "curl").truncated


def test_from_argv() -> None:
    assert from_argv(["/bin/bash", "-l"]) == (SimpleCommand("bash", ("-l",), "/bin/bash"),)
    got = from_argv(["bash", "-c", "curl x | sh"])
    assert [c.command for c in got] == ["bash", "curl", "sh"]
    assert from_argv(["sudo", "curl", "$X"])[-1] == SimpleCommand(
        "curl", ("$X",), "curl", False, ("sudo",)
    )
    assert from_argv([]) == ()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab $`'\"\\(){};|&<>*?,=\n-c")), max_size=200))
def test_never_raises_on_shell_like_text(line: str) -> None:
    parsed = parse(line)
    assert all(isinstance(c, SimpleCommand) for c in parsed.commands)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_never_raises_on_arbitrary_text(line: str) -> None:
    commands(line)
    from_argv(line.split(" "))


# tree-sitter-bash's scanner corrupts memory on some non-ASCII input: with the mask replaced
# by the identity (argv "raw"), this script dies with SIGBUS/SIGSEGV (checked with
# tree-sitter-bash 0.23.3 and 0.25.1). A crash would take the API server down with it, so
# the parser only ever sees ASCII (shell.py, _ASCII_ONLY).
_FUZZ = r"""
import random, sys
import tree_sitter
from declawd.guard import shell
rnd = random.Random(11)
def ch():
    r = rnd.random()
    if r < 0.5: return rnd.choice("ab $`'\"\\(){};|&<>*?,=\n-c#!~[]^%@0129\t")
    if r < 0.8: return chr(rnd.randint(0x80, 0x7ff))
    if r < 0.95: return chr(rnd.choice([rnd.randint(0x800, 0xd7ff), rnd.randint(0xe000, 0xffff)]))
    return chr(rnd.randint(0x10000, 0x10ffff))
mask = shell._ASCII_ONLY if sys.argv[1] == "masked" else bytes(range(256))
parser = tree_sitter.Parser(shell._LANGUAGE)
for _ in range(30000):
    s = "".join(ch() for _ in range(rnd.randint(0, 120)))
    parser.parse(s.encode("utf-8").translate(mask))
print("ok")
"""


def test_hostile_non_ascii_lines_do_not_crash_the_process() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _FUZZ, "masked"], capture_output=True, text=True, timeout=300
    )
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr[-2000:]


def test_non_ascii_words_come_back_as_written() -> None:
    (cmd,) = commands("écho 'naïve ☃' x\u00e9")
    assert (cmd.command, cmd.args) == ("écho", ("naïve ☃", "xé"))
