"""What a sandbox is made of, as pure data: its container spec, its mounts, its environment.

No I/O here: the create path gathers the inputs (paths, the upstream's mounts, the cgroup
mounts) and these functions turn them into the OCI config and the environment every process
in the sandbox gets. Invariant: the platform's own variables (`DECLAW_SANDBOX`, ...) are set
last, so neither a template nor a request can make code inside believe something else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from declawd.runtime import Limits, Mount, build_spec

ENVD_MOUNT_DIR = "/run/declawd"
ENVD_SOCKET_NAME = "envd.sock"
ENVD_BIN_IN_SANDBOX = "/opt/declawd/envd"
STATX_SHIM_IN_SANDBOX = "/opt/declawd/statx-shim.so"
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# envd multiplexes I/O (the commands are their own processes, and envd builds their
# environment from scratch, so this reaches no command). One P instead of one per host CPU:
# measured in a sandbox on this 2-core VM, 5 threads instead of 7 and 720-736 KiB of
# anonymous memory instead of 888-904 KiB, most of an idle sandbox's footprint.
ENVD_ENV = ("GOMAXPROCS=1",)

_RO = ["bind", "ro", "nosuid", "nodev"]


@dataclass(frozen=True)
class SpecInputs:
    sandbox_id: str
    runtime: str  # "runc" | "runsc"
    rootfs: Path
    netns_path: str
    cgroups_path: str
    envd_binary: Path
    envd_dir: Path
    memory_mb: int
    cpu_count: float
    pids: int
    # Mounts decided elsewhere: the trust bundle (node/trust.py), the commands' cgroup files.
    extra_mounts: Sequence[Mount] = field(default_factory=tuple)
    # runsc only: (statx shim, ld.so.preload file) on the host.
    runsc_compat: tuple[Path, Path] | None = None


def sandbox_mounts(i: SpecInputs) -> list[Mount]:
    mounts = [
        Mount(ENVD_BIN_IN_SANDBOX, str(i.envd_binary), "bind", list(_RO)),
        Mount(ENVD_MOUNT_DIR, str(i.envd_dir), "bind", ["bind", "rw", "nosuid", "nodev", "noexec"]),
    ]
    if i.runtime == "runsc":
        if i.runsc_compat is None:
            raise ValueError("runsc needs its compat files (statx shim, ld.so.preload)")
        shim, preload = i.runsc_compat
        mounts.append(Mount(STATX_SHIM_IN_SANDBOX, str(shim), "bind", list(_RO)))
        mounts.append(Mount("/etc/ld.so.preload", str(preload), "bind", list(_RO)))
        # gVisor puts an in-memory tmpfs on an empty /tmp the spec does not mount; bind the
        # rootfs's own /tmp instead, so /tmp lives in the writable layer (snapshots see it).
        mounts.append(
            Mount("/tmp", str(i.rootfs / "tmp"), "bind", ["bind", "rw", "nosuid", "nodev"])
        )
    mounts.extend(i.extra_mounts)
    return mounts


def sandbox_spec(i: SpecInputs) -> dict[str, Any]:
    """The OCI config.json of a sandbox: envd as PID 1 on its private socket."""
    return build_spec(
        sandbox_id=i.sandbox_id,
        rootfs=i.rootfs,
        hostname=i.sandbox_id,
        args=[ENVD_BIN_IN_SANDBOX, "--socket", f"{ENVD_MOUNT_DIR}/{ENVD_SOCKET_NAME}"],
        env=[f"PATH={SANDBOX_PATH}", *ENVD_ENV],
        netns_path=i.netns_path,
        limits=Limits(memory_mb=i.memory_mb, cpu_count=i.cpu_count, pids=i.pids),
        mounts=sandbox_mounts(i),
        cgroups_path=i.cgroups_path,
        runtime=i.runtime,
    )


def platform_env(sandbox_id: str, template_id: str) -> dict[str, str]:
    """What code inside can read to know it runs in a sandbox (peers: `E2B_SANDBOX`...)."""
    return {
        "DECLAW_SANDBOX": "true",
        "DECLAW_SANDBOX_ID": sandbox_id,
        "DECLAW_TEMPLATE_ID": template_id,
    }


def sandbox_env(
    sandbox_id: str,
    template_id: str,
    envs: Mapping[str, str],
    defaults: Mapping[str, str],
) -> dict[str, str]:
    """The environment of every process in the sandbox: the node's defaults (where the trust
    bundle is), then the sandbox's own variables (template's, then the request's), then the
    platform's."""
    out = dict(defaults)
    out.update(envs)
    out.update(platform_env(sandbox_id, template_id))
    return out
