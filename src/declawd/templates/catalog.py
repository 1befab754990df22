"""The built-in catalog: `specs/*.json`, extended specs that may `extend` another entry.

A child's plan starts with its parent's layer steps (without the final step), so `python`
reuses `base`'s bootstrap layer and `code-interpreter` reuses `python`'s. Invariant: a
catalog entry's plan is a pure function of the spec files, so a fully cached catalog is
recognised without running anything.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from declawd.templates.plan import BuildPlan, plan_spec
from declawd.templates.spec import parse_spec


@cache
def catalog_names() -> tuple[str, ...]:
    files = resources.files("declawd.templates").joinpath("specs")
    return tuple(sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".json")))


@cache
def catalog_spec(name: str) -> dict[str, Any]:
    """The raw spec of built-in `name`, with `extends` resolved for `base_image`."""
    if name not in catalog_names():
        raise KeyError(f"no built-in template {name!r}; built-ins: {', '.join(catalog_names())}")
    text = resources.files("declawd.templates").joinpath("specs", f"{name}.json").read_text()
    raw: dict[str, Any] = json.loads(text)
    parent = raw.get("extends")
    if parent:
        raw.setdefault("base_image", catalog_spec(parent)["base_image"])
    return raw


def catalog_plan(name: str, _seen: tuple[str, ...] = ()) -> BuildPlan:
    if name in _seen:
        raise ValueError(f"catalog: {name!r} extends itself through {' -> '.join(_seen)}")
    raw = catalog_spec(name)
    parent = raw.get("extends")
    parent_steps = catalog_plan(parent, (*_seen, name)).steps if parent else None
    return plan_spec(parse_spec(raw, where=f"catalog {name}: "), parent=parent_steps)
