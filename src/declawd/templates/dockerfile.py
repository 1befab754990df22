"""Dockerfile subset: FROM, RUN, ENV, WORKDIR, USER, CMD and COPY, parsed into a TemplateSpec.

Pure. Invariant: the result means the same as the Dockerfile would under Docker for the
supported instructions (ENV/WORKDIR/USER apply to the RUNs after them; CMD is the start
command); anything outside the subset is an InvalidInput naming the line.
"""

from __future__ import annotations

import json
import shlex

from declawd.errors import InvalidInput
from declawd.templates.spec import (
    CopyOp,
    RunOp,
    TemplateSpec,
    validate_abs_path,
    validate_rel_path,
    validate_user,
)

MAX_DOCKERFILE_BYTES = 64 * 1024
SUPPORTED = ("FROM", "RUN", "ENV", "WORKDIR", "USER", "CMD", "COPY")


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Join backslash continuations; drop comments and blank lines; keep first line numbers."""
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # Docker drops comment lines inside a continuation
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1])
            continue
        buf.append(stripped)
        out.append((start, " ".join(p for p in buf if p)))
        buf = []
    if buf:
        out.append((start, " ".join(p for p in buf if p)))
    return out


def _json_or_shell(arg: str) -> str:
    """`["a", "b"]` (exec form) becomes a shell-quoted line; shell form stays as it is."""
    if arg.startswith("["):
        try:
            items = json.loads(arg)
        except json.JSONDecodeError:
            return arg
        if isinstance(items, list) and all(isinstance(i, str) for i in items):
            return shlex.join(items)
    return arg


def _parse_env(arg: str, where: str) -> list[tuple[str, str]]:
    try:
        words = shlex.split(arg)
    except ValueError as exc:
        raise InvalidInput(where, str(exc)) from None
    if not words:
        raise InvalidInput(where, "ENV needs a name and a value")
    if "=" not in words[0]:
        # legacy form `ENV NAME value with spaces`
        name, _, value = arg.partition(" ")
        return [(name, value.strip())]
    pairs = []
    for w in words:
        name, sep, value = w.partition("=")
        if not sep or not name:
            raise InvalidInput(where, f"expected NAME=value, got {w!r}")
        pairs.append((name, value))
    return pairs


def parse_dockerfile(text: str, *, field_name: str = "template.dockerfile") -> TemplateSpec:
    if len(text.encode()) > MAX_DOCKERFILE_BYTES:
        raise InvalidInput(field_name, f"larger than {MAX_DOCKERFILE_BYTES // 1024} KiB")
    spec = TemplateSpec()
    env: dict[str, str] = {}
    workdir = "/"
    user = "root"
    user_set = workdir_set = False
    seen_from = False
    for number, line in _logical_lines(text):
        where = f"{field_name} line {number}"
        word, _, arg = line.partition(" ")
        instr = word.upper()
        arg = arg.strip()
        if instr not in SUPPORTED:
            raise InvalidInput(
                where, f"unsupported instruction {word!r}; supported: {', '.join(SUPPORTED)}"
            )
        if not seen_from and instr != "FROM":
            raise InvalidInput(where, f"{instr} before FROM")
        if instr == "FROM":
            if seen_from:
                raise InvalidInput(where, "multi-stage builds (a second FROM) are not supported")
            words = arg.split()
            if len(words) == 3 and words[1].upper() == "AS":
                words = words[:1]
            if len(words) != 1 or words[0].startswith("--"):
                raise InvalidInput(where, "expected FROM <image> [AS <name>]")
            spec.base_image = words[0]
            seen_from = True
        elif not arg:
            raise InvalidInput(where, f"{instr} needs an argument")
        elif instr == "RUN":
            if arg.startswith("--"):
                raise InvalidInput(where, f"RUN options ({arg.split()[0]}) are not supported")
            spec.ops.append(
                RunOp(
                    cmd=_json_or_shell(arg),
                    env=tuple(sorted(env.items())),
                    workdir=workdir,
                    user=user,
                )
            )
        elif instr == "ENV":
            env.update(_parse_env(arg, where))
        elif instr == "WORKDIR":
            # relative WORKDIR is relative to the previous one, as in Docker
            workdir = arg if arg.startswith("/") else workdir.rstrip("/") + "/" + arg
            validate_abs_path(workdir, where)
            workdir_set = True
        elif instr == "USER":
            user = validate_user(arg.split(":")[0], where)
            user_set = True
        elif instr == "CMD":
            spec.start_cmd = _json_or_shell(arg)
        elif instr == "COPY":
            spec.ops.append(_parse_copy(arg, where, workdir))
    if not seen_from:
        raise InvalidInput(field_name, "must contain FROM")
    spec.envs = env
    if user_set:
        spec.user = user
    if workdir_set:
        spec.workdir = workdir
    return spec


def _parse_copy(arg: str, where: str, workdir: str) -> CopyOp:
    if arg.startswith("--"):
        raise InvalidInput(where, f"COPY options ({arg.split()[0]}) are not supported")
    items = json.loads(arg) if arg.startswith("[") else shlex.split(arg)
    if not isinstance(items, list) or len(items) != 2:
        raise InvalidInput(where, "expected COPY <src> <dst> (one source)")
    src, dst = str(items[0]), str(items[1])
    if any(c in src for c in "*?["):
        raise InvalidInput(where, "wildcards in COPY sources are not supported")
    src = src.removeprefix("./") or "."
    if src != ".":
        validate_rel_path(src, where)
    if not dst.startswith("/"):
        dst = workdir.rstrip("/") + "/" + dst
    return CopyOp(src=src, dst=validate_abs_path(dst, where))
