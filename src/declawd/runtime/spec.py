"""OCI bundle spec: the pure translation of one sandbox's wishes into an OCI 1.0.2 config.

Invariant: whatever the caller asks for, the process never gets more than SECURITY.md's
root capability set, always runs with noNewPrivileges, in private pid/mount/uts/ipc/cgroup
namespaces, under cgroup limits, and (for runc) under the default seccomp profile.
"""

from __future__ import annotations

import json
import platform
import resource
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

OCI_VERSION = "1.0.2"

# SECURITY.md "Isolation": the usual container set for root; never NET_ADMIN, NET_RAW,
# SYS_ADMIN, SYS_MODULE, SYS_PTRACE or MKNOD.
ROOT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_SETFCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
)
FORBIDDEN_CAPABILITIES: frozenset[str] = frozenset(
    {
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_SYS_ADMIN",
        "CAP_SYS_MODULE",
        "CAP_SYS_PTRACE",
        "CAP_MKNOD",
    }
)

# `runc spec` defaults.
MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
)
READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

NOFILE_LIMIT = 65536
SHM_SIZE = "64m"
CPU_PERIOD_US = 100_000
CPU_SHARES_PER_CPU = 1024

# The device cgroup: deny everything, then the character devices every container gets
# (null, zero, full, tty, random, urandom, ptmx, pts).
_DEVICE_RULES: list[dict[str, Any]] = [
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},
]


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    cpu_count: float
    pids: int

    def __post_init__(self) -> None:
        if self.memory_mb <= 0:
            raise ValueError("memory_mb: must be positive")
        if self.cpu_count <= 0:
            raise ValueError("cpu_count: must be positive")
        if self.pids <= 0:
            raise ValueError("pids: must be positive")


@dataclass(frozen=True)
class Mount:
    """A mount into the container; bind mounts are read-only unless the caller says rw."""

    destination: str
    source: str
    type: str = "bind"
    options: list[str] = field(default_factory=lambda: ["rbind", "ro", "nosuid", "nodev"])

    def to_oci(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "type": self.type,
            "source": self.source,
            "options": list(self.options),
        }


def _standard_mounts() -> list[dict[str, Any]]:
    return [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={SHM_SIZE}"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
        },
    ]


def _resources(limits: Limits) -> dict[str, Any]:
    memory = limits.memory_mb * 1024 * 1024
    return {
        "devices": [dict(rule) for rule in _DEVICE_RULES],
        # swap == limit: memory+swap may not exceed the memory limit, i.e. no swap.
        "memory": {"limit": memory, "swap": memory},
        "pids": {"limit": limits.pids},
        "cpu": {
            "quota": max(1000, round(limits.cpu_count * CPU_PERIOD_US)),
            "period": CPU_PERIOD_US,
            "shares": max(2, round(limits.cpu_count * CPU_SHARES_PER_CPU)),
        },
    }


def default_nofile() -> int:
    """NOFILE_LIMIT, capped at this process's hard limit.

    runc sets rlimits from the host side before the container runs; without
    CAP_SYS_RESOURCE (as on a node that itself runs in a container) raising the hard
    limit above ours fails with EPERM and the container does not start.
    """
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return NOFILE_LIMIT
    return min(NOFILE_LIMIT, hard)


@cache
def _raw_seccomp_profile() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("seccomp_default.json").read_text()
    profile: dict[str, Any] = json.loads(text)
    return profile


def seccomp_profile(machine: str | None = None) -> dict[str, Any]:
    """The default profile resolved to the OCI `linux.seccomp` shape for one CPU arch (a
    copy of its own: the caller may change it)."""
    return json.loads(json.dumps(_resolved_profile(machine or platform.machine())))


@cache
def _resolved_profile(arch: str) -> dict[str, Any]:
    """The resolved profile, made once per arch and shared by every spec `build_spec` makes
    (read-only: a spec is serialized, never edited; resolving it per create cost ~0.2 ms)."""
    raw = _raw_seccomp_profile()
    if arch not in raw["architectures"]:
        raise ValueError(f"seccomp: no default profile for architecture {arch!r}")
    syscalls = [dict(r) for r in raw["syscalls"]] + [dict(r) for r in raw["archSyscalls"][arch]]
    for rule in syscalls:
        rule.pop("comment", None)
    return {
        "defaultAction": raw["defaultAction"],
        "defaultErrnoRet": raw["defaultErrnoRet"],
        "architectures": list(raw["architectures"][arch]),
        "syscalls": json.loads(json.dumps(syscalls)),
    }


def build_spec(
    *,
    sandbox_id: str,
    rootfs: Path,
    hostname: str,
    args: list[str],
    env: list[str],
    netns_path: str | None,
    limits: Limits,
    mounts: list[Mount],
    cgroups_path: str,
    runtime: str,
    nofile: int | None = None,
) -> dict[str, Any]:
    """The OCI config.json for one sandbox container (pure; no file is touched).

    The process runs as uid 0: envd is the init and drops privileges per command itself.
    `netns_path=None` keeps the host network namespace (template build steps only).
    `nofile` defaults to `default_nofile()`, the one input read from the host.
    """
    if runtime not in ("runc", "runsc"):
        raise ValueError(f"runtime: must be runc or runsc, not {runtime!r}")
    if not args:
        raise ValueError("args: must not be empty")
    if nofile is None:
        nofile = default_nofile()
    caps = list(ROOT_CAPABILITIES)
    namespaces: list[dict[str, str]] = [
        {"type": "pid"},
        {"type": "mount"},
        {"type": "uts"},
        {"type": "ipc"},
        {"type": "cgroup"},
    ]
    if netns_path is not None:
        namespaces.append({"type": "network", "path": netns_path})
    linux: dict[str, Any] = {
        "resources": _resources(limits),
        "cgroupsPath": cgroups_path,
        "namespaces": namespaces,
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
    }
    if runtime == "runc":
        # gVisor is itself the syscall filter (its Sentry implements the syscalls);
        # a Linux seccomp profile in the spec does not apply to its guest.
        linux["seccomp"] = _resolved_profile(platform.machine())
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(args),
            "env": list(env),
            "cwd": "/",
            "capabilities": {
                "bounding": list(caps),
                "effective": list(caps),
                "permitted": list(caps),
                "inheritable": [],
                "ambient": [],
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": hostname,
        "mounts": _standard_mounts() + [m.to_oci() for m in mounts],
        "annotations": {"io.declawd.sandbox_id": sandbox_id},
        "linux": linux,
    }
