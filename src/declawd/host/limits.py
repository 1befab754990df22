"""Host limits that a node with hundreds of sandboxes outgrows, raised once at server start.

Every sandbox costs the server and the gateway daemon (its child) open files, and the host
kernel one neighbour entry on each side of its veth; sandboxes share the host's uid 0 and
1000 (no user namespace), so their inotify instances and pids count against host-wide
limits too. The defaults (1024 open files under systemd, a 1024-entry neighbour table,
128 inotify instances per uid, 32768 pids) stop a node well before its address pool does.
Invariant: a limit is only ever raised, never lowered, and one that cannot be raised (a
read-only /proc/sys in a container) is reported, not fatal.
"""

from __future__ import annotations

import ipaddress
import logging
import resource
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PROC_SYS = Path("/proc/sys")
# Host neighbour entries a sandbox can hold: the gateway in its netns, itself in the gateway's.
NEIGH_PER_SANDBOX = 2
NEIGH_HOST_ROOM = 1024  # the host's own interfaces, the lab and the uplink
INOTIFY_INSTANCES = 8192
INOTIFY_WATCHES = 524288
PID_MAX = 4194304  # the kernel's ceiling on 64-bit (what systemd sets)


@dataclass(frozen=True)
class Raised:
    """One limit that was below its floor: its name and the values before and after."""

    name: str
    before: int
    after: int


def sysctl_floors(pool: str) -> dict[str, int]:
    """The least value each host sysctl needs for every slot of `pool` to be in use.

    The neighbour table is one table for all network namespaces (its gc_thresh* live in the
    host's net.ipv4.neigh.default); at gc_thresh3 entries the kernel refuses new ones
    ("neighbour table overflow") and a sandbox's packets are dropped. gc_thresh2 is where
    the garbage collector starts trimming stale entries within 5 s, gc_thresh1 where it stops.
    """
    slots = ipaddress.IPv4Network(pool).num_addresses // 4
    thresh3 = NEIGH_PER_SANDBOX * slots + NEIGH_HOST_ROOM
    return {
        "net.ipv4.neigh.default.gc_thresh1": thresh3 // 4,
        "net.ipv4.neigh.default.gc_thresh2": thresh3 // 2,
        "net.ipv4.neigh.default.gc_thresh3": thresh3,
        "fs.inotify.max_user_instances": INOTIFY_INSTANCES,
        "fs.inotify.max_user_watches": INOTIFY_WATCHES,
        "kernel.pid_max": PID_MAX,
    }


def raise_sysctls(floors: dict[str, int], root: Path = PROC_SYS) -> list[Raised]:
    """Raise each sysctl under `root` that is below its floor; what changed comes back.

    A sysctl that is missing or cannot be written is logged as a warning and skipped.
    """
    raised: list[Raised] = []
    for name, floor in floors.items():
        path = root / name.replace(".", "/")
        try:
            current = int(path.read_text().split()[0])
            if current >= floor:
                continue
            path.write_text(f"{floor}\n")
        except (OSError, ValueError, IndexError) as exc:
            log.warning("could not raise %s to %d: %s", name, floor, exc)
            continue
        raised.append(Raised(name, current, floor))
    return raised


def raise_nofile() -> Raised | None:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (children inherit it).

    Python keeps the soft limit it was started with, 1024 under systemd and most shells,
    while the server holds a connection per sandbox's envd and the gateway daemon sockets
    per sandbox. The hard limit is left alone (raising it needs CAP_SYS_RESOURCE, and
    runtime/spec.py caps the sandboxes' own limit at it).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or (hard != resource.RLIM_INFINITY and soft >= hard):
        return None
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target <= soft:
        return None
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return Raised("RLIMIT_NOFILE (soft)", soft, target)


def raise_host_limits(pool: str, root: Path = PROC_SYS) -> list[Raised]:
    """Everything above for a node whose sandboxes take their addresses from `pool`."""
    raised = raise_sysctls(sysctl_floors(pool), root)
    nofile = raise_nofile()
    if nofile is not None:
        raised.append(nofile)
    for r in raised:
        log.info("raised %s from %d to %d", r.name, r.before, r.after)
    return raised
