"""host.rtnl against the kernel: every operation in a scratch netns pair, read back by `ip`.

Needs root. The namespaces are dcwrt-<pid>-gw/-sb (made and always deleted here); the veth
is s1 on the gateway side, eth0 on the sandbox side, as `SandboxNetwork` makes them.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from declawd.host import NetnsThread, delete_netns_sync, netns_path
from declawd.host.rtnl import Rtnl, RtnlError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]


@dataclass
class Pair:
    gw: NetnsThread
    sb: NetnsThread

    def sb_fd(self) -> int:
        return os.open(netns_path(self.sb.netns), os.O_RDONLY | os.O_CLOEXEC)


@pytest.fixture
def pair() -> Iterator[Pair]:
    names = [f"dcwrt-{os.getpid()}-gw", f"dcwrt-{os.getpid()}-sb"]
    threads: list[NetnsThread] = []
    try:
        for name in names:
            threads.append(NetnsThread(name, create=True))
        yield Pair(*threads)
    finally:
        for thread in threads:
            thread.close()
        for name in names:
            delete_netns_sync(name)  # takes the veth along


def ip(netns: NetnsThread, *args: str) -> Any:
    out = subprocess.run(["ip", "-n", netns.netns, "-j", *args], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return json.loads(out) if out.strip() else []


def link(netns: NetnsThread, name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = ip(netns, "-d", "link", "show", "dev", name)
    assert len(found) == 1
    return found[0]


def inet(netns: NetnsThread, name: str) -> list[tuple[str, str, int]]:
    return [(a["family"], a["local"], a["prefixlen"])
            for entry in ip(netns, "addr", "show", "dev", name) for a in entry["addr_info"]
            if a["family"] == "inet" or a.get("scope") == "global"]  # fmt: skip


def default_routes(netns: NetnsThread) -> list[dict[str, Any]]:
    """Of the main table (`ip route show default` would leave out the protocol)."""
    return [r for r in ip(netns, "route", "show", "table", "main") if r["dst"] == "default"]


def gateway_end(pair: Pair) -> int:
    """What `SandboxNetwork` does on the gateway side; returns s1's index."""
    fd = pair.sb_fd()
    try:
        with Rtnl() as rtnl:
            assert rtnl.delete("s1") is False
            rtnl.add_veth("s1", "eth0", fd)
            idx = rtnl.require("s1")
            rtnl.set_link(idx, up=True, alias="sbx-1234")
            rtnl.replace_address(idx, "10.201.0.1", 30)
            return idx
    finally:
        os.close(fd)


def sandbox_end() -> int:
    with Rtnl() as rtnl:
        rtnl.set_link(rtnl.require("lo"), up=True)
        idx = rtnl.require("eth0")
        rtnl.replace_address(idx, "10.201.0.2", 30)
        rtnl.set_link(idx, up=True)
        rtnl.replace_default_route("10.201.0.1")
        return idx


def test_a_sandbox_link_pair_as_the_network_makes_it(pair: Pair) -> None:
    idx = pair.gw.call(gateway_end, pair)
    sb_idx = pair.sb.call(sandbox_end)

    s1 = link(pair.gw, "s1")
    assert s1["ifindex"] == idx
    assert s1["linkinfo"]["info_kind"] == "veth"
    assert s1["ifalias"] == "sbx-1234"
    assert "UP" in s1["flags"]
    eth0 = link(pair.sb, "eth0")  # the peer was made in the sandbox's netns
    assert eth0["ifindex"] == sb_idx
    assert eth0["link_index"] == idx and s1["link_index"] == sb_idx
    assert "UP" in eth0["flags"] and "ifalias" not in eth0
    assert "UP" in link(pair.sb, "lo")["flags"]
    assert inet(pair.gw, "s1") == [("inet", "10.201.0.1", 30)]
    assert inet(pair.sb, "eth0") == [("inet", "10.201.0.2", 30)]
    assert default_routes(pair.sb) == [{"dst": "default", "gateway": "10.201.0.1",
                                        "dev": "eth0", "protocol": "static", "flags": []}]  # fmt: skip

    assert pair.gw.call(lambda: Rtnl().aliases()) == {"lo": "", "s1": "sbx-1234"}
    assert pair.sb.call(lambda: Rtnl().aliases()) == {"lo": "", "eth0": ""}


def test_replaces_are_idempotent_and_replace(pair: Pair) -> None:
    pair.gw.call(gateway_end, pair)
    pair.sb.call(sandbox_end)

    def again() -> None:
        with Rtnl() as rtnl:
            idx = rtnl.require("eth0")
            rtnl.replace_address(idx, "10.201.0.2", 30)
            rtnl.replace_address(idx, "10.201.0.2", 30)
            rtnl.replace_default_route("10.201.0.1")
            rtnl.replace_address(idx, "10.201.0.6", 30)  # a second address on the link
            rtnl.replace_address(idx, "fd00::2", 64)
            rtnl.replace_default_route("10.201.0.5")  # the one default route, moved

    pair.sb.call(again)
    assert inet(pair.sb, "eth0") == [("inet", "10.201.0.2", 30), ("inet", "10.201.0.6", 30),
                                     ("inet6", "fd00::2", 64)]  # fmt: skip
    routes = default_routes(pair.sb)
    assert [(r["gateway"], r["protocol"]) for r in routes] == [("10.201.0.5", "static")]


def test_set_link_brings_down_and_changes_the_alias(pair: Pair) -> None:
    idx = pair.gw.call(gateway_end, pair)

    def change() -> dict[str, str]:
        with Rtnl() as rtnl:
            rtnl.set_link(idx, up=False)  # the alias stays
            assert "UP" not in link(pair.gw, "s1")["flags"]
            assert link(pair.gw, "s1")["ifalias"] == "sbx-1234"
            rtnl.set_link(idx, up=True, alias="sbx-5678")
            first = rtnl.aliases()
            rtnl.set_link(idx, up=True, alias="")  # clears it
            return {**first, "cleared": rtnl.aliases()["s1"]}

    assert pair.gw.call(change) == {"lo": "", "s1": "sbx-5678", "cleared": ""}
    assert "UP" in link(pair.gw, "s1")["flags"]


def test_refusals_name_the_operation(pair: Pair) -> None:
    idx = pair.gw.call(gateway_end, pair)

    def refusals() -> list[tuple[str, int]]:
        out = []
        fd = pair.sb_fd()
        with Rtnl() as rtnl:
            assert rtnl.index("s1") == idx and rtnl.index("dcwrt-none") is None
            assert rtnl.index("x" * 20) is None  # longer than IFNAMSIZ: none either
            calls = [
                lambda: rtnl.require("dcwrt-none"),
                lambda: rtnl.add_veth("s1", "eth9", fd),  # s1 exists here
                lambda: rtnl.add_veth("s2", "eth0", fd),  # eth0 exists there
                lambda: rtnl.set_link(idx + 1000),
                lambda: rtnl.replace_address(idx + 1000, "10.201.0.9", 30),
                lambda: rtnl.replace_address(idx, "10.201.0.9", 40),
                lambda: rtnl.replace_default_route("10.77.0.1"),  # no route to it
                lambda: rtnl.delete("x" * 20),
            ]
            for call in calls:
                with pytest.raises(RtnlError) as info:
                    call()
                assert str(info.value) == f"rtnetlink {info.value.what}: " + os.strerror(
                    info.value.errno
                )
                out.append((info.value.what, info.value.errno))
        os.close(fd)
        return out

    assert pair.gw.call(refusals) == [
        ("lookup dcwrt-none", errno.ENODEV),
        ("link add s1 type veth peer eth9", errno.EEXIST),
        ("link add s2 type veth peer eth0", errno.EEXIST),
        (f"link set {idx + 1000}", errno.ENODEV),
        (f"addr replace 10.201.0.9/30 dev {idx + 1000}", errno.ENODEV),
        (f"addr replace 10.201.0.9/40 dev {idx}", errno.EINVAL),
        ("route replace default via 10.77.0.1", errno.ENETUNREACH),
        ("link del " + "x" * 20, errno.ERANGE),
    ]
    assert [e["ifname"] for e in ip(pair.gw, "link", "show")] == ["lo", "s1"]


def test_delete_takes_the_peer_and_then_finds_nothing(pair: Pair) -> None:
    pair.gw.call(gateway_end, pair)

    def delete() -> tuple[bool, bool, int | None]:
        with Rtnl() as rtnl:
            return rtnl.delete("s1"), rtnl.delete("s1"), rtnl.index("s1")

    assert pair.gw.call(delete) == (True, False, None)
    assert [e["ifname"] for e in ip(pair.sb, "link", "show")] == ["lo"]


def test_the_socket_stays_in_the_netns_it_was_opened_in(pair: Pair) -> None:
    idx = pair.gw.call(gateway_end, pair)
    rtnl = pair.gw.call(Rtnl)
    try:  # used from this thread, in the host's netns, it still speaks to the gateway's
        assert rtnl.index("s1") == idx
        assert set(rtnl.aliases()) == {"lo", "s1"}
    finally:
        rtnl.close()
        rtnl.close()  # idempotent
