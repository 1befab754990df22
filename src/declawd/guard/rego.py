"""Rego policies, compiled and evaluated by regopy (rego-cpp) in a worker process.

A `RegoPolicy` is a set of modules that compiled; `deny(package, input)` evaluates
`data.<package>.deny` and returns its messages (a deny-only set: any message blocks).
Invariant: a policy that exists has compiled, so evaluation errors are run-time failures
(`RegoEvalError`, a timeout included), never syntax; callers choose allow or deny on them
(`default_deny`).

Why a process: rego-cpp links its own RE2, and in one process with google-re2 (our
transformations) the two corrupt each other's heap; and regopy has no time or step limit,
while a process can be killed. A query that outlives EVAL_TIMEOUT_S kills the worker (the
next call starts a new one and compiles again). rego-cpp is lenient where OPA is strict: an
unsafe variable or an unknown function makes the rule undefined instead of failing to compile.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import selectors
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from declawd.errors import InvalidInput

_PACKAGE = re.compile(r"^\s*package\s+([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)", re.M)
# rego-cpp reports errors as S-expressions: `(error 6:c.rego|39|2 (errormsg 27:Invalid ...)`,
# the location being file|byte offset|length and each atom length-prefixed.
_ERRMSG = re.compile(r"\(errormsg (\d+):")
_ERRLOC = re.compile(r"\(error \d+:([^|\s]+)\|(\d+)\|(\d+)")


EVAL_TIMEOUT_S = 2.0
COMPILE_TIMEOUT_S = 10.0


class RegoEvalError(Exception):
    """The engine failed while evaluating a compiled policy (e.g. recursion found late)."""


class RegoSyntaxError(Exception):
    """The modules do not compile (the engine's message)."""


def package_of(source: str) -> str | None:
    """The `package` a module declares, or None when it has no package line."""
    found = _PACKAGE.search(source)
    return found.group(1) if found else None


def _messages(text: str) -> list[str]:
    out = []
    for m in _ERRMSG.finditer(text):
        n = int(m.group(1))
        out.append(text[m.end() : m.end() + n])
    return out


def engine_message(text: str, sources: Mapping[str, str]) -> str:
    """The engine's error as a person reads it: `<message> (at <module>:<line>:<col>)`."""
    msgs = _messages(text) or [text.strip() or "error"]
    loc = _ERRLOC.search(text)
    if loc and loc.group(1) in sources:
        src = sources[loc.group(1)].encode()
        offset = int(loc.group(2))
        before = src[:offset].decode(errors="replace")
        line = before.count("\n") + 1
        col = offset - (before.rfind("\n") + 1 if "\n" in before else 0) + 1
        return f"{'; '.join(msgs)} (at {loc.group(1)}:{line}:{col})"
    return "; ".join(msgs)


@dataclass
class RegoPolicy:
    """Modules that compiled together, ready to answer `deny` for an input."""

    sources: dict[str, str]
    packages: frozenset[str]
    key: str = field(default="", repr=False)

    def deny(self, package: str, input: Mapping[str, Any], rule: str = "deny") -> list[str]:
        """The messages of `data.<package>.<rule>` for `input`; [] when no module defines it.

        A set (`deny contains msg if`) gives its members; an object (v1 reading of the old
        `deny[msg] { }`) gives its keys, so both spellings of a deny set work.
        """
        request = {"op": "deny", "key": self.key, "package": package, "rule": rule}
        answer = WORKER.call({**request, "input": dict(input)}, EVAL_TIMEOUT_S)
        if answer.get("kind") == "unknown":  # a new worker: compile there, ask again
            WORKER.call(self._compile_request(), COMPILE_TIMEOUT_S)
            answer = WORKER.call({**request, "input": dict(input)}, EVAL_TIMEOUT_S)
        if not answer.get("ok"):
            raise RegoEvalError(str(answer.get("error") or "the Rego engine failed"))
        return [str(m) for m in answer.get("deny") or []]

    def _compile_request(self) -> dict[str, Any]:
        return {
            "op": "compile",
            "key": self.key,
            "modules": [[n, s] for n, s in self.sources.items()],
            "packages": sorted(self.packages),
        }


class _Worker:
    """The worker process (started on first use), one request at a time."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def call(self, request: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        with self._lock:
            proc = self._running()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps(request).encode() + b"\n")
                proc.stdin.flush()
                line = _read_line(proc.stdout, timeout)
            except (OSError, TimeoutError) as exc:
                self._kill()
                why = "timed out" if isinstance(exc, TimeoutError) else f"failed ({exc})"
                raise RegoEvalError(f"the Rego engine {why}") from None
            if not line:
                self._kill()
                raise RegoEvalError("the Rego engine exited")
            answer: dict[str, Any] = json.loads(line)
            return answer

    def _running(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "declawd.guard.regoworker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return self._proc

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        with self._lock:
            self._kill()


def _read_line(stream: Any, timeout: float) -> bytes:
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError
    line: bytes = stream.readline()
    return line


WORKER = _Worker()


def deny_messages(text: str, sources: Mapping[str, str]) -> list[str]:
    if text == "undefined":
        return []
    if not text.startswith("{"):
        raise RegoEvalError(engine_message(text, sources))
    result = json.loads(text)
    values = result.get("expressions") or []
    if not values:
        return []
    value = values[0]
    if isinstance(value, dict):
        value = list(value)
    if not isinstance(value, list):
        raise RegoEvalError(f"deny must be a set of messages, got {type(value).__name__}")
    return [m if isinstance(m, str) else json.dumps(m, sort_keys=True) for m in value]


def compile_policy(
    modules: Mapping[str, str] | Sequence[tuple[str, str]], *, field: str = "custom_policy"
) -> RegoPolicy:
    """Compile named modules (`{"name.rego": source}`) into one policy.

    Every module needs a `package` line (callers add a default one first where the contract
    allows). A module that does not compile is `InvalidInput(field, <engine's message>)`.
    """
    items = list(modules.items()) if isinstance(modules, Mapping) else list(modules)
    if not items:
        raise InvalidInput(field, "no Rego module given")
    sources: dict[str, str] = {}
    packages: set[str] = set()
    for name, source in items:
        pkg = package_of(source)
        if pkg is None:
            raise InvalidInput(field, f"Rego module {name} has no package line")
        packages.add(pkg)
        sources[name] = source
    key = hashlib.sha256(json.dumps(sorted(sources.items())).encode()).hexdigest()
    policy = RegoPolicy(sources=sources, packages=frozenset(packages), key=key)
    try:
        answer = WORKER.call(policy._compile_request(), COMPILE_TIMEOUT_S)
    except RegoEvalError as exc:
        raise InvalidInput(field, f"Rego could not be compiled: {exc}") from None
    if not answer.get("ok"):
        if answer.get("kind") == "syntax":
            raise InvalidInput(field, f"Rego does not compile: {answer.get('error')}")
        raise InvalidInput(field, f"Rego could not be compiled: {answer.get('error')}")
    return policy


__all__ = [
    "RegoEvalError",
    "RegoPolicy",
    "RegoSyntaxError",
    "compile_policy",
    "deny_messages",
    "engine_message",
    "package_of",
]
