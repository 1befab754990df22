"""Reading and sweeping the cgroups the OCI runtime creates for sandboxes.

The runtime (runc's cgroupfs driver) creates `/<instance>/<sandbox_id>` in every hierarchy;
here we read usage from it, create the commands' child cgroup below it (pids and memory,
with a reserve left for envd) and remove leftovers after a crash. Invariant:
`remove_cgroup` is idempotent and never touches a cgroup outside the given path.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

CGROUP_ROOT = Path("/sys/fs/cgroup")

# Commands run in `<sandbox cgroup>/cmds`, whose limits stay this far below the sandbox's,
# so a fork bomb or memory hog hits the child's limit and envd (PID 1, Go: it needs
# threads and a little memory to keep serving) never starves.
COMMANDS_CGROUP = "cmds"
COMMAND_CONTROLLERS: tuple[str, ...] = ("pids", "memory")
PIDS_RESERVE = 64
MEMORY_RESERVE_BYTES = 48 << 20


@dataclass(frozen=True)
class Stats:
    cpu_usage_ns: int
    memory_bytes: int
    pids: int


def _hierarchies() -> Mapping[str, Path]:
    """Mount point per v1 controller (and "" for the v2 hierarchy), read once per process.

    The cgroup hierarchies are mounted at boot and never move, while mountinfo grows by
    four lines a sandbox (netns, quota disk, overlay, envd tmpfs): parsing it on every
    `read_stats` made one metrics sweep over 500 sandboxes parse a million lines. A
    lookup that finds nothing (hierarchies not mounted yet) is not kept.
    """
    global _found
    if _found is None:
        found = _read_hierarchies("/proc/self/mountinfo")
        if not found:
            return found
        _found = MappingProxyType(found)
    return _found


_found: Mapping[str, Path] | None = None


def _read_hierarchies(mountinfo: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _source, superopts = right.split()[:3]
            mount_point = Path(left.split()[4])
            if fstype == "cgroup2":
                found.setdefault("", mount_point)
            elif fstype == "cgroup":
                for opt in superopts.split(","):
                    if opt in ("rw", "ro") or opt.startswith(("release_agent=", "clone_children")):
                        continue
                    found.setdefault(opt, mount_point)
    return found


def _unified() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def _rel(cgroups_path: str) -> str:
    rel = cgroups_path.strip("/")
    if not rel or ".." in rel.split("/"):
        raise ValueError(f"cgroups_path: {cgroups_path!r} is not a cgroup below the root")
    return rel


def _read_int(path: Path) -> int:
    return int(path.read_text().split()[0])


def read_stats(cgroups_path: str) -> Stats:
    """Current CPU time, memory use and task count; FileNotFoundError if there is no such cgroup."""
    rel = _rel(cgroups_path)
    if _unified():
        base = CGROUP_ROOT / rel
        cpu_usec = 0
        for line in (base / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                cpu_usec = int(value)
        return Stats(
            cpu_usage_ns=cpu_usec * 1000,
            memory_bytes=_read_int(base / "memory.current"),
            pids=_read_int(base / "pids.current"),
        )
    h = _hierarchies()
    return Stats(
        cpu_usage_ns=_read_int(h["cpuacct"] / rel / "cpuacct.usage"),
        memory_bytes=_read_int(h["memory"] / rel / "memory.usage_in_bytes"),
        pids=_read_int(h["pids"] / rel / "pids.current"),
    )


def cgroup_dirs(cgroups_path: str) -> list[Path]:
    """The directories of this cgroup that exist, one per hierarchy."""
    rel = _rel(cgroups_path)
    mounts = {p for p in _hierarchies().values()}
    return sorted(m / rel for m in mounts if (m / rel).is_dir())


def _kill_tasks(directory: Path) -> bool:
    """SIGKILL every task left in a cgroup tree; True when there were some."""
    killed = False
    for procs in directory.rglob("cgroup.procs"):
        try:
            pids = [int(p) for p in procs.read_text().split()]
        except OSError:
            continue
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed = True
            except ProcessLookupError:
                pass
    return killed


def _rmdir_tree(directory: Path) -> None:
    # cgroup dirs cannot be removed recursively; remove the deepest children first.
    children = sorted(
        (p for p in directory.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
    )
    for child in [*children, directory]:
        with contextlib.suppress(FileNotFoundError):
            child.rmdir()


def remove_cgroup(cgroups_path: str) -> None:
    """Remove the cgroup (and its children) from every hierarchy; kills leftover tasks."""
    for directory in cgroup_dirs(cgroups_path):
        for _attempt in range(50):
            try:
                _rmdir_tree(directory)
                break
            except OSError:
                if not _kill_tasks(directory):
                    time.sleep(0.02)
                else:
                    time.sleep(0.01)
        else:
            _rmdir_tree(directory)


@dataclass(frozen=True)
class CommandCgroup:
    """One controller's `tasks` files: the sandbox's cgroup (envd) and the commands' child."""

    controller: str
    parent_tasks: Path
    child_tasks: Path


def command_limits(memory_bytes: int, pids: int) -> tuple[int, int]:
    """(memory, pids) limits of the commands' cgroup: the reserve, but never below half."""
    return (
        max(memory_bytes - MEMORY_RESERVE_BYTES, memory_bytes // 2),
        max(pids - PIDS_RESERVE, pids // 2, 1),
    )


def create_command_cgroups(cgroups_path: str, memory_bytes: int, pids: int) -> list[CommandCgroup]:
    """Create `<cgroups_path>/cmds` in the pids and memory hierarchies with lowered limits.

    Runs before the runtime starts the container: runc adopts the existing sandbox cgroup
    and sets its own limits on it; the `tasks` files returned are bind-mounted into the
    container for envd. cgroup v2 (no per-thread `tasks`) gets nothing. `remove_cgroup`
    removes the child with its parent.
    """
    rel = _rel(cgroups_path)
    if _unified():
        return []
    h = _hierarchies()
    mem_limit, pids_limit = command_limits(memory_bytes, pids)
    out: list[CommandCgroup] = []
    for controller in COMMAND_CONTROLLERS:
        parent = h[controller] / rel
        child = parent / COMMANDS_CGROUP
        child.mkdir(parents=True, exist_ok=True)
        if controller == "pids":
            (child / "pids.max").write_text(str(pids_limit))
        else:
            (child / "memory.limit_in_bytes").write_text(str(mem_limit))
            # no swap for commands either (the sandbox has memsw == limit)
            memsw = child / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                memsw.write_text(str(mem_limit))
        out.append(CommandCgroup(controller, parent / "tasks", child / "tasks"))
    return out
