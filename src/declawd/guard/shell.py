"""Command lines split into the simple commands a shell would run (tree-sitter-bash).

`commands(line)` walks the bash syntax tree: pipelines, lists (`;`, `&&`, `||`, `&`),
subshells, `{ }` groups, if/for/while/case bodies, function bodies, command and process
substitution (`$(..)`, backticks, `<(..)`, also inside strings, redirections and here-documents),
and `export`/`declare`/`local`/`readonly`/`typeset`/`unset`. Each simple command gives a
`SimpleCommand`: `argv0` as the shell resolves it (quotes removed, escapes and ANSI-C `$'..'`
decoded, concatenations joined, unquoted `{a,b}` brace alternations expanded), `command` its base
name, `args` the remaining words (variable assignments and redirections are not args).

Wrappers are unwrapped recursively and BOTH the wrapper and what it runs are reported (`via`
lists the wrappers outermost first): `sh|bash|dash|zsh|ksh|ash|mksh|fish -c STR` (STR parsed as a
command line), `env`, `sudo`, `doas`, `nohup`, `timeout`, `xargs`, `exec`, `nice`, `ionice`,
`stdbuf`, `command` (not with -v/-V, which only looks up), `builtin`, `time`, `setsid`,
`chroot DIR cmd` (the command runs inside DIR; no command means an interactive shell, not
reported), `taskset`, `flock` (`-c STR` or `FILE cmd`), `su`/`runuser -c STR`, `eval` and
`watch` (arguments joined and parsed as a line), `find -exec/-execdir/-ok/-okdir cmd .. ;`,
`busybox APPLET`. Not unwrapped: remote execution (`ssh host cmd`), tracers (`strace`, `gdb`),
interpreters' own code (`python -c`, `awk 'system()'`).

A command word that cannot be resolved statically (it holds `$X`, `${..}`, `$(..)`, backticks,
`$((..))` or an unquoted glob `*`, `?`, `[..]`) is passed as written with `dynamic=True`;
`command == argv0 ==` the source text. Arguments keep expansions as written (`$URL`).

Invariant: `commands()` never raises and its work is bounded: input is capped at MAX_LINE
bytes, nested command-line parsing (`-c`, `eval`) at MAX_DEPTH, total parsed text at
MAX_WORK, brace expansion at MAX_BRACE words, and the answer at MAX_COMMANDS distinct commands
(`parse()` says when a bound cut the answer short). When tree-sitter reports a syntax error the
answer is the union of what the error-tolerant tree gives and a conservative split on shell
operators (`exact=False`): a deny-only gate then sees at least every command bash could run.
"""

from __future__ import annotations

import itertools
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import tree_sitter
import tree_sitter_bash

MAX_LINE = 64 * 1024
MAX_DEPTH = 8
MAX_WORK = 1024 * 1024
MAX_BRACE = 256
MAX_COMMANDS = 2048

_LANGUAGE = tree_sitter.Language(tree_sitter_bash.language())

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "ash", "mksh", "fish", "rbash"})
_DECLARATIONS = frozenset({"export", "declare", "local", "readonly", "typeset", "unset"})
_EXPANSIONS = frozenset(
    {
        "simple_expansion",
        "expansion",
        "command_substitution",
        "process_substitution",
        "arithmetic_expansion",
    }
)
_LITERALS = frozenset({"number", "variable_name", "special_variable_name", "extglob_pattern"})
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[[^\]]*\])?\+?=")
# Reserved words a conservative split drops from the front of a segment.
_RESERVED = frozenset(
    {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "for", "case", "esac"}
    | {"in", "!", "{", "}", "time", "coproc", "function", "select", "[[", "]]"}
)
_ROUGH_SPLIT = re.compile(r"\$\(|<\(|>\(|[;&|()\n`]")
_ANSI_SIMPLE = {
    "a": "\a",
    "b": "\b",
    "e": "\x1b",
    "E": "\x1b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "?": "?",
}


@dataclass(frozen=True)
class SimpleCommand:
    """One command a shell would execute: its argv as resolved, and how it was reached."""

    command: str  # base name of argv[0] (the written text when dynamic)
    args: tuple[str, ...]  # argv[1..n]
    argv0: str  # argv[0] as resolved (the written text when dynamic)
    dynamic: bool = False  # argv[0] is only known at run time
    via: tuple[str, ...] = ()  # the wrappers it runs under, outermost first (base names)


@dataclass(frozen=True)
class ParsedLine:
    """Every distinct simple command of a line, in order of first appearance."""

    commands: tuple[SimpleCommand, ...]
    exact: bool  # False: a syntax error, the conservative split was merged in
    truncated: bool  # a bound (MAX_LINE, MAX_WORK, MAX_COMMANDS, MAX_DEPTH) cut work short


@dataclass(frozen=True)
class _Word:
    """A shell word: `text` resolved (expansions kept as written), `bare[i]` True when
    text[i] is unquoted and unescaped (so it may act as a glob or brace character)."""

    text: str
    written: str
    dynamic: bool = False
    bare: tuple[bool, ...] = ()

    @staticmethod
    def static(text: str) -> _Word:
        return _Word(text, text, False, (False,) * len(text))

    def glob(self) -> bool:
        chars = [c for c, b in zip(self.text, self.bare, strict=False) if b]
        return "*" in chars or "?" in chars or ("[" in chars and "]" in chars)


@dataclass
class _Context:
    out: dict[SimpleCommand, None] = field(default_factory=dict)
    work: int = 0
    exact: bool = True
    truncated: bool = False

    def emit(self, cmd: SimpleCommand) -> None:
        if cmd in self.out:
            return
        if len(self.out) >= MAX_COMMANDS:
            self.truncated = True
            return
        self.out[cmd] = None


def parse(line: str) -> ParsedLine:
    """The simple commands of `line` and whether the answer is exact and complete."""
    ctx = _Context()
    if len(line.encode("utf-8", "surrogatepass")) > MAX_LINE:
        line = line.encode("utf-8", "surrogatepass")[:MAX_LINE].decode("utf-8", "ignore")
        ctx.truncated = True
    try:
        _parse_line(line, (), 0, ctx)
    except RecursionError:  # pragma: no cover - deep trees are walked iteratively
        ctx.truncated = True
    return ParsedLine(tuple(ctx.out), ctx.exact, ctx.truncated)


def commands(line: str) -> tuple[SimpleCommand, ...]:
    """Every distinct simple command `line` would run, wrappers and what they run included."""
    return parse(line).commands


def parse_argv(argv: Sequence[str]) -> ParsedLine:
    """The commands of a process started from `argv` (no shell in between)."""
    ctx = _Context()
    words = [_Word.static(str(a)) for a in argv]
    if words and words[0].text:
        _emit_words(words, (), 0, ctx)
    return ParsedLine(tuple(ctx.out), ctx.exact, ctx.truncated)


class ParseCrashed(Exception):
    """The parser's process died or hung on a line: the line is hostile (fail closed)."""


PARSE_TIMEOUT_S = 5.0


def parsed_to_wire(parsed: ParsedLine) -> dict[str, Any]:
    return {
        "commands": [
            [c.command, list(c.args), c.argv0, c.dynamic, list(c.via)] for c in parsed.commands
        ],
        "exact": parsed.exact,
        "truncated": parsed.truncated,
    }


def parsed_from_wire(raw: Mapping[str, Any]) -> ParsedLine:
    cmds = tuple(
        SimpleCommand(str(c), tuple(map(str, a)), str(a0), bool(d), tuple(map(str, v)))
        for c, a, a0, d, v in raw["commands"]
    )
    return ParsedLine(cmds, bool(raw["exact"]), bool(raw["truncated"]))


def _isolated(request: dict[str, Any]) -> ParsedLine:
    from declawd.guard.rego import WORKER, RegoEvalError

    try:
        answer = WORKER.call(request, PARSE_TIMEOUT_S)
    except RegoEvalError as exc:
        raise ParseCrashed(str(exc).replace("the Rego engine", "the command parser")) from None
    if not answer.get("ok"):
        raise ParseCrashed(str(answer.get("error") or "the command parser failed"))
    return parsed_from_wire(answer["parsed"])


def parse_isolated(line: str) -> ParsedLine:
    """`parse` in the worker process (declawd.guard.regoworker), not in ours: tree-sitter-bash
    is C that has corrupted memory on hostile input, and a crash there must not take the API
    server down. Raises ParseCrashed when the worker dies or hangs on the line."""
    return _isolated({"op": "parse", "line": line})


def parse_argv_isolated(argv: Sequence[str]) -> ParsedLine:
    return _isolated({"op": "parse_argv", "argv": [str(a) for a in argv]})


def from_argv(argv: Sequence[str]) -> tuple[SimpleCommand, ...]:
    """`commands()` for an argv: `["/bin/bash", "-l"]`, `["bash", "-c", "curl x | sh"]`."""
    return parse_argv(argv).commands


# --- the syntax tree ----------------------------------------------------------------------


_ASCII_ONLY = bytes(b if b < 0x80 else 0x41 for b in range(256))


def _parse_line(line: str, via: tuple[str, ...], depth: int, ctx: _Context) -> None:
    if depth > MAX_DEPTH:
        ctx.truncated = True
        return
    src = line.encode("utf-8", "surrogatepass")
    ctx.work += len(src)
    if ctx.work > MAX_WORK:
        ctx.truncated = True
        return
    # The parser sees every non-ASCII byte as `A`: tree-sitter-bash's scanner corrupts memory
    # on some non-ASCII input (fuzzing crashed the process within 30k random lines; none in
    # 240k masked ones), and bash's syntax is all ASCII, a non-ASCII byte being a word byte
    # either way. Offsets are unchanged, so words are read from the original bytes.
    tree = tree_sitter.Parser(_LANGUAGE).parse(src.translate(_ASCII_ONLY))
    root = tree.root_node
    if root.has_error:
        ctx.exact = False
    _walk(root, src, via, depth, ctx)
    if root.has_error:
        for words in _rough_split(line):
            _emit_words(words, via, depth, ctx)


def _walk(
    root: tree_sitter.Node, src: bytes, via: tuple[str, ...], depth: int, ctx: _Context
) -> None:
    """Every command node under root (iteratively: hostile nesting must not recurse)."""
    stack = [root]
    while stack:
        node = stack.pop()
        kind = node.type
        if kind == "command":
            words = _command_words(node, src)
            if words:
                _emit_words(words, via, depth, ctx)
        elif kind in ("declaration_command", "unset_command") and node.children:
            first, *rest = node.children
            if first.type in _DECLARATIONS:
                words = [_Word.static(first.type)] + [_resolve(c, src) for c in rest]
                _emit_words(words, via, depth, ctx)
        stack.extend(reversed(node.children))


def _command_words(node: tree_sitter.Node, src: bytes) -> list[_Word]:
    name = node.child_by_field_name("name")
    if name is None or not name.children:
        return []
    parts = [(name.start_byte, _resolve(name.children[0], src))]
    parts += [(c.start_byte, _resolve(c, src)) for c in node.children_by_field_name("argument")]
    # tree-sitter-bash reads `cmd >out a b` as a redirect to `out a b`: bash gives cmd the
    # extra words as arguments (also for redirects in the enclosing redirected_statement).
    redirects = list(node.children_by_field_name("redirect"))
    parent = node.parent
    if (
        parent is not None
        and parent.type == "redirected_statement"
        and parent.child_by_field_name("body") == node
    ):
        redirects += parent.children_by_field_name("redirect")
    for r in redirects:
        if r.type == "file_redirect":
            for extra in r.children_by_field_name("destination")[1:]:
                parts.append((extra.start_byte, _resolve(extra, src)))
    parts.sort(key=lambda p: p[0])
    return _brace_expand_all([w for _, w in parts])


def _text(node: tree_sitter.Node, src: bytes) -> str:
    return src[node.start_byte : node.end_byte].decode("utf-8", "replace")


def _resolve(node: tree_sitter.Node, src: bytes) -> _Word:
    """A word node as the shell reads it, expansions kept as written."""
    written = _text(node, src)
    kind = node.type
    if kind == "word":
        text, bare = _unescape_bare(written)
        return _Word(text, written, False, bare)
    if kind in _LITERALS:
        return _Word(written, written, False, (True,) * len(written))
    if kind == "raw_string":
        inner = written[1:-1] if len(written) >= 2 else written
        return _Word(inner, written, False, (False,) * len(inner))
    if kind == "ansi_c_string":
        inner = _ansi_c(written[2:-1] if len(written) >= 3 else "")
        return _Word(inner, written, False, (False,) * len(inner))
    if kind in ("string", "translated_string"):
        pieces: list[str] = []
        dynamic = False
        for child in node.children:
            if child.type == "string_content":
                pieces.append(_unescape_dquote(_text(child, src)))
            elif child.type in ('"', "$"):
                continue
            else:
                pieces.append(_text(child, src))
                dynamic = True
        joined = "".join(pieces)
        return _Word(joined, written, dynamic, (False,) * len(joined))
    if kind == "concatenation":
        parts = [_resolve(c, src) for c in node.children]
        joined = "".join(p.text for p in parts)
        bare = tuple(b for p in parts for b in p.bare)
        return _Word(joined, written, any(p.dynamic for p in parts), bare)
    if kind == "variable_assignment":
        parts = [_resolve(c, src) for c in node.children if c.type != "="]
        name = parts[0].text if parts else ""
        value = parts[1] if len(parts) > 1 else _Word.static("")
        return _Word(f"{name}={value.text}", written, value.dynamic)
    if kind in ("brace_expression", "$"):
        return _Word(written, written, False, (True,) * len(written))
    # expansions, substitutions, and anything the grammar did not resolve (ERROR nodes)
    return _Word(written, written, True, (False,) * len(written))


def _unescape_bare(text: str) -> tuple[str, tuple[bool, ...]]:
    out: list[str] = []
    bare: list[bool] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            if text[i + 1] != "\n":
                out.append(text[i + 1])
                bare.append(False)
            i += 2
            continue
        out.append(c)
        bare.append(True)
        i += 1
    return "".join(out), tuple(bare)


def _unescape_dquote(text: str) -> str:
    return re.sub(r'\\([$`"\\\n])', lambda m: "" if m.group(1) == "\n" else m.group(1), text)


def _ansi_c(body: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\" or i + 1 >= len(body):
            out.append(c)
            i += 1
            continue
        e = body[i + 1]
        if e in _ANSI_SIMPLE:
            out.append(_ANSI_SIMPLE[e])
            i += 2
        elif e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = re.match(f"[0-9a-fA-F]{{1,{width}}}", body[i + 2 :])
            if digits:
                code = int(digits.group(0), 16)
                out.append(chr(code) if code < 0x110000 else "\ufffd")
                i += 2 + len(digits.group(0))
            else:
                out.append("\\" + e)
                i += 2
        elif e in "01234567":
            digits = re.match(r"[0-7]{1,3}", body[i + 1 :])
            assert digits is not None
            out.append(chr(int(digits.group(0), 8) & 0xFF))
            i += 1 + len(digits.group(0))
        elif e == "c" and i + 2 < len(body):
            out.append(chr(ord(body[i + 2]) & 0x1F))
            i += 3
        else:
            out.append("\\" + e)
            i += 2
    return "".join(out)


# --- brace expansion ----------------------------------------------------------------------


def _brace_expand_all(words: list[_Word]) -> list[_Word]:
    out: list[_Word] = []
    for w in words:
        expanded = _brace_expand(w) if "{" in w.text else [w]
        if len(out) + len(expanded) > MAX_BRACE * 4:
            expanded = [w]
        out.extend(expanded)
    return out


def _brace_expand(word: _Word) -> list[_Word]:
    """`{a,b}c` -> `ac bc` on unquoted braces (bash: before every other expansion)."""
    chars = list(zip(word.text, word.bare, strict=False))
    results = _expand_chars(chars, 0)
    if len(results) <= 1:
        return [word]
    return [
        _Word("".join(c for c, _ in r), word.written, word.dynamic, tuple(b for _, b in r))
        for r in results
    ]


def _expand_chars(chars: list[tuple[str, bool]], level: int) -> list[list[tuple[str, bool]]]:
    if level > 16:
        return [chars]
    for start, (c, bare) in enumerate(chars):
        if c != "{" or not bare:
            continue
        depth, commas, end = 0, [], -1
        for j in range(start, len(chars)):
            cj, bj = chars[j]
            if not bj:
                continue
            if cj == "{":
                depth += 1
            elif cj == "}":
                depth -= 1
                if depth == 0:
                    end = j
                    break
            elif cj == "," and depth == 1:
                commas.append(j)
        if end < 0 or not commas:
            continue
        bounds = [start, *commas, end]
        prefix, suffix = chars[:start], chars[end + 1 :]
        out: list[list[tuple[str, bool]]] = []
        for a, b in itertools.pairwise(bounds):
            for alt in _expand_chars(chars[a + 1 : b], level + 1):
                for tail in _expand_chars(suffix, level + 1):
                    out.append(prefix + alt + tail)
                    if len(out) > MAX_BRACE:
                        return [chars]
        return out
    return [chars]


# --- argv and wrappers --------------------------------------------------------------------


def _base(path: str) -> str:
    stripped = path.rstrip("/")
    return stripped.rsplit("/", 1)[-1] if stripped else path


def _emit_words(words: list[_Word], via: tuple[str, ...], depth: int, ctx: _Context) -> None:
    """Report the command `words` runs, then what it wraps (a loop: wrappers nest)."""
    for _ in range(64):  # each round peels one wrapper
        if not words or (not words[0].text and not words[0].dynamic):
            return
        head = words[0]
        dynamic = head.dynamic or head.glob()
        argv0 = head.written if dynamic else head.text
        command = argv0 if dynamic else _base(argv0)
        args = tuple(w.text for w in words[1:])
        ctx.emit(SimpleCommand(command, args, argv0, dynamic, via))
        if dynamic:
            return
        inner = _unwrap(command, words[1:])
        via = (*via, command)
        if inner is None:
            return
        if isinstance(inner, str):
            _parse_line(inner, via, depth + 1, ctx)
            return
        words = inner


def _skip_options(
    args: Sequence[_Word],
    with_arg: str = "",
    long_with_arg: Iterable[str] = (),
    attached_only: str = "",
) -> int:
    """Index of the first operand after the options (`--` ends them)."""
    longs = frozenset(long_with_arg)
    i = 0
    while i < len(args):
        a = args[i].text
        if a == "--":
            return i + 1
        if a.startswith("--"):
            i += 1
            if "=" not in a and a[2:] in longs:
                i += 1
            continue
        if a.startswith("-") and len(a) > 1:
            i += 1
            for j, ch in enumerate(a[1:], start=1):
                if ch in with_arg:
                    if j == len(a) - 1:
                        i += 1
                    break
                if ch in attached_only:
                    break
            continue
        return i
    return i


def _option_value(args: Sequence[_Word], short: str, long: str) -> tuple[bool, str | None]:
    """Whether `-<short>`/`--<long>` is among the options, and its value."""
    for i, w in enumerate(args):
        a = w.text
        if a == "--" or not a.startswith("-"):
            break
        if a == f"--{long}":
            return True, args[i + 1].text if i + 1 < len(args) else None
        if a.startswith(f"--{long}="):
            return True, a.split("=", 1)[1]
        if not a.startswith("--") and short in a[1:]:
            rest = a[a.index(short, 1) + 1 :]
            if rest:
                return True, rest
            return True, args[i + 1].text if i + 1 < len(args) else None
    return False, None


def _shell_string(args: Sequence[_Word]) -> str | None:
    """`bash [opts] -c STR ...`: STR, or None when the shell reads a script or stdin."""
    has_c = False
    i = 0
    while i < len(args):
        a = args[i].text
        if a == "--" or a == "-":
            i += 1
            break
        if a.startswith("--"):
            i += 2 if a in ("--rcfile", "--init-file") else 1
            continue
        if len(a) > 1 and a[0] in "-+":
            if "c" in a[1:] and a[0] == "-":
                has_c = True
            i += 2 if "o" in a[1:] or "O" in a[1:] else 1
            continue
        break
    if has_c and i < len(args):
        return args[i].text
    return None


def shell_string(args: Sequence[str]) -> str | None:
    """STR of a shell's `[opts] -c STR` arguments, None when it reads a script or stdin."""
    return _shell_string([_Word.static(a) for a in args])


def base_name(path: str) -> str:
    """What `command` is for a static argv[0]."""
    return _base(path)


def _after_assignments(args: Sequence[_Word], start: int) -> int:
    i = start
    while i < len(args) and _ASSIGNMENT.match(args[i].text):
        i += 1
    return i


Unwrapped = list[_Word] | str | None


def _unwrap(command: str, args: Sequence[_Word]) -> Unwrapped:
    """What a wrapper runs: argv words, a command line (str) to parse, or None."""
    if command in SHELLS:
        return _shell_string(args)
    handler = _WRAPPERS.get(command)
    return handler(list(args)) if handler else None


def _rest(args: list[_Word], i: int) -> list[_Word] | None:
    return args[i:] if i < len(args) else None


def _env(args: list[_Word]) -> Unwrapped:
    found, split = _option_value(args, "S", "split-string")
    i = _skip_options(args, "uCS", ("unset", "chdir", "split-string"))
    i = _after_assignments(args, i)
    if found and split is not None:
        return [_Word.static(w) for w in _split(split)] + args[i:]
    return _rest(args, i)


def _sudo(args: list[_Word]) -> Unwrapped:
    if _option_value(args, "e", "edit")[0]:
        return None
    longs: tuple[str, ...] = ("close-from", "chdir", "group", "host", "prompt", "chroot")
    longs += ("role", "type", "command-timeout", "other-user", "user")
    i = _skip_options(args, "CDghpRrTtUu", longs)
    return _rest(args, _after_assignments(args, i))


def _timeout(args: list[_Word]) -> Unwrapped:
    i = _skip_options(args, "sk", ("signal", "kill-after"))
    return _rest(args, i + 1)  # DURATION first


def _xargs(args: list[_Word]) -> Unwrapped:
    longs: tuple[str, ...] = ("arg-file", "delimiter", "eof", "replace", "max-lines")
    longs += ("max-args", "max-procs", "max-chars", "process-slot-var")
    i = _skip_options(args, "adEILnPs", longs, attached_only="eil")
    # xargs with no command runs echo
    return _rest(args, i) or [_Word.static("echo")]


def _command(args: list[_Word]) -> Unwrapped:
    if any(a.text.startswith("-") and ("v" in a.text or "V" in a.text) for a in args[:2]):
        return None
    return _rest(args, _skip_options(args))


def _chroot(args: list[_Word]) -> Unwrapped:
    i = _skip_options(args, "", ("userspec", "groups"))
    return _rest(args, i + 1)  # NEWROOT first


def _taskset(args: list[_Word]) -> Unwrapped:
    if _option_value(args, "p", "pid")[0]:
        return None
    return _rest(args, _skip_options(args) + 1)  # mask or cpu list first


def _flock(args: list[_Word]) -> Unwrapped:
    found, line = _option_value(args, "c", "command")
    if found:
        return line
    i = _skip_options(args, "wEc", ("timeout", "conflict-exit-code", "command"))
    after = args[i + 1 :]  # FILE first (a lone fd number runs nothing)
    if after and after[0].text in ("-c", "--command"):
        return after[1].text if len(after) > 1 else None
    return after or None


def _su(args: list[_Word]) -> Unwrapped:
    """`su [opts] [-] [user] [opts]`: options may follow the user; only -c runs a command."""
    for i, w in enumerate(args):
        a = w.text
        if a in ("-c", "--command") and i + 1 < len(args):
            return args[i + 1].text
        if a.startswith("--command="):
            return a.split("=", 1)[1]
        if a.startswith("-c") and not a.startswith("--") and len(a) > 2:
            return a[2:]
    return None


def _find(args: list[_Word]) -> Unwrapped:
    for i, a in enumerate(args):
        if a.text in ("-exec", "-execdir", "-ok", "-okdir"):
            end = next(
                (j for j in range(i + 1, len(args)) if args[j].text in (";", "+")), len(args)
            )
            return args[i + 1 : end] or None
    return None


def _joined(args: list[_Word]) -> Unwrapped:
    return " ".join(a.text for a in args) if args else None


def _watch(args: list[_Word]) -> Unwrapped:
    i = _skip_options(args, "n", ("interval",))
    return _joined(args[i:])


_Handler = Callable[[list[_Word]], Unwrapped]


def _options_then(with_arg: str = "", longs: tuple[str, ...] = ()) -> _Handler:
    def handler(args: list[_Word]) -> Unwrapped:
        return _rest(args, _skip_options(args, with_arg, longs))

    return handler


_WRAPPERS: dict[str, _Handler] = {
    "env": _env,
    "sudo": _sudo,
    "doas": _options_then("uC"),
    "nohup": _options_then(),
    "timeout": _timeout,
    "xargs": _xargs,
    "exec": _options_then("a"),
    "nice": _options_then("n", ("adjustment",)),
    "ionice": _options_then("cnt", ("class", "classdata")),
    "stdbuf": _options_then("ioe", ("input", "output", "error")),
    "command": _command,
    "builtin": _options_then(),
    "time": _options_then("fo", ("format", "output")),
    "setsid": _options_then(),
    "chroot": _chroot,
    "taskset": _taskset,
    "flock": _flock,
    "su": _su,
    "runuser": _su,
    "eval": _joined,
    "watch": _watch,
    "find": _find,
    "busybox": _options_then(),
}


# --- the conservative split ---------------------------------------------------------------


def _split(text: str) -> list[str]:
    try:
        return shlex.split(text, comments=False, posix=True)
    except ValueError:
        return text.split()


def _rough_split(line: str) -> list[list[_Word]]:
    """Words of each segment between shell operators, for a line that does not parse."""
    out = []
    for segment in _ROUGH_SPLIT.split(line):
        words = _split(segment)
        while words and (words[0] in _RESERVED or _ASSIGNMENT.match(words[0])):
            words.pop(0)
        if words:
            marks = [_Word(w, w, "$" in w or "`" in w, (True,) * len(w)) for w in words]
            out.append(_brace_expand_all(marks))
    return out


__all__ = [
    "MAX_DEPTH",
    "MAX_LINE",
    "SHELLS",
    "ParsedLine",
    "SimpleCommand",
    "base_name",
    "commands",
    "from_argv",
    "parse",
    "parse_argv",
    "shell_string",
]
