"""Guardrails policy (issue 10): Rego evaluation and the governance packs shipped as data.

`rego` compiles modules with regopy and answers deny sets; `packs` loads the packs in
`packs/` (JSON metadata, Rego modules and the guardrail settings each implies). Invariant: a
pack that loads has Rego that compiles and every control names a gate we know.
"""

from declawd.guard.packs import GovernancePack, find_pack, load_packs
from declawd.guard.rego import RegoEvalError, RegoPolicy, compile_policy

__all__ = [
    "GovernancePack",
    "RegoEvalError",
    "RegoPolicy",
    "compile_policy",
    "find_pack",
    "load_packs",
]
