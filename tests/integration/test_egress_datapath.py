"""Egress datapath against real namespaces: gateway + a fake lab + sandbox netns.

Needs root. Uses instance `dcwtdp` and pool 10.199.0.0/16 so it never collides with a
running server. The lab here is a minimal stand-in (two /32s on lo, TCP echo on 8080,
UDP echo on 9999); listeners in the gateway netns stand in for the resolver and proxy.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from declawd.config import Settings
from declawd.egress import nft as nftc
from declawd.egress import nftctl
from declawd.egress.network import (
    Gateway,
    SandboxNetwork,
    count_resources,
    remove_slot_rules,
    sweep,
)
from declawd.egress.nfnetlink import NFT_MSG_DELSETELEM, NFT_MSG_NEWSETELEM, Element, ipv4_element
from declawd.egress.nftctl import NftError, nft_sync
from declawd.egress.nftsets import NftSets, resolved_key
from declawd.egress.policy import EgressPolicy
from declawd.host import in_netns, netns_exists, netns_path
from declawd.lab.upstream import LabUpstream

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

EVIL = "203.0.113.66"
GOOD = "203.0.113.10"

LAB_SERVER = r"""
import socket, sys, threading
log = open(sys.argv[1], "a", buffering=1)
def tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 8080)); s.listen(64)
    while True:
        c, _ = s.accept()
        def serve(c=c):
            try:
                c.sendall(b"lab:" + c.getsockname()[0].encode() + b"\n")
                while (d := c.recv(4096)):
                    c.sendall(b"echo:" + d)
            except OSError:
                pass
            c.close()
        threading.Thread(target=serve, daemon=True).start()
def udp(addr):
    # Bound per address: a 0.0.0.0 socket would answer from up0's address, not the host's.
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((addr, 9999))
    while True:
        d, a = u.recvfrom(4096)
        log.write(f"{a[0]} {d.decode(errors='replace')}\n")
        u.sendto(b"udp:" + d, a)
for a in sys.argv[2:]:
    threading.Thread(target=udp, args=(a,), daemon=True).start()
print("ready", flush=True)
tcp()
"""

GW_SERVER = r"""
import socket, struct, threading
def proxy():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 15001)); s.listen(64)
    while True:
        c, _ = s.accept()
        raw = c.getsockopt(socket.SOL_IP, 80, 16)
        port = struct.unpack("!H", raw[2:4])[0]; ip = socket.inet_ntoa(raw[4:8])
        c.sendall(f"proxy:{ip}:{port}\n".encode()); c.close()
def dns_udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 5353))
    while True:
        d, a = u.recvfrom(4096); u.sendto(b"dns:" + d, a)
def dns_tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 5353)); s.listen(16)
    while True:
        c, _ = s.accept(); c.sendall(b"dns-tcp\n"); c.close()
for f in (dns_udp, dns_tcp):
    threading.Thread(target=f, daemon=True).start()
print("ready", flush=True)
proxy()
"""

PROBE = r"""
import errno, json, socket, sys
def tcp(ip, port):
    s = socket.socket(); s.settimeout(5)
    try:
        s.connect((ip, port)); return "ok:" + s.recv(100).decode().strip()
    except ConnectionRefusedError: return "refused"
    except ConnectionResetError: return "reset"
    except socket.timeout: return "timeout"
    except OSError as e: return "oserror:" + errno.errorcode.get(e.errno, str(e.errno))
    finally: s.close()
def udp(ip, port, payload="hi"):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
    try:
        s.connect((ip, port)); s.send(payload.encode()); return "ok:" + s.recv(100).decode()
    except socket.timeout: return "timeout"
    except OSError as e: return "oserror:" + errno.errorcode.get(e.errno, str(e.errno))
    finally: s.close()
def spoof(src, dst, port, payload):
    import struct
    data = payload.encode()
    udph = struct.pack("!HHHH", 40000, port, 8 + len(data), 0) + data
    iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udph), 1, 0, 64, 17, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    r.sendto(iph + udph, (dst, 0)); return "sent"
calls = json.loads(sys.argv[1])
print(json.dumps([globals()[c[0]](*c[1:]) for c in calls]))
"""

HOLD = r"""
import json, socket, sys
conns = {}
for ip in sys.argv[1:]:
    s = socket.create_connection((ip, 8080), timeout=10); s.recv(100); conns[ip] = s
print("ready", flush=True)
sys.stdin.readline()
out = {}
for ip, s in conns.items():
    try:
        s.sendall(b"ping"); d = s.recv(100)
        out[ip] = "ok:" + d.decode() if d else "eof"
    except ConnectionResetError: out[ip] = "reset"
    except socket.timeout: out[ip] = "timeout"
    except OSError as e: out[ip] = "oserror:" + str(e.errno)
print(json.dumps(out), flush=True)
"""


def nsenter(netns: str, *argv: str) -> list[str]:
    return in_netns(argv, netns)


def probe(sbx: SandboxNetwork, *calls: list[object]) -> list[str]:
    out = subprocess.run(
        nsenter(sbx.netns, sys.executable, "-c", PROBE, json.dumps(calls)),
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    result: list[str] = json.loads(out.stdout)
    return result


def start(netns: str, code: str, *args: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        nsenter(netns, sys.executable, "-c", code, *args),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def stop(p: subprocess.Popen[str]) -> None:
    p.kill()
    p.wait()


class Env:
    def __init__(self, settings: Settings, udp_log: Path) -> None:
        self.settings = settings
        self.udp_log = udp_log
        self.gw = settings.gateway_netns

    def sandbox(self, sid: str, slot: int, policy: EgressPolicy) -> SandboxNetwork:
        return asyncio.run(SandboxNetwork.create(self.settings, sid, slot, policy))


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    subprocess.run(["/work/shared/tools/egress-guard"], check=False, capture_output=True)
    tmp = Path(tempfile.mkdtemp(prefix="dcwtdp-"))
    settings = Settings(state_dir=tmp, instance="dcwtdp", pool="10.199.0.0/16", lab=True)
    gateway = Gateway(settings, LabUpstream(settings))
    procs: list[subprocess.Popen[str]] = []
    try:
        asyncio.run(gateway.ensure())
        lab = settings.lab_netns
        for addr in (GOOD, EVIL):
            subprocess.run(nsenter(lab, "ip", "addr", "replace", f"{addr}/32", "dev", "lo"),
                           check=True)  # fmt: skip
        udp_log = tmp / "udp.log"
        procs.append(start(lab, LAB_SERVER, str(udp_log), GOOD, EVIL))
        procs.append(start(settings.gateway_netns, GW_SERVER))
        yield Env(settings, udp_log)
    finally:
        for p in procs:
            stop(p)
        asyncio.run(sweep(settings, keep=set()))
        asyncio.run(gateway.teardown())
        subprocess.run(["ip", "netns", "delete", settings.lab_netns], check=False)
        assert not netns_exists(settings.gateway_netns)


@pytest.fixture
def sandboxes(env: Env) -> Iterator[list[SandboxNetwork]]:
    made: list[SandboxNetwork] = []
    try:
        yield made
    finally:
        for s in made:
            asyncio.run(s.destroy())


def test_allow_cidr_with_deny_all(env: Env, sandboxes: list[SandboxNetwork]) -> None:
    pol = EgressPolicy.parse([f"{GOOD}/32"], ["0.0.0.0/0"])
    sandboxes.append(sbx := env.sandbox("sbx-000000000001", 1, pol))
    good, evil, cf = probe(sbx, ["tcp", GOOD, 8080], ["tcp", EVIL, 8080], ["tcp", "1.1.1.1", 443])
    assert good == f"ok:lab:{GOOD}"
    assert evil == "refused"
    assert cf == "refused"


def test_floor_refused_under_open_policy(env: Env, sandboxes: list[SandboxNetwork]) -> None:
    sandboxes.append(sbx := env.sandbox("sbx-000000000002", 2, EgressPolicy.open()))
    sandboxes.append(other := env.sandbox("sbx-000000000003", 3, EgressPolicy.open()))
    res = probe(
        sbx,
        ["tcp", GOOD, 8080],  # positive control: open policy reaches the lab
        ["tcp", "169.254.169.254", 80],
        ["tcp", "10.1.2.3", 80],
        ["tcp", other.address, 8080],
        ["tcp", sbx.gateway_address, 22],
        ["tcp", "198.18.0.1", 443],
    )
    assert res[0] == f"ok:lab:{GOOD}"
    assert res[1:] == ["refused"] * 5


def test_deny_cidr_under_open_policy(env: Env, sandboxes: list[SandboxNetwork]) -> None:
    pol = EgressPolicy.parse([], [f"{EVIL}/32"])
    sandboxes.append(sbx := env.sandbox("sbx-000000000004", 4, pol))
    tcp_ok, tcp_no, udp_ok, udp_no = probe(
        sbx,
        ["tcp", GOOD, 8080],
        ["tcp", EVIL, 8080],
        ["udp", GOOD, 9999, "open-udp"],
        ["udp", EVIL, 9999, "denied-udp"],
    )
    assert tcp_ok == f"ok:lab:{GOOD}"
    assert tcp_no == "refused"
    assert udp_ok == "ok:udp:open-udp"
    assert udp_no == "oserror:EHOSTUNREACH"  # ICMP admin-prohibited, not a timeout
    assert "denied-udp" not in env.udp_log.read_text()


def test_forged_source_dropped(env: Env, sandboxes: list[SandboxNetwork]) -> None:
    sandboxes.append(sbx := env.sandbox("sbx-000000000005", 5, EgressPolicy.open()))
    forged = "10.199.0.10"  # another slot's address
    # Forged first, then the same datagram from the real address as the positive control:
    # once the control arrived, the forged one (same path, sent earlier) would have too.
    res = probe(sbx, ["spoof", forged, GOOD, 9999, "forged-pkt"], ["udp", GOOD, 9999, "real-pkt"])
    assert res == ["sent", "ok:udp:real-pkt"]
    log = env.udp_log.read_text()
    assert "real-pkt" in log
    assert "forged-pkt" not in log


def ifindex(gw: str, slot: int) -> int:
    out = subprocess.run(["ip", "-n", gw, "-j", "link", "show", nftc.ifname(slot)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return int(json.loads(out.stdout)[0]["ifindex"])


def test_cidrs_of_every_length_match_exactly(env: Env, sandboxes: list[SandboxNetwork]) -> None:
    """The masked lookups (one hash set per prefix length) against addresses inside,
    at the edge of and just outside each allowed network, from two sandboxes at once."""
    pol = EgressPolicy.parse(["203.0.113.10/31", "198.51.100.0/24"], ["0.0.0.0/0"])
    sandboxes.append(sbx := env.sandbox("sbx-000000000022", 22, pol))
    sandboxes.append(other := env.sandbox("sbx-000000000023", 23, EgressPolicy.parse(
        ["203.0.113.66/32"], ["0.0.0.0/0"])))  # fmt: skip
    for addr in ("203.0.113.11", "198.51.100.1", "198.51.100.254"):
        subprocess.run(["ip", "-n", env.settings.lab_netns, "addr", "add", f"{addr}/32",
                        "dev", "lo"], check=False)  # fmt: skip
    got = probe(
        sbx,
        ["tcp", GOOD, 8080],  # 203.0.113.10, in the /31
        ["tcp", "203.0.113.11", 8080],  # the /31's other address
        ["tcp", "198.51.100.254", 8080],  # in the /24
        ["tcp", EVIL, 8080],  # another sandbox's CIDR, not this one's
    )
    assert got == [f"ok:lab:{GOOD}", "ok:lab:203.0.113.11", "ok:lab:198.51.100.254", "refused"]
    assert probe(other, ["tcp", EVIL, 8080], ["tcp", GOOD, 8080]) == [f"ok:lab:{EVIL}", "refused"]
    # /0: everything that is not the floor.
    asyncio.run(sbx.update_policy(EgressPolicy.parse(["0.0.0.0/0"], [])))
    assert probe(sbx, ["tcp", EVIL, 8080], ["tcp", "169.254.169.254", 80]) == [
        f"ok:lab:{EVIL}", "refused"]  # fmt: skip


def test_resolved_set_redirects_tcp_to_proxy(env: Env, sandboxes: list[SandboxNetwork]) -> None:
    pol = EgressPolicy.parse(["lab.example.com"], ["0.0.0.0/0"])
    sandboxes.append(sbx := env.sandbox("sbx-000000000006", 6, pol))
    before = probe(sbx, ["tcp", EVIL, 8080])
    nft_sync(env.gw, nftc.add_resolved_script(ifindex(env.gw, 6), [EVIL], 300))
    tcp, udp, unresolved = probe(
        sbx, ["tcp", EVIL, 8080], ["udp", EVIL, 9999, "quic"], ["tcp", GOOD, 8080]
    )
    assert before == ["refused"]
    assert tcp == f"ok:proxy:{EVIL}:8080"
    assert udp == "oserror:EHOSTUNREACH"
    assert unresolved == "refused"


def test_dns_to_any_address_lands_on_resolver(env: Env, sandboxes: list[SandboxNetwork]) -> None:
    pol = EgressPolicy.parse(["lab.example.com"], ["0.0.0.0/0"])
    sandboxes.append(sbx := env.sandbox("sbx-000000000007", 7, pol))
    res = probe(sbx, ["udp", "1.1.1.1", 53, "q1"], ["udp", EVIL, 53, "q2"], ["tcp", "8.8.8.8", 53])
    assert res == ["ok:dns:q1", "ok:dns:q2", "ok:dns-tcp"]
    # The resolver port itself is reachable only through the redirect.
    assert probe(sbx, ["tcp", sbx.gateway_address, 15001]) == ["refused"]


def _chain_rules(gw: str) -> dict[str, int]:
    data = json.loads(nft_sync(gw, f"list table {nftc.TABLE}", json_out=True))["nftables"]
    counts: dict[str, int] = {}
    for item in data:
        if "rule" in item:
            counts[item["rule"]["chain"]] = counts.get(item["rule"]["chain"], 0) + 1
    return counts


def test_per_packet_rules_independent_of_sandbox_count(
    env: Env, sandboxes: list[SandboxNetwork]
) -> None:
    pol = EgressPolicy.parse([f"{GOOD}/32"], ["0.0.0.0/0"])
    sandboxes.append(env.sandbox("sbx-000000000008", 8, pol))
    one = _chain_rules(env.gw)
    res_one = asyncio.run(count_resources(env.settings))
    for slot in (9, 10, 11):
        sandboxes.append(env.sandbox(f"sbx-0000000000{slot:02d}", slot, pol))
    # Sandboxes are set elements: the chains and their rules do not change at all.
    assert _chain_rules(env.gw) == one
    res = asyncio.run(count_resources(env.settings))
    assert res["slots"] == res_one["slots"] + 3
    assert res["set_elements"] == res_one["set_elements"] + 3 * 7  # flags 2, src, cidr, records 3


def test_update_policy_cuts_no_longer_allowed(env: Env, sandboxes: list[SandboxNetwork]) -> None:
    both = EgressPolicy.parse([f"{GOOD}/32", f"{EVIL}/32"], ["0.0.0.0/0"])
    sandboxes.append(sbx := env.sandbox("sbx-000000000012", 12, both))
    holder = start(sbx.netns, HOLD, GOOD, EVIL)
    try:
        asyncio.run(sbx.update_policy(EgressPolicy.parse([f"{GOOD}/32"], ["0.0.0.0/0"])))
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write("go\n")
        holder.stdin.flush()
        out = json.loads(holder.stdout.readline())
    finally:
        stop(holder)
    assert out[GOOD] == "ok:echo:ping"
    assert out[EVIL] == "reset"
    assert probe(sbx, ["tcp", EVIL, 8080], ["tcp", GOOD, 8080]) == ["refused", f"ok:lab:{GOOD}"]


def test_rules_survive_gateway_ensure(env: Env, sandboxes: list[SandboxNetwork]) -> None:
    pol = EgressPolicy.parse([f"{GOOD}/32"], ["0.0.0.0/0"])
    sandboxes.append(sbx := env.sandbox("sbx-000000000013", 13, pol))
    before = _chain_rules(env.gw), nftctl.read_record(env.gw, 13)
    asyncio.run(Gateway(env.settings, LabUpstream(env.settings)).ensure())  # a server restart
    assert (_chain_rules(env.gw), nftctl.read_record(env.gw, 13)) == before
    assert probe(sbx, ["tcp", GOOD, 8080], ["tcp", EVIL, 8080]) == [f"ok:lab:{GOOD}", "refused"]


def test_a_table_of_the_old_layout_is_migrated_at_ensure(
    env: Env, sandboxes: list[SandboxNetwork]
) -> None:
    """A node upgraded while sandboxes run: `ensure` turns the previous layout (per-sandbox
    chains) into the flat one with every sandbox's rules, in one transaction."""
    pol = EgressPolicy.parse([f"{GOOD}/32"], ["0.0.0.0/0"])
    sandboxes.append(sbx := env.sandbox("sbx-000000000024", 24, pol))
    assert sbx.address == "10.199.0.98"  # the address nft_old_layout.nft was made for
    old = (Path(__file__).parent / "nft_old_layout.nft").read_text()
    nft_sync(env.gw, f"delete table {nftc.TABLE}\n{old}")
    assert "fwd_by_if" in nft_sync(env.gw, f"list table {nftc.TABLE}")
    assert probe(sbx, ["tcp", GOOD, 8080], ["tcp", EVIL, 8080]) == [f"ok:lab:{GOOD}", "refused"]
    asyncio.run(Gateway(env.settings, LabUpstream(env.settings)).ensure())
    table = nft_sync(env.gw, f"list table {nftc.TABLE}")
    assert "_by_if" not in table and "fwd_24" not in table and "a4_24" not in table
    assert probe(sbx, ["tcp", GOOD, 8080], ["tcp", EVIL, 8080]) == [f"ok:lab:{GOOD}", "refused"]
    assert nftctl.read_record(env.gw, 24) == nftc.Elements(
        (), nftc.sandbox_elements(sbx.address, pol).keyed
    )
    # The old table's other sandbox (no veth here) came along, and is removed exactly.
    assert nftctl.read_record(env.gw, 25) != nftc.NOTHING
    asyncio.run(remove_slot_rules(env.gw, 25))
    assert nftctl.read_record(env.gw, 25) == nftc.NOTHING
    assert '"s25"' not in nft_sync(env.gw, f"list table {nftc.TABLE}")
    rules, held = _chain_rules(env.gw), nftctl.read_record(env.gw, 24)
    asyncio.run(Gateway(env.settings, LabUpstream(env.settings)).ensure())  # no migration now
    assert (_chain_rules(env.gw), nftctl.read_record(env.gw, 24)) == (rules, held)


def test_destroy_leaves_nothing(env: Env) -> None:
    before = asyncio.run(count_resources(env.settings))
    sbx = env.sandbox("sbx-000000000014", 14, EgressPolicy.parse([], [f"{EVIL}/32"]))
    during = asyncio.run(count_resources(env.settings))
    asyncio.run(sbx.destroy())
    asyncio.run(sbx.destroy())  # idempotent
    after = asyncio.run(count_resources(env.settings))
    assert during["slots"] == before["slots"] + 1
    assert during["set_elements"] > before["set_elements"]
    assert during["sandbox_netns"] == before["sandbox_netns"] + 1
    assert after == before
    # A fresh handle (another process after a crash) on a half-created sandbox.
    half = SandboxNetwork.attach(env.settings, "sbx-000000000015", 15)
    subprocess.run(["ip", "netns", "add", half.netns], check=True)
    asyncio.run(half.destroy())
    assert asyncio.run(count_resources(env.settings)) == before


def test_sandbox_network_is_made_as_ip_would_make_it(
    env: Env, sandboxes: list[SandboxNetwork]
) -> None:
    """The in-process create (rtnetlink, /proc/sys) leaves what `ip` itself reads back."""
    sandboxes.append(sbx := env.sandbox("sbx-000000000019", 19, EgressPolicy()))

    def ip(*argv: str) -> list[dict[str, object]]:
        out = subprocess.run(["ip", "-j", *argv], check=True, capture_output=True, text=True)
        return json.loads(out.stdout or "[]")  # type: ignore[no-any-return]

    assert sbx.netns in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                       text=True, check=True).stdout  # fmt: skip
    (gw_link,) = ip("-n", env.gw, "addr", "show", "dev", sbx.ifname)
    assert "UP" in gw_link["flags"]  # type: ignore[operator]
    assert ip("-n", env.gw, "link", "show", "dev", sbx.ifname)[0]["ifalias"] == sbx.sandbox_id
    assert [a["local"] for a in gw_link["addr_info"]] == [sbx.gateway_address]  # type: ignore[index, attr-defined]
    links = {link["ifname"]: link for link in ip("-n", sbx.netns, "addr", "show")}
    assert set(links) == {"lo", "eth0"}
    assert "UP" in links["lo"]["flags"] and "UP" in links["eth0"]["flags"]  # type: ignore[operator]
    # IPv6 is off everywhere: no ::1, no link-local address on eth0.
    assert [a["local"] for a in links["eth0"]["addr_info"]] == [sbx.address]  # type: ignore[index, attr-defined]
    assert [a["family"] for a in links["lo"]["addr_info"]] == ["inet"]  # type: ignore[index, attr-defined]
    (default,) = ip("-n", sbx.netns, "route", "show", "default")
    assert default["gateway"] == sbx.gateway_address and default["dev"] == "eth0"
    for dev in ("all", "default", "eth0"):
        out = subprocess.run(["ip", "netns", "exec", sbx.netns, "cat",
                              f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"],
                             capture_output=True, text=True, check=True)  # fmt: skip
        assert out.stdout.strip() == "1", dev


@pytest.mark.parametrize("backend", ["netlink", "text"])
def test_failed_create_rolls_back(env: Env, monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    before = asyncio.run(count_resources(env.settings))
    with pytest.raises(ValueError):
        asyncio.run(SandboxNetwork.create(env.settings, "sbx-000000000016", 0, EgressPolicy()))
    # nft fails after the netns and the veth exist: both must be rolled back.
    monkeypatch.setenv("DECLAWD_NFT_CONTROL_BACKEND", backend)
    monkeypatch.setattr(nftc, "sandbox_add_script", lambda *a: "add rule inet declawd nope x\n")
    real = nftctl.apply_batch
    sandbox_netns = env.settings.sandbox_netns("sbx-000000000016")
    # The kernel refuses the batch: sent into the sandbox's netns, which has no such table.
    monkeypatch.setattr(
        nftctl, "apply_batch", lambda _ns, batch, what: real(sandbox_netns, batch, what)
    )
    with pytest.raises(NftError):
        asyncio.run(SandboxNetwork.create(env.settings, "sbx-000000000016", 16, EgressPolicy()))
    assert asyncio.run(count_resources(env.settings)) == before
    assert not netns_exists(env.settings.sandbox_netns("sbx-000000000016"))


def test_sweep_removes_unknown_sandboxes(env: Env) -> None:
    before = asyncio.run(count_resources(env.settings))
    a = env.sandbox("sbx-000000000017", 17, EgressPolicy())
    b = env.sandbox("sbx-000000000018", 18, EgressPolicy())
    try:
        removed = asyncio.run(sweep(env.settings, keep={a.sandbox_id}))
        assert "slot:18" in removed and b.netns in removed
        assert netns_exists(a.netns) and not netns_exists(b.netns)
    finally:
        asyncio.run(a.destroy())
        asyncio.run(b.destroy())
    assert asyncio.run(count_resources(env.settings)) == before


# Resolved-address sets: the netlink backend against the kernel, and against libnftables ----

ADMIT_SCRIPT = r"""
import json, sys
from declawd.egress.nftsets import NftSets, resolved_key
slot, steps = int(sys.argv[1]), json.loads(sys.argv[2])
sets = NftSets()  # backend from DECLAWD_NFTSETS_BACKEND, socket/context in this netns
try:
    for op, timeouts in steps:
        getattr(sets, op)(*(() if timeouts is None else (slot, timeouts)))
    print(sets.backend)
finally:
    sets.close()
"""


def _r4(gw: str, slot: int) -> dict[str, int]:
    """address → configured timeout (s) of the slot's elements in resolved4."""
    out = nft_sync(gw, f"list set {nftc.TABLE} {nftc.RESOLVED4}", json_out=True)
    found: dict[str, int] = {}
    for item in json.loads(out)["nftables"]:
        for el in item.get("set", {}).get("elem", []):
            iface, address = el["elem"]["val"]["concat"]
            if iface == nftc.ifname(slot):
                found[address] = el["elem"]["timeout"]
    return found


@pytest.mark.parametrize("backend", ["netlink", "library", "binary"])
def test_admit_backends_agree(env: Env, sandboxes: list[SandboxNetwork], backend: str) -> None:
    """Same steps through each backend, run in the gateway netns as the daemon does."""
    pol = EgressPolicy.parse(["lab.example.com"], ["0.0.0.0/0"])
    sandboxes.append(env.sandbox("sbx-000000000020", 20, pol))
    steps = [
        ["admit", {GOOD: 300, EVIL: 60.2}],  # 60.2 s rounds up to 61 s
        ["admit", {GOOD: 30}],  # re-admit resets the timeout, even to a shorter one
    ]
    nft_sync(env.gw, nftc.add_resolved_script(ifindex(env.gw, 20), ["203.0.113.99"], 300))
    out = subprocess.run(
        nsenter(env.gw, sys.executable, "-c", ADMIT_SCRIPT, "20", json.dumps(steps)),
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "DECLAWD_NFTSETS_BACKEND": backend},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == backend
    assert _r4(env.gw, 20) == {GOOD: 30, EVIL: 61, "203.0.113.99": 300}
    # The object deletes what it admitted itself; a daemon starts with `reset` (flush).
    steps = [["admit", {GOOD: 30}], ["replace", {EVIL: 100}]]
    out = subprocess.run(
        nsenter(env.gw, sys.executable, "-c", ADMIT_SCRIPT, "20", json.dumps(steps)),
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "DECLAWD_NFTSETS_BACKEND": backend},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert _r4(env.gw, 20) == {EVIL: 100, "203.0.113.99": 300}
    out = subprocess.run(
        nsenter(env.gw, sys.executable, "-c", ADMIT_SCRIPT, "20", json.dumps([["reset", None]])),
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "DECLAWD_NFTSETS_BACKEND": backend},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert _r4(env.gw, 20) == {}


def test_netlink_admit_feeds_the_datapath_and_reports_errors(
    env: Env, sandboxes: list[SandboxNetwork]
) -> None:
    pol = EgressPolicy.parse(["lab.example.com"], ["0.0.0.0/0"])
    sandboxes.append(sbx := env.sandbox("sbx-000000000021", 21, pol))
    sets = NftSets(backend="netlink", netns_path=netns_path(env.gw))
    try:
        assert probe(sbx, ["tcp", EVIL, 8080]) == ["refused"]
        sets.admit(21, {EVIL: 300})
        assert _r4(env.gw, 21) == {EVIL: 300}
        assert probe(sbx, ["tcp", EVIL, 8080]) == [f"ok:proxy:{EVIL}:8080"]
        with pytest.raises(NftError, match="no interface s999"):
            sets.admit(999, {GOOD: 60})  # no such sandbox: never admitted
        with pytest.raises(NftError, match="r4_21: No such file"):
            sets._netlink._sock.setelems(  # type: ignore[union-attr]
                nftc.TABLE, "r4_21", [(NFT_MSG_NEWSETELEM, [ipv4_element(GOOD, 60)])]
            )  # no such set
        # One batch is all or nothing: the add before a failing delete is rolled back.
        with pytest.raises(NftError, match="No such file"):
            index = ifindex(env.gw, 21)
            sets._netlink._sock.setelems(  # type: ignore[union-attr]
                nftc.TABLE,
                nftc.RESOLVED4,
                [
                    (NFT_MSG_NEWSETELEM, [Element(resolved_key(index, GOOD), 60_000)]),
                    (NFT_MSG_DELSETELEM, [Element(resolved_key(index, "203.0.113.99"))]),
                ],
            )
        assert _r4(env.gw, 21) == {EVIL: 300}
        # After errors (and their late ACKs) the socket keeps working.
        sets.replace(21, {GOOD: 120})
        assert _r4(env.gw, 21) == {GOOD: 120}
        sets.replace(21, {})
        assert _r4(env.gw, 21) == {}
    finally:
        sets.close()
        sets.close()  # idempotent
    with pytest.raises(NftError, match="closed"):
        sets.admit(21, {GOOD: 60})


# Content inspection: all TCP to the proxy, QUIC refused (issue 9) ------------------------


def test_inspection_sends_all_tcp_to_the_proxy_and_refuses_quic(
    env: Env, sandboxes: list[SandboxNetwork]
) -> None:
    pol = EgressPolicy.open()
    sbx = asyncio.run(
        SandboxNetwork.create(env.settings, "sbx-000000000030", 30, pol, inspect=True)
    )
    sandboxes.append(sbx)
    tcp, floor, quic, udp = probe(
        sbx,
        ["tcp", GOOD, 8080],
        ["tcp", "10.1.2.3", 80],
        ["udp", GOOD, 443, "quic"],
        ["udp", GOOD, 9999, "plain-udp"],
    )
    assert tcp == f"ok:proxy:{GOOD}:8080"  # an open destination: the proxy judges it
    assert floor == "refused"  # the floor stays the kernel's
    assert quic == "oserror:EHOSTUNREACH"
    assert udp == "ok:udp:plain-udp"
    asyncio.run(sbx.update_policy(pol))  # inspection off: exactly today's rules
    assert probe(sbx, ["tcp", GOOD, 8080]) == [f"ok:lab:{GOOD}"]


def test_turning_inspection_on_cuts_flows_that_bypass_the_proxy(
    env: Env, sandboxes: list[SandboxNetwork]
) -> None:
    pol = EgressPolicy.parse([f"{GOOD}/32"], ["0.0.0.0/0"])
    sandboxes.append(sbx := env.sandbox("sbx-000000000031", 31, pol))
    holder = start(sbx.netns, HOLD, GOOD)
    try:
        asyncio.run(sbx.update_policy(pol, inspect=True))
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write("go\n")
        holder.stdin.flush()
        out = json.loads(holder.stdout.readline())
    finally:
        stop(holder)
    assert out[GOOD] == "reset"  # an established L4 flow would have skipped the proxy
    assert probe(sbx, ["tcp", GOOD, 8080]) == [f"ok:proxy:{GOOD}:8080"]
