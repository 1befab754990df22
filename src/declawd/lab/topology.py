"""The lab network namespace: `<instance>-lab` with every served host address on `lo`.

`ensure_lab_netns` converges the namespace to the config (idempotent: safe to call again
after the gateway created the `up0` link, which is when the default route via the gateway
appears); `remove_lab_netns` is its idempotent teardown. The lab link itself (`lab0`/`up0`)
belongs to `declawd.egress.network.ensure_lab_link`. Also: entering a netns from Python.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import socket
import subprocess
import threading
from pathlib import Path

from declawd.config import Settings
from declawd.lab.config import LAB_DNS_ADDRESS, LAB_LINK_ADDRESS, LAB_LINK_GATEWAY, LabConfig

NETNS_DIR = Path("/var/run/netns")
UPLINK = "up0"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class TopologyError(RuntimeError):
    pass


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def netns_exists(name: str) -> bool:
    return netns_path(name).exists()


def _ip(*args: str, netns: str | None = None, stdin: str | None = None) -> str:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise TopologyError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    return proc.stdout


def ensure_lab_netns(settings: Settings, config: LabConfig) -> None:
    """Create/converge the lab netns: lo up, host + DNS addresses as /32 (/128) on lo,
    stale ones removed, and a default route via the gateway once `up0` is usable."""
    name = settings.lab_netns
    if not netns_exists(name):
        try:
            _ip("netns", "add", name)
        except TopologyError:
            if not netns_exists(name):  # else the gateway's ensure_lab_link won the race
                raise
    _ip("link", "set", "lo", "up", netns=name)
    wanted = {ipaddress.ip_address(LAB_DNS_ADDRESS), *config.bound_addresses()}
    present = set(_lo_addresses(name))
    batch = []
    for ip in sorted(wanted - present, key=str):
        plen = 32 if ip.version == 4 else 128
        extra = "" if ip.version == 4 else " nodad"
        batch.append(f"address add {ip}/{plen} dev lo{extra}")
    for ip in sorted(present - wanted, key=str):
        batch.append(f"address del {ip}/{32 if ip.version == 4 else 128} dev lo")
    if batch:
        _ip("-batch", "-", netns=name, stdin="\n".join(batch) + "\n")
    ensure_lab_route(settings)


def _lo_addresses(netns: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Host addresses (/32, /128) on lo, leaving 127.0.0.1/8 and ::1 alone."""
    data = json.loads(_ip("-j", "address", "show", "dev", "lo", netns=netns) or "[]")
    out = []
    for link in data:
        for a in link.get("addr_info", []):
            ip = ipaddress.ip_address(a["local"])
            if not ip.is_loopback and a.get("prefixlen") == ip.max_prefixlen:
                out.append(ip)
    return out


def ensure_lab_route(settings: Settings) -> bool:
    """Default route via the gateway when `up0` exists with the lab address; True if set.

    Not strictly needed while the gateway masquerades (replies go to 100.96.0.1 on the
    connected /30), but it keeps the lab usable by an unmasqueraded client too.
    """
    name = settings.lab_netns
    data = json.loads(_ip("-j", "address", "show", netns=name) or "[]")
    link = next((link for link in data if link.get("ifname") == UPLINK), None)
    if link is None:
        return False
    if not any(a.get("local") == LAB_LINK_ADDRESS for a in link.get("addr_info", [])):
        return False
    if "UP" not in link.get("flags", []):
        return False
    _ip("route", "replace", "default", "via", LAB_LINK_GATEWAY, "dev", UPLINK, netns=name)
    return True


def remove_lab_netns(settings: Settings) -> None:
    """Idempotent teardown of the lab netns and its link to the gateway.

    `up0` is deleted explicitly first: a netns whose last reference is still being
    dropped is destroyed asynchronously by the kernel, which would leave `lab0` in the
    gateway netns for a moment after this returns.
    """
    name = settings.lab_netns
    if netns_exists(name):
        with contextlib.suppress(TopologyError):
            _ip("link", "delete", "up0", netns=name)
        try:
            _ip("netns", "delete", name)
        except TopologyError:
            if netns_exists(name):
                raise


def enter_netns(name: str) -> None:
    """Move the calling thread into netns `name` (threads it starts later inherit it)."""
    fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def socket_in_netns(name: str, family: int, kind: int) -> socket.socket:
    """A socket created in netns `name`; a socket keeps its netns for life, so a throw-away
    thread enters the netns and the calling thread stays where it is."""
    result: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            enter_netns(name)
            result.append(socket.socket(family, kind))
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=make, name=f"netns-{name}")
    t.start()
    t.join()
    out = result[0]
    if isinstance(out, BaseException):
        raise out
    return out
