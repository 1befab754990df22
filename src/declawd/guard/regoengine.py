"""The Rego engine itself (regopy, rego-cpp), loaded only in the worker process.

rego-cpp links its own copy of RE2; loaded next to google-re2 (our transformations) in one
process the two corrupt each other's heap. So no process of ours but `regoworker` imports
this module. Compiled policies are kept by key; `deny` answers for one of them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from regopy import Interpreter, LogLevel, RegoError

# The C-level calls, not Interpreter.query: regopy's Output parses the answer as JSON and
# raises JSONDecodeError when the engine answers with an error S-expression instead.
from regopy.rego_shared import rego_output_ok, rego_output_string, rego_query

from declawd.guard.rego import RegoEvalError, RegoSyntaxError, deny_messages, engine_message

MAX_POLICIES = 256


def _new_interpreter() -> Interpreter:
    rego = Interpreter()
    # At its default level rego-cpp prints every compile error to stdout; we report them.
    rego.log_level = LogLevel.NONE
    return rego


class Engine:
    """Compiled policies by key (LRU). One interpreter per policy: rego-cpp keeps the
    compiled modules between queries (about half a millisecond a query against over one
    when rebuilt)."""

    def __init__(self) -> None:
        self._policies: OrderedDict[str, tuple[Interpreter, dict[str, str]]] = OrderedDict()

    def compile(
        self, key: str, modules: Sequence[tuple[str, str]], packages: Sequence[str]
    ) -> None:
        sources = dict(modules)
        rego = _new_interpreter()
        for name, source in modules:
            try:
                rego.add_module(name, source)
            except RegoError as exc:
                raise RegoSyntaxError(engine_message(str(exc), sources)) from None
        # rego-cpp compiles the modules when first queried; one query per package surfaces
        # the errors add_module let through (recursion, conflicting rules) at compile time.
        rego.set_input({})
        for pkg in sorted(packages):
            try:
                text = rego_output_string(rego_query(rego._impl, f"data.{pkg}"))
            except RegoError as exc:
                raise RegoSyntaxError(engine_message(str(exc), sources)) from None
            if text != "undefined" and not text.startswith("{"):
                raise RegoSyntaxError(engine_message(text, sources))
        self._policies[key] = (rego, sources)
        while len(self._policies) > MAX_POLICIES:
            self._policies.popitem(last=False)

    def known(self, key: str) -> bool:
        return key in self._policies

    def deny(self, key: str, package: str, rule: str, input: Mapping[str, Any]) -> list[str]:
        rego, sources = self._policies[key]
        self._policies.move_to_end(key)
        try:
            rego.set_input(dict(input))
            impl = rego_query(rego._impl, f"data.{package}.{rule}")
        except RegoError as exc:
            raise RegoEvalError(engine_message(str(exc), sources)) from exc
        if not rego_output_ok(impl):
            raise RegoEvalError("the Rego engine failed evaluating the policy")
        return deny_messages(rego_output_string(impl), sources)


__all__ = ["Engine"]
