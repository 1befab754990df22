"""The `warm_pool` setting, parsed (pure: no imports of the rest of declawd, config uses it).

Forms: `auto` (every built-in template present on the node, on runc, each sized from the
machine's memory), `off` (or `0`, or empty), or a list `alias[:runtime]=N,...`, e.g.
`python=3,base=1,python:runsc=1`. An alias names a template the way a create does (a
built-in's name, or a team-independent template id `tpl-...`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RUNTIMES = ("runc", "runsc")
MAX_SIZE = 64
_ALIAS = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
GIB = 1 << 30


@dataclass(frozen=True)
class PoolTarget:
    alias: str
    runtime: str
    size: int


@dataclass(frozen=True)
class PoolSpec:
    auto: bool
    targets: tuple[PoolTarget, ...] = ()

    @property
    def off(self) -> bool:
        return not self.auto and not self.targets


def parse_pool_spec(raw: str) -> PoolSpec:
    """`ValueError` naming the entry that is wrong."""
    text = raw.strip().lower()
    if text == "auto":
        return PoolSpec(auto=True)
    if text in ("", "off", "0", "none"):
        return PoolSpec(auto=False)
    targets: dict[tuple[str, str], PoolTarget] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, eq, count = entry.partition("=")
        if not eq:
            raise ValueError(f"warm_pool: entry {entry!r} must be alias[:runtime]=N")
        alias, _, runtime = name.strip().partition(":")
        runtime = runtime or "runc"
        if not _ALIAS.match(alias):
            raise ValueError(f"warm_pool: entry {entry!r}: {alias!r} is not a template name")
        if runtime not in RUNTIMES:
            raise ValueError(f"warm_pool: entry {entry!r}: runtime must be runc or runsc")
        try:
            size = int(count)
        except ValueError:
            raise ValueError(f"warm_pool: entry {entry!r}: size must be a whole number") from None
        if not 0 <= size <= MAX_SIZE:
            raise ValueError(f"warm_pool: entry {entry!r}: size must be 0 to {MAX_SIZE}")
        if (alias, runtime) in targets:
            raise ValueError(f"warm_pool: entry {entry!r}: {alias}:{runtime} given twice")
        targets[(alias, runtime)] = PoolTarget(alias, runtime, size)
    return PoolSpec(auto=False, targets=tuple(t for t in targets.values() if t.size))


def auto_size(mem_total_bytes: int) -> int:
    """Sandboxes kept per built-in template when the setting is `auto`: one per 8 GiB of
    memory, at least 1 and at most 4 (23.5 GiB: 2; 24 GiB: 3)."""
    return max(1, min(4, mem_total_bytes // (8 * GIB)))


def auto_budget(mem_total_bytes: int) -> int:
    """What all pooled sandboxes together may use when no budget is set: a 32nd of memory."""
    return mem_total_bytes // 32


def targets_for(
    spec: PoolSpec, builtins: tuple[str, ...], mem_total_bytes: int
) -> list[PoolTarget]:
    """The pools a node should keep: the explicit list, or for `auto` each built-in on runc."""
    if spec.auto:
        size = auto_size(mem_total_bytes)
        return [PoolTarget(name, "runc", size) for name in builtins]
    return list(spec.targets)


def mem_total_bytes(meminfo: str = "/proc/meminfo") -> int:
    with open(meminfo) as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{meminfo}: no MemTotal line")
