"""Building catalog layers without a server or a store (`declawd template ensure-builtin`).

`make` runs this before the server exists; the server later registers the same layers
instantly because the keys are equal. Invariant: only layers are written (under
`templates_path`), never the database.
"""

from __future__ import annotations

from dataclasses import dataclass

from declawd.config import Settings
from declawd.templates.builder import Builder, BuildResult, Log, OnStep
from declawd.templates.catalog import catalog_plan


@dataclass
class BuiltinResult:
    name: str
    result: BuildResult


async def build_builtin_layers(
    settings: Settings,
    names: list[str],
    log: Log,
    on_step: OnStep | None = None,
    *,
    runtime_name: str = "runc",
) -> list[BuiltinResult]:
    """Build (or find cached) the layers of each named built-in, in order."""
    plans = [(name, catalog_plan(name)) for name in names]  # KeyError before any work
    builder = Builder(
        settings.templates_path,
        settings.run_dir,
        runtime_name=runtime_name,
        instance=settings.instance,
    )
    out = []
    for name, plan in plans:
        log(f"== template {name}")
        out.append(BuiltinResult(name, await builder.build(plan, log, on_step)))
    return out
