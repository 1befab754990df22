"""The OCI runtime layer: bundle specs, runc/runsc driver, overlay rootfs, cgroup stats.

Everything a sandbox's container needs on the host, with a matching idempotent teardown
for each resource (container: `OciRuntime.kill`, mounts: `unmount`, cgroups:
`remove_cgroup`). Pure spec building is kept apart from the code that runs binaries.
"""

from declawd.runtime.cgroups import Stats, read_stats, remove_cgroup
from declawd.runtime.disk import dir_size
from declawd.runtime.oci import OciRuntime, Prune, RootfsMount, RuntimeName, RuntimeStartError
from declawd.runtime.overlay import (
    MountError,
    is_mounted,
    mount_overlay,
    mount_tmpfs,
    unmount,
)
from declawd.runtime.spec import (
    FORBIDDEN_CAPABILITIES,
    ROOT_CAPABILITIES,
    Limits,
    Mount,
    build_spec,
    seccomp_profile,
)

__all__ = [
    "FORBIDDEN_CAPABILITIES",
    "ROOT_CAPABILITIES",
    "Limits",
    "Mount",
    "MountError",
    "OciRuntime",
    "Prune",
    "RootfsMount",
    "RuntimeName",
    "RuntimeStartError",
    "Stats",
    "build_spec",
    "dir_size",
    "is_mounted",
    "mount_overlay",
    "mount_tmpfs",
    "read_stats",
    "remove_cgroup",
    "seccomp_profile",
    "unmount",
]
