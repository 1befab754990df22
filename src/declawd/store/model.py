"""The sandbox as the platform knows it: a frozen `SandboxRecord` with a `SandboxState`.

The store is the only place that turns rows into records; past it nothing handles a sandbox
as a dict. States are exactly the SDK's (`creating`, `running`, `paused`, `killed`): a
create that failed is `killed` with its `error`, and a kill is `killed` the moment it is
accepted. Whether the host resources are gone yet is a separate fact, `released`: a killed
sandbox that is not released still holds its slot, and the reconcile sweep finishes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class SandboxState(StrEnum):
    CREATING = "creating"
    RUNNING = "running"
    PAUSED = "paused"
    KILLED = "killed"

    @property
    def is_live(self) -> bool:
        """A sandbox users can see and address (GET, connect, list)."""
        return self is not SandboxState.KILLED


LIVE_STATES: tuple[SandboxState, ...] = tuple(s for s in SandboxState if s.is_live)

# The team of the sandboxes a warm pool keeps made and parked (node/pool.py): no API key
# belongs to it, so no route finds them; a create that claims one gives it its team.
POOL_TEAM = "__pool__"


@dataclass(frozen=True)
class SandboxRecord:
    sandbox_id: str
    team_id: str
    state: SandboxState
    template_id: str
    template_alias: str
    runtime: str
    created_at: float
    timeout: int
    end_at: float | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    # What the sandbox was created with (request envs over the template's).
    envs: Mapping[str, str] = field(default_factory=dict)
    # The egress policy in force, in its wire form ({"allow_out": [...], "deny_out": [...]}).
    network: Mapping[str, Any] = field(default_factory=dict)
    # The SDK's SecurityPolicy.to_dict() as sent on create (None when none was sent).
    security: Mapping[str, Any] | None = None
    cpu_count: float = 1.0
    memory_mb: int = 512
    slot: int | None = None
    address: str | None = None
    started_at: float | None = None
    killed_at: float | None = None
    error: str | None = None
    released: bool = False
    # Persistence: while paused the timeout clock stops (`remaining_s` is what was left).
    paused_at: float | None = None
    remaining_s: float | None = None
    # The create's lifecycle: {"on_timeout": "kill"|"pause", "auto_resume": bool}.
    lifecycle: Mapping[str, Any] = field(default_factory=dict)
    # The node it runs on (cluster mode, docs/cluster.md); '' in the single-process default.
    node_id: str = ""

    @property
    def on_timeout(self) -> str:
        return str(self.lifecycle.get("on_timeout") or "kill")

    @property
    def auto_resume(self) -> bool:
        return bool(self.lifecycle.get("auto_resume"))

    @property
    def is_live(self) -> bool:
        return self.state.is_live

    @property
    def pooled(self) -> bool:
        """Parked in a warm pool: made, unclaimed, nobody's yet."""
        return self.team_id == POOL_TEAM

    def replace(self, **changes: Any) -> SandboxRecord:
        return dataclasses.replace(self, **changes)


# Columns of the sandboxes table that a record maps to (the rest are historical).
RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SandboxRecord))
JSON_FIELDS: tuple[str, ...] = ("metadata", "envs", "network", "security", "lifecycle")


def record_from_row(row: Mapping[str, Any]) -> SandboxRecord:
    """A row (JSON columns already decoded) → record; tolerant of NULLs in old rows."""
    values = {k: row[k] for k in RECORD_FIELDS if k in row}
    values["state"] = SandboxState(values["state"])
    values["released"] = bool(values.get("released"))
    values["node_id"] = values.get("node_id") or ""
    normalize_sandbox_config(values)
    return SandboxRecord(**values)


def normalize_sandbox_config(values: dict[str, Any]) -> None:
    """Defaults for a row's sandbox configuration columns (NULL in rows of older schemas),
    shared by sandbox and snapshot records: they carry the same configuration."""
    for name in ("metadata", "envs", "network", "lifecycle"):
        values[name] = values.get(name) or {}
    values["template_id"] = values.get("template_id") or ""
    values["template_alias"] = values.get("template_alias") or values["template_id"]
    values["runtime"] = values.get("runtime") or "runc"
    values["timeout"] = int(values.get("timeout") or 0)
    values["cpu_count"] = float(values.get("cpu_count") or 1)
    values["memory_mb"] = int(values.get("memory_mb") or 0)


def record_to_row(rec: SandboxRecord) -> dict[str, Any]:
    """Record → column values (JSON columns still Python objects; the store encodes them)."""
    out = {name: getattr(rec, name) for name in RECORD_FIELDS}
    out["state"] = rec.state.value
    out["released"] = int(rec.released)
    for name in JSON_FIELDS:
        if out[name] is not None:
            out[name] = dict(out[name])
    return out
