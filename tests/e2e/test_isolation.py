"""SECURITY.md's isolation rows, probed from inside real sandboxes through the official SDK.

As `user` and as `root`, on runc and runsc: the exact capability sets, no_new_privs, no raw /
packet / vsock sockets, no mount, no netlink changes to nft, routes, addresses or sysctls
(and enforcement unchanged after trying them), no host files or processes, no forged source
address, read-only template layers and a private envd socket. Every probe asserts the errno.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from declaw import ALL_TRAFFIC, NetworkPolicy, Sandbox, SecurityPolicy

from declawd.runtime import FORBIDDEN_CAPABILITIES, ROOT_CAPABILITIES

pytestmark = pytest.mark.e2e

USERS = ["user", "root"]

# Runs inside the sandbox: each helper returns "OK"/"OPEN" or the errno name of the failure.
PROBE = r"""
import ctypes, errno, json, os, socket, struct, sys

def errname(e):
    return errno.errorcode.get(e, str(e))

def sock(family, type_, proto=0):
    try:
        s = socket.socket(family, type_, proto)
    except OSError as e:
        return errname(e.errno)
    s.close()
    return "OPEN"

def caps():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb", "NoNewPrivs", "Seccomp"):
            out[k] = v.strip()
    return out

def netlink(proto, msgtype, payload=b"", batch_subsys=None):
    # One request (optionally wrapped in an nfnetlink batch); returns the kernel's ack errno.
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, proto)
    except OSError as e:
        return "socket:" + errname(e.errno)
    try:
        s.settimeout(5)
        s.bind((0, 0))
        msgs = []
        def msg(t, body, flags, seq):
            return struct.pack("=IHHII", 16 + len(body), t, flags, seq, 0) + body
        req, ack = 0x1, 0x4
        if batch_subsys is not None:
            nfgen = struct.pack("=BBH", 0, 0, socket.htons(batch_subsys))
            msgs.append(msg(0x10, nfgen, req, 1))
            msgs.append(msg(msgtype, payload, req | ack, 2))
            msgs.append(msg(0x11, nfgen, req, 3))
        else:
            msgs.append(msg(msgtype, payload, req | ack, 2))
        s.sendto(b"".join(msgs), (0, 0))
        while True:
            data = s.recv(65536)
            off = 0
            while off + 16 <= len(data):
                ln, t, _fl, seq, _pid = struct.unpack_from("=IHHII", data, off)
                if t == 2:  # NLMSG_ERROR
                    err = struct.unpack_from("=i", data, off + 16)[0]
                    return "OK" if err == 0 else errname(-err)
                off += (ln + 3) & ~3
    except OSError as e:
        return errname(e.errno) if e.errno else type(e).__name__
    finally:
        s.close()

def nft_flush():
    # NFT_MSG_DELTABLE without a name and family NFPROTO_UNSPEC == `nft flush ruleset`.
    return netlink(12, (10 << 8) | 2, struct.pack("=BBH", 0, 0, 0), batch_subsys=10)

def route_del_default():
    # RTM_DELROUTE for 0.0.0.0/0 in the main table
    body = struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, 254, 0, 0, 0, 0)
    return netlink(0, 25, body)

def addr_add(ip="10.84.250.250", prefix=16):
    idx = socket.if_nametoindex("eth0")
    body = struct.pack("=BBBBI", socket.AF_INET, prefix, 0, 0, idx)
    attr = struct.pack("=HH", 8, 2) + socket.inet_aton(ip)  # IFA_LOCAL
    attr += struct.pack("=HH", 8, 1) + socket.inet_aton(ip)  # IFA_ADDRESS
    return netlink(0, 20, body + attr)

def ioctl_addr(ip="10.84.250.250"):
    import fcntl
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ifr = struct.pack("16sH2s4s8s", b"eth0", socket.AF_INET, b"\0\0", socket.inet_aton(ip), b"\0" * 8)
        fcntl.ioctl(s.fileno(), 0x8916, ifr)  # SIOCSIFADDR
        return "OK"
    except OSError as e:
        return errname(e.errno)
    finally:
        s.close()

def sysctl(path="/proc/sys/net/ipv4/ip_forward", value="1"):
    try:
        with open(path, "w") as f:
            f.write(value)
        return "OK"
    except OSError as e:
        return errname(e.errno)

def mount_tmpfs(target="/mnt"):
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.mount(b"none", target.encode(), b"tmpfs", 0, None)
    return "OK" if rc == 0 else errname(ctypes.get_errno())

def forged_udp(src="203.0.113.99", dst="203.0.113.10"):
    # Forging needs a raw socket with IP_HDRINCL; without CAP_NET_RAW it never exists.
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    except OSError as e:
        return errname(e.errno)
    s.close()
    return "OPEN"

def bind_foreign(src="10.84.250.250"):
    # Without a raw socket, a normal socket cannot take another source address either.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((src, 0))
        return "OK"
    except OSError as e:
        return errname(e.errno)
    finally:
        s.close()

def transparent():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT needs NET_ADMIN/NET_RAW
        return "OK"
    except OSError as e:
        return errname(e.errno)
    finally:
        s.close()

def pids():
    return sorted(int(p) for p in os.listdir("/proc") if p.isdigit())

def cmdline(pid):
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode()
    except OSError as e:
        return errname(e.errno)

def comms():
    out = []
    for p in pids():
        try:
            out.append(open(f"/proc/{p}/comm").read().strip())
        except OSError:
            pass
    return out

def listdir(path):
    try:
        return sorted(os.listdir(path))
    except OSError as e:
        return errname(e.errno)

def read(path):
    try:
        return open(path).read()
    except OSError as e:
        return errname(e.errno)

def write(path, data="x"):
    try:
        with open(path, "w") as f:
            f.write(data)
        return "OK"
    except OSError as e:
        return errname(e.errno)

def no_new_privs():
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(39, 0, 0, 0, 0)  # PR_GET_NO_NEW_PRIVS

def forged_connect(src="10.84.250.250", dst="203.0.113.10", port=443):
    # IP_TRANSPARENT + bind to an address that is not ours, then connect: the only way a
    # non-raw socket could send with a forged source.
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        try:
            s.setsockopt(socket.SOL_IP, 19, 1)
        except OSError as e:
            return "sockopt:" + errname(e.errno)
        try:
            s.bind((src, 0))
        except OSError as e:
            return "bind:" + errname(e.errno)
        s.connect((dst, port))
        return "CONNECTED"
    except OSError as e:
        return type(e).__name__ + ":" + errname(e.errno or 0)
    finally:
        s.close()

def tcp(host, port, timeout=5):
    try:
        s = socket.create_connection((host, port), timeout=timeout)
    except Exception as e:
        return type(e).__name__
    s.close()
    return "CONNECTED"

print(json.dumps(eval(sys.argv[1])))
"""

CAP_BITS = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_ADMIN": 21,
    "CAP_MKNOD": 27,
    "CAP_AUDIT_WRITE": 29,
    "CAP_SETFCAP": 31,
}
ROOT_MASK = sum(1 << CAP_BITS[c] for c in ROOT_CAPABILITIES)
# runc refuses these address families in seccomp (EPERM); gVisor's host network stack has
# no raw, packet or vsock sockets at all (EAFNOSUPPORT).
SOCKET_DENIED = {"runc": "EPERM", "runsc": "EAFNOSUPPORT"}


def probe(s: Sandbox, expr: str, user: str) -> object:
    r = s.commands.run(f"python3 /tmp/iso.py {json.dumps(expr)}", timeout=60, user=user)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def _create(runtime: str, security: SecurityPolicy | None = None) -> Sandbox:
    s = Sandbox.create(
        template="python", timeout=300, metadata={"declaw.runtime": runtime}, security=security
    )
    s.files.write("/tmp/iso.py", PROBE)
    return s


@pytest.fixture
def sbx(server: dict[str, str], runtime: str) -> Iterator[Sandbox]:
    # api.openai.com (203.0.113.10) is allowed; everything else is denied.
    s = _create(
        runtime,
        security=SecurityPolicy(
            network=NetworkPolicy(allow_out=["203.0.113.10/32"], deny_out=[ALL_TRAFFIC])
        ),
    )
    try:
        yield s
    finally:
        s.kill()


def test_capabilities_exactly_as_listed(sbx: Sandbox, runtime: str) -> None:
    assert ROOT_MASK == 0xA00405FB
    for user in USERS:
        st = probe(sbx, "caps()", user)
        assert isinstance(st, dict)
        eff, prm, bnd = (int(st[k], 16) for k in ("CapEff", "CapPrm", "CapBnd"))
        assert int(st.get("CapAmb", "0"), 16) == 0
        assert bnd == ROOT_MASK, st
        if user == "user":
            assert eff == prm == 0, st
        else:
            assert eff == prm == ROOT_MASK, st
        for cap in FORBIDDEN_CAPABILITIES:
            assert not (eff | prm | bnd) & (1 << CAP_BITS[cap]), cap
        # gVisor does not print NoNewPrivs in /proc/self/status; prctl answers on both.
        assert probe(sbx, "no_new_privs()", user) == 1
        if runtime == "runc":
            assert st["NoNewPrivs"] == "1"
            assert st["Seccomp"] == "2"  # filter mode: the default profile is loaded


def test_no_raw_packet_or_vsock_sockets(sbx: Sandbox, runtime: str) -> None:
    denied = SOCKET_DENIED[runtime]
    for user in USERS:
        got = probe(
            sbx,
            "[sock(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),"
            " sock(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW),"
            " sock(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),"
            " sock(socket.AF_PACKET, socket.SOCK_RAW, 0),"
            " sock(socket.AF_PACKET, socket.SOCK_DGRAM, 0),"
            " sock(40, socket.SOCK_STREAM, 0),"  # AF_VSOCK
            " sock(socket.AF_INET, socket.SOCK_STREAM)]",
            user,
        )
        assert got == [denied] * 6 + ["OPEN"], (user, got)


def test_no_mount(sbx: Sandbox) -> None:
    assert probe(sbx, "mount_tmpfs()", "user") == "EPERM"
    assert probe(sbx, "mount_tmpfs()", "root") == "EPERM"
    r = sbx.commands.run("mount -t tmpfs none /mnt; echo rc=$?", user="root")
    assert "rc=32" in r.stdout


def test_nft_route_addr_sysctl_changes_refused_and_enforcement_unchanged(
    sbx: Sandbox, runtime: str
) -> None:
    assert probe(sbx, "tcp('203.0.113.10', 443)", "user") == "CONNECTED"
    assert probe(sbx, "tcp('203.0.113.66', 443)", "user") == "ConnectionRefusedError"
    for user in USERS:
        got = probe(
            sbx, "[nft_flush(), route_del_default(), addr_add(), ioctl_addr(), sysctl()]", user
        )
        if runtime == "runc":
            # nfnetlink and rtnetlink check CAP_NET_ADMIN; /proc/sys is mounted read-only.
            assert got == ["EPERM", "EPERM", "EPERM", "EPERM", "EROFS"], (user, got)
        else:
            # gVisor has no nfnetlink; its netstack refuses route/address changes.
            assert got == ["socket:EPROTONOSUPPORT", "EACCES", "EACCES", "ENOTTY", "EACCES"], (
                user,
                got,
            )
    # Rules live outside the sandbox's namespace: after all that, nothing changed.
    assert probe(sbx, "tcp('203.0.113.66', 443)", "root") == "ConnectionRefusedError"
    assert probe(sbx, "tcp('203.0.113.10', 443)", "root") == "CONNECTED"


def test_forged_source_address_goes_nowhere(sbx: Sandbox, runtime: str) -> None:
    for user in USERS:
        # A raw socket (the way to write any source address) is never created ...
        assert probe(sbx, "forged_udp()", user) == SOCKET_DENIED[runtime]
        # ... a normal socket cannot bind another sandbox's address ...
        assert probe(sbx, "bind_foreign()", user) == "EADDRNOTAVAIL"
        # ... nor with IP_TRANSPARENT (runc: needs NET_ADMIN; gVisor accepts the option
        # but still cannot bind a foreign address).
        expected = "sockopt:EPERM" if runtime == "runc" else "bind:EADDRNOTAVAIL"
        assert probe(sbx, "forged_connect()", user) == expected
    # control: the same connect from the sandbox's own address works
    assert probe(sbx, "tcp('203.0.113.10', 443)", "root") == "CONNECTED"


def test_no_host_files_or_processes(sbx: Sandbox) -> None:
    with open("/etc/hostname") as f:
        host_hostname = f.read()
    for user in USERS:
        got = probe(sbx, "[pids(), cmdline(1), comms()]", user)
        assert isinstance(got, list)
        pids, init, comms = got
        assert init == "/opt/declawd/envd"
        # only envd and the probe itself: no host process, no other sandbox's process
        assert sorted(comms) == ["envd", "python3"], comms
        assert len(pids) == 2
        assert probe(sbx, "listdir('/work')", user) == "ENOENT"
        assert probe(sbx, "listdir('/var/lib/declawd')", user) == "ENOENT"
        assert probe(sbx, "read('/etc/hostname')", user) == sbx.sandbox_id + "\n"
        assert probe(sbx, "read('/etc/hostname')", user) != host_hostname
    r = sbx.commands.run("ps -e -o comm=", user="root")
    assert sorted(r.stdout.split()) == ["envd", "ps"]


def test_envd_socket_dir_private_to_root(sbx: Sandbox, runtime: str) -> None:
    assert probe(sbx, "listdir('/run/declawd')", "user") == "EACCES"
    assert probe(sbx, "write('/run/declawd/x')", "user") == "EACCES"
    # control; under runc envd also gets the `tasks` files of its command cgroups there
    expected = ["cgroup", "envd.sock"] if runtime == "runc" else ["envd.sock"]
    assert sorted(probe(sbx, "listdir('/run/declawd')", "root")) == expected


def test_template_layers_read_only_writes_stay_in_sandbox(
    server: dict[str, str], runtime: str
) -> None:
    a = _create(runtime)
    try:
        for path in ("/usr/bin/python3", "/etc/passwd"):
            r = a.commands.run(f"echo pwned >> {path} && echo wrote", user="root")
            assert r.stdout.strip() == "wrote", r.stderr  # root may write: into its upper
        r = a.commands.run("tail -c 6 /etc/passwd; rm /usr/bin/python3; echo rc=$?", user="root")
        assert r.stdout.startswith("pwned\n") and "rc=0" in r.stdout
        b = _create(runtime)
        try:
            r = b.commands.run("tail -c 6 /etc/passwd; python3 -c 'print(42)'")
            assert "pwned" not in r.stdout and r.stdout.endswith("42\n"), r.stdout
        finally:
            b.kill()
    finally:
        a.kill()


def test_other_sandbox_address_refused(server: dict[str, str], runtime: str) -> None:
    a = _create(runtime)  # open policy: only the platform floor applies
    b = _create(runtime)
    try:
        b.commands.run("python3 -m http.server 8000 --bind 0.0.0.0", background=True)
        b_addr = b.commands.run("hostname -I").stdout.split()[0]
        # control: the listener is up (from inside b); wait for it by polling its port
        up = b.commands.run(
            "for i in $(seq 100); do python3 /tmp/iso.py \"tcp('127.0.0.1', 8000)\" "
            "| grep -q CONNECTED && echo up && break; sleep 0.1; done"
        )
        assert up.stdout.strip() == "up"
        assert probe(a, f"tcp({b_addr!r}, 8000)", "user") == "ConnectionRefusedError"
        assert probe(a, f"tcp({b_addr!r}, 8000)", "root") == "ConnectionRefusedError"
    finally:
        a.kill()
        b.kill()
