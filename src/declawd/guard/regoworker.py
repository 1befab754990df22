"""The Rego worker: `python -m declawd.guard.regoworker`, one JSON request per line on stdin,
one JSON answer per line on stdout. The only process that loads the engine (regoengine.py).

Requests: {"op": "compile", "key", "modules": [[name, source], ...], "packages": [...]} and
{"op": "deny", "key", "package", "rule", "input"}; {"op": "parse", "line"} and
{"op": "parse_argv", "argv"} (shell.py, answered {"ok": true, "parsed": ...}). Answers: {"ok": true, "deny"?: [...]} or
{"ok": false, "kind": "syntax" | "eval" | "unknown", "error": message}.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from declawd.guard.rego import RegoEvalError, RegoSyntaxError
from declawd.guard.regoengine import Engine


def handle(engine: Engine, req: dict[str, Any]) -> dict[str, Any]:
    try:
        if req["op"] == "compile":
            engine.compile(req["key"], [tuple(m) for m in req["modules"]], req["packages"])
            return {"ok": True}
        if req["op"] == "deny":
            if not engine.known(req["key"]):
                return {"ok": False, "kind": "unknown", "error": "policy not compiled here"}
            deny = engine.deny(req["key"], req["package"], req["rule"], req["input"])
            return {"ok": True, "deny": deny}
        if req["op"] in ("parse", "parse_argv"):
            # Command lines are parsed here too: the parser is C (tree-sitter-bash) that has
            # corrupted memory on hostile input; this process may die, the server must not.
            from declawd.guard import shell

            if req["op"] == "parse":
                parsed = shell.parse(str(req["line"]))
            else:
                parsed = shell.parse_argv([str(a) for a in req["argv"]])
            return {"ok": True, "parsed": shell.parsed_to_wire(parsed)}
        return {"ok": False, "kind": "eval", "error": f"unknown op {req['op']!r}"}
    except RegoSyntaxError as exc:
        return {"ok": False, "kind": "syntax", "error": str(exc)}
    except RegoEvalError as exc:
        return {"ok": False, "kind": "eval", "error": str(exc)}


def main() -> None:
    engine = Engine()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            answer = handle(engine, req)
        except (ValueError, KeyError, TypeError) as exc:
            answer = {"ok": False, "kind": "eval", "error": f"bad request: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
