"""The `Template` a sandbox starts from: metadata plus its read-only layer dirs.

Invariant: `layer_paths` are ordered lowest first and are never written to; the node
stacks them as overlay lower dirs under a per-sandbox upper dir. `start_cmd` is the
template's command as written; the node runs `start_script(start_cmd)`, which sends its
output to START_LOG.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from declawd.templates.spec import DEFAULT_USER, DEFAULT_WORKDIR

# Where a sandbox's start command writes its stdout and stderr (readable with files.read).
# /tmp because the template's user, whoever it is, can create files there.
START_LOG = "/tmp/start_cmd.log"


def start_script(start_cmd: str | None) -> str | None:
    """The shell script the node runs for `start_cmd`: its output appended to START_LOG."""
    if not start_cmd:
        return None
    return f"exec >>{START_LOG} 2>&1\n{start_cmd}"


@dataclass(frozen=True)
class Template:
    template_id: str
    team_id: str
    alias: str | None
    state: str
    layer_keys: list[str]
    layer_paths: list[Path]
    user: str = DEFAULT_USER
    workdir: str = DEFAULT_WORKDIR
    envs: dict[str, str] = field(default_factory=dict)
    start_cmd: str | None = None
    ready_cmd: str | None = None
    ready_timeout: float | None = None
    cpu_count: int | None = None
    memory_mb: int | None = None
    runtime: str | None = None
    size_bytes: int = 0
    build_seconds: float | None = None

    @property
    def layers(self) -> list[Path]:
        """Alias of `layer_paths` (the name docs/contracts.md uses)."""
        return self.layer_paths


def template_from_record(rec: dict[str, Any], layer_fs: Callable[[str], Path]) -> Template:
    keys = list(rec.get("layers") or [])
    return Template(
        template_id=rec["template_id"],
        team_id=rec.get("team_id") or "",
        alias=rec.get("alias"),
        state=rec["state"],
        layer_keys=keys,
        layer_paths=[layer_fs(k) for k in keys],
        user=rec.get("user") or DEFAULT_USER,
        workdir=rec.get("workdir") or DEFAULT_WORKDIR,
        envs=dict(rec.get("envs") or {}),
        start_cmd=rec.get("start_cmd"),
        ready_cmd=rec.get("ready_cmd"),
        ready_timeout=rec.get("ready_timeout"),
        cpu_count=rec.get("cpu_count"),
        memory_mb=rec.get("memory_mb"),
        runtime=rec.get("runtime"),
        size_bytes=rec.get("size_bytes") or 0,
        build_seconds=rec.get("build_seconds"),
    )
