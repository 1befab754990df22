"""Hosts on one machine for the cluster test: a network namespace per node, on a bridge.

Each node of `tests/integration/test_cluster.py` runs "on its own host": its agent (and
its lab) run inside a network namespace `dcwhN` whose one interface, `eth0` (172.30.14.1N/24),
is a veth to the bridge `dcwhbr` (172.30.14.1/24) in the real host's namespace, where
PostgreSQL and the API servers listen. The range is private and none of the address pools,
the lab link (100.96.0.0/30), the host link or the uplink (192.0.2.0/24). A host netns has
no default route and the real host does not forward, so a node reaches the bridge subnet
and nothing else; its sandboxes leave only through its own gateway to its own lab. The
node's gateway netns does not reach the bridge at all (PostgreSQL is on TCP only): its
audit reaches the store through the node agent.

Processes enter a host netns with `nsenter --net` (`HostNetns.argv`), which switches the
network namespace only. That matters: the node code makes *named* netns (its gateway, its
lab, each sandbox) by bind-mounting them in /run/netns, which is a path in the mount
namespace. `ip netns exec` would also give the agent a private mount namespace (a slave of
the host's), so the netns it names would exist in its own mount table only: invisible to
the lab and to `ip netns list`, and gone with the agent (kill -9 would drop every sandbox's
netns). Under `nsenter --net` the agent shares the host's mount namespace as an agent on a
real host does, its named netns are global, and the instance prefix (`dcwc1-gw`,
`dcwc2-gw`, ...) keeps the names apart. Network namespaces themselves are not nested: one
made by a process inside `dcwhN` is a fresh namespace like any other.

Plumbing is done with `ip` (iproute2), the way an operator would; everything is idempotent
and `remove_all` also clears what a run killed halfway left.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from dataclasses import dataclass

PREFIX = "dcwh"
BRIDGE = f"{PREFIX}br"
NETWORK = ipaddress.IPv4Network("172.30.14.0/24")
BRIDGE_ADDRESS = str(NETWORK[1])
INNER_IF = "eth0"


def ip(*args: str, check: bool = True) -> str:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def ensure_bridge() -> None:
    """The bridge `dcwhbr` with 172.30.14.1/24, up (idempotent)."""
    if not _link_exists(BRIDGE):
        ip("link", "add", BRIDGE, "type", "bridge")
    ip("addr", "replace", f"{BRIDGE_ADDRESS}/{NETWORK.prefixlen}", "dev", BRIDGE)
    ip("link", "set", BRIDGE, "up")


@dataclass(frozen=True)
class HostNetns:
    """Host netns `dcwhN`: `eth0` with 172.30.14.(10+N) on the bridge, loopback up."""

    index: int

    @property
    def name(self) -> str:
        return f"{PREFIX}{self.index}"

    @property
    def address(self) -> str:
        return str(NETWORK[10 + self.index])

    @property
    def host_if(self) -> str:
        """The veth end in the real host's netns, a port of the bridge."""
        return f"{PREFIX}{self.index}h"

    def ensure(self) -> None:
        """Create the netns and its link to the bridge (idempotent; the bridge first)."""
        ensure_bridge()
        if self.name not in list_netns():
            ip("netns", "add", self.name)
        if not _link_exists(self.host_if):
            ip("link", "add", self.host_if, "type", "veth", "peer", "name", INNER_IF,
               "netns", self.name)  # fmt: skip
        ip("link", "set", self.host_if, "master", BRIDGE, "up")
        batch = (
            "link set lo up\n"
            f"addr replace {self.address}/{NETWORK.prefixlen} dev {INNER_IF}\n"
            f"link set {INNER_IF} up\n"
        )
        out = subprocess.run(["ip", "-n", self.name, "-batch", "-"], input=batch,
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"ip -n {self.name} -batch: {out.stderr.strip()}")

    def argv(self, argv: list[str]) -> list[str]:
        """`argv` run inside this host netns, in the real host's mount namespace."""
        return ["nsenter", f"--net=/run/netns/{self.name}", *argv]

    def remove(self) -> None:
        """Idempotent: the host end of the veth (taking `eth0` along), then the netns."""
        ip("link", "del", self.host_if, check=False)
        ip("netns", "del", self.name, check=False)


def list_netns() -> list[str]:
    """Every named netns of a host netns (`dcwh*`)."""
    data = json.loads(ip("-j", "netns", "list") or "[]")
    return sorted(n["name"] for n in data if n["name"].startswith(PREFIX))


def links() -> list[str]:
    """Every interface of ours in the real host's netns: the bridge and the veth ends."""
    data = json.loads(ip("-j", "link", "show") or "[]")
    return sorted(link["ifname"] for link in data if link["ifname"].startswith(PREFIX))


def _link_exists(name: str) -> bool:
    return name in links()


def remove_all() -> None:
    """Every host netns, veth and the bridge (idempotent; after their processes ended)."""
    for name in links():
        ip("link", "del", name, check=False)
    for name in list_netns():
        ip("netns", "del", name, check=False)
    for name in links():
        ip("link", "del", name, check=False)


def leftovers() -> dict[str, list[str]]:
    return {"host_netns": list_netns(), "links": links()}
