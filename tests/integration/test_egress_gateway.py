"""The gateway daemon end to end in network namespaces: sandbox → gateway (resolver) → lab DNS.

Topology (instance "dcwtgw", so it never collides with a running server):
  dcwtgw-sbx1  eth0 10.77.0.6/30  ── veth ──  s1 10.77.0.5/30  dcwtgw-gw
  dcwtgw-gw    lab0 100.96.0.1/30 ── veth ──  up0 100.96.0.2/30 dcwtgw-lab (DNS 198.51.100.53)
The gw netns gets a minimal nft table of our own: port-53 redirect to the resolver, and
`iif . ip daddr @resolved4 tcp dport 443` redirected to a probe listener, which is how we see
that an address is in the set by the time the client has the answer; a logged refusal on
port 9 carries the shared rules' prefix (no slot: the daemon takes it from the interface).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
PY = str(VENV_BIN / "python")
INSTANCE = "dcwtgw"
GW, LAB, SBX = f"{INSTANCE}-gw", f"{INSTANCE}-lab", f"{INSTANCE}-sbx1"
SANDBOX_ID = "sbx-0000000000a1"
SLOT = 1
LAB_DNS = "198.51.100.53"
ENFORCED = {
    "allow_out": ["api.openai.com", "cname.example", "internal.example"],
    "deny_out": ["0.0.0.0/0"],
}

UPSTREAM = textwrap.dedent(
    """
    import socket, socketserver, struct, sys, threading
    from dnslib import A, CNAME, QTYPE, RCODE, RR, DNSRecord
    ZONE = {"api.openai.com": "203.0.113.10", "evil.com": "203.0.113.66",
            "internal.example": "10.0.0.5"}
    log = open(sys.argv[1], "a", buffering=1)
    def answer(data):
        q = DNSRecord.parse(data)
        name = str(q.q.qname).rstrip(".").lower()
        log.write(f"{name} {QTYPE[q.q.qtype]}\\n")
        r = q.reply()
        if name == "cname.example":
            r.add_answer(RR(q.q.qname, QTYPE.CNAME, ttl=60, rdata=CNAME("api.openai.com")))
            if q.q.qtype == QTYPE.A:
                r.add_answer(RR("api.openai.com", QTYPE.A, ttl=60, rdata=A(ZONE["api.openai.com"])))
        elif name in ZONE and q.q.qtype == QTYPE.A:
            r.add_answer(RR(q.q.qname, QTYPE.A, ttl=60, rdata=A(ZONE[name])))
        elif name not in ZONE:
            r.header.rcode = RCODE.NXDOMAIN
        return r.pack()
    class U(socketserver.BaseRequestHandler):
        def handle(self):
            data, sock = self.request
            sock.sendto(answer(data), self.client_address)
    class T(socketserver.StreamRequestHandler):
        def handle(self):
            n = struct.unpack("!H", self.rfile.read(2))[0]
            out = answer(self.rfile.read(n))
            self.wfile.write(struct.pack("!H", len(out)) + out)
    socketserver.ThreadingUDPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    u = socketserver.ThreadingUDPServer((sys.argv[2], 53), U)
    t = socketserver.ThreadingTCPServer((sys.argv[2], 53), T)
    threading.Thread(target=t.serve_forever, daemon=True).start()
    print("ready", flush=True)
    u.serve_forever()
    """
)

PROBE_LISTENER = textwrap.dedent(
    """
    import socket
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 15443)); s.listen(64)
    print("ready", flush=True)
    while True:
        c, _ = s.accept(); c.sendall(b"PROBE"); c.close()
    """
)

CLIENT = textwrap.dedent(
    """
    import json, random, socket, struct, sys, time
    from dnslib import QTYPE, DNSRecord
    def ask(name, qtype, server, tcp=False, edns=None, port=53):
        q = DNSRecord.question(name, qtype)
        q.header.id = random.randrange(65536)
        if edns:
            from dnslib import EDNS0
            q.add_ar(EDNS0(udp_len=edns))
        data = q.pack()
        if tcp:
            s = socket.create_connection((server, port), timeout=5)
            s.sendall(struct.pack("!H", len(data)) + data)
            n = struct.unpack("!H", s.recv(2, socket.MSG_WAITALL))[0]
            out = s.recv(n, socket.MSG_WAITALL); s.close()
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
            s.sendto(data, (server, port)); out = s.recv(4096); s.close()
        r = DNSRecord.parse(out)
        assert r.header.id == q.header.id
        return r
    cmd = json.loads(sys.argv[1])
    if cmd["op"] == "query":
        r = ask(cmd["name"], cmd["qtype"], cmd["server"], cmd.get("tcp", False),
                port=cmd.get("port", 53))
        print(json.dumps({"rcode": r.header.rcode, "tc": r.header.tc,
            "answers": [[QTYPE[x.rtype], str(x.rdata)] for x in r.rr]}))
    elif cmd["op"] == "query_error":
        try:
            ask(cmd["name"], "A", cmd["server"], tcp=True); got = "answered"
        except OSError as e:
            got = type(e).__name__
        print(json.dumps({"got": got}))
    elif cmd["op"] == "query_connect":
        r = ask(cmd["name"], "A", cmd["server"])
        addr = [str(x.rdata) for x in r.rr if x.rtype == QTYPE.A][0]
        try:
            c = socket.create_connection((addr, 443), timeout=3)
            got = c.recv(5).decode(); c.close()
        except OSError as e:
            got = type(e).__name__
        print(json.dumps({"address": addr, "got": got}))
    elif cmd["op"] == "connect":
        try:
            socket.create_connection((cmd["host"], cmd["port"]), timeout=3).close(); got = "ok"
        except OSError as e:
            got = type(e).__name__
        print(json.dumps({"got": got}))
    elif cmd["op"] == "bench":
        times = []
        for i in range(cmd["n"]):
            t0 = time.perf_counter(); ask(cmd["name"], "A", cmd["server"])
            times.append(time.perf_counter() - t0)
        print(json.dumps({"times": times}))
    """
)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net=/var/run/netns/{ns}", *argv]


class Topology:
    """Three namespaces + veths + a minimal nft table; `teardown` is idempotent."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.procs: list[subprocess.Popen[str]] = []
        self.daemon: subprocess.Popen[str] | None = None
        self.query_log = workdir / "upstream-queries.log"

    def setup(self) -> None:
        sh(str(REPO.parent / "shared" / "tools" / "egress-guard"))
        self.teardown()
        for ns in (GW, LAB, SBX):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", "s1", "netns", GW, "type", "veth", "peer", "eth0", "netns", SBX)
        sh("ip", "link", "add", "lab0", "netns", GW, "type", "veth", "peer", "up0", "netns", LAB)
        sh("ip", "-n", GW, "addr", "add", "10.77.0.5/30", "dev", "s1")
        sh("ip", "-n", GW, "addr", "add", "100.96.0.1/30", "dev", "lab0")
        sh("ip", "-n", SBX, "addr", "add", "10.77.0.6/30", "dev", "eth0")
        sh("ip", "-n", LAB, "addr", "add", "100.96.0.2/30", "dev", "up0")
        sh("ip", "-n", LAB, "addr", "add", f"{LAB_DNS}/32", "dev", "lo")
        for ns, dev in ((GW, "s1"), (GW, "lab0"), (SBX, "eth0"), (LAB, "up0")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", SBX, "route", "add", "default", "via", "10.77.0.5")
        sh("ip", "-n", GW, "route", "add", "default", "via", "100.96.0.2")
        sh("ip", "-n", LAB, "route", "add", "10.77.0.0/16", "via", "100.96.0.1")
        ruleset = textwrap.dedent(
            """
            table inet declawd {
                set resolved4 { type iface_index . ipv4_addr; flags timeout; }
                chain pre {
                    type nat hook prerouting priority dstnat;
                    iifname "s1" meta l4proto { tcp, udp } th dport 53 redirect to :5353
                    iifname "s1" iif . ip daddr @resolved4 tcp dport 443 redirect to :15443
                }
                chain input {
                    type filter hook input priority 0;
                    iifname "s1" tcp dport 9 log prefix "deny:gateway" group 7 reject with tcp reset
                }
            }
            """
        )
        subprocess.run(in_ns(GW, "nft", "-f", "-"), input=ruleset, text=True, check=True)
        (self.workdir / "upstream.py").write_text(UPSTREAM)
        (self.workdir / "probe.py").write_text(PROBE_LISTENER)
        (self.workdir / "client.py").write_text(CLIENT)
        self._spawn(in_ns(LAB, PY, str(self.workdir / "upstream.py"), str(self.query_log), LAB_DNS))
        self._spawn(in_ns(GW, PY, str(self.workdir / "probe.py")))
        self.write_state(ENFORCED)

    def _spawn(self, argv: list[str]) -> None:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line

    def write_state(self, policy: dict[str, list[str]] | None, slot: int = SLOT) -> None:
        gw_dir = self.state_dir / "gateway"
        gw_dir.mkdir(parents=True, exist_ok=True)
        sandboxes = {}
        if policy is not None:
            sandboxes[SANDBOX_ID] = {"slot": slot, "address": "10.77.0.6", "policy": policy}
        tmp = gw_dir / "state.json.tmp"
        tmp.write_text(json.dumps({"sandboxes": sandboxes}))
        os.replace(tmp, gw_dir / "state.json")

    def start_daemon(self) -> None:
        log = open(self.state_dir / "gateway" / "gateway.log", "a")  # noqa: SIM115
        self.daemon = subprocess.Popen(
            in_ns(
                GW,
                str(VENV_BIN / "declawd"),
                "gateway",
                "serve",
                "--state-dir",
                str(self.state_dir),
                "--instance",
                INSTANCE,
                "--upstream-dns",
                LAB_DNS,
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        log.close()
        sock_path = self.state_dir / "gateway" / "control.sock"
        for _ in range(200):
            if self.daemon.poll() is not None:
                raise AssertionError("daemon exited:\n" + self.daemon_log())
            if sock_path.exists() and self.control("ping") == "ok":
                return
            time.sleep(0.05)
        raise AssertionError("daemon did not come up:\n" + self.daemon_log())

    def daemon_log(self) -> str:
        path = self.state_dir / "gateway" / "gateway.log"
        return path.read_text() if path.exists() else ""

    def stop_daemon(self) -> int | None:
        proc, self.daemon = self.daemon, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def control(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self.state_dir / "gateway" / "control.sock"))
            s.sendall(command.encode() + b"\n")
            return s.makefile().readline().strip()

    def client(self, **cmd: object) -> dict:
        out = sh(*in_ns(SBX, PY, str(self.workdir / "client.py"), json.dumps(cmd)))
        return json.loads(out.stdout)

    def client_in(self, ns: str, **cmd: object) -> dict:
        out = sh(*in_ns(ns, PY, str(self.workdir / "client.py"), json.dumps(cmd)))
        return json.loads(out.stdout)

    def r4(self) -> str:
        return sh(*in_ns(GW, "nft", "list", "set", "inet", "declawd", "resolved4")).stdout

    def upstream_queries(self) -> list[str]:
        return self.query_log.read_text().splitlines() if self.query_log.exists() else []

    def audit_rows(self) -> list[dict]:
        conn = sqlite3.connect(self.state_dir / "declawd.db")
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM audit_events ORDER BY id")]
        finally:
            conn.close()

    def teardown(self) -> None:
        self.stop_daemon()
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.procs.clear()
        for ns in (SBX, GW, LAB):
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    t = Topology(tmp_path_factory.mktemp("gw"))
    try:
        t.setup()
        t.start_daemon()
        yield t
    finally:
        t.teardown()


def test_allowed_name_answered_and_admitted_before_the_answer(topo: Topology) -> None:
    # The probe listener is reachable only through `ip daddr @r4_1` → REDIRECT: the connect
    # made right after the answer succeeds only if the address was already in the set.
    out = topo.client(op="query_connect", name="api.openai.com", server=LAB_DNS)
    assert out == {"address": "203.0.113.10", "got": "PROBE"}
    assert "203.0.113.10" in topo.r4()
    assert "api.openai.com A" in topo.upstream_queries()


def test_denied_name_gets_sink_and_never_reaches_upstream(topo: Topology) -> None:
    out = topo.client(op="query", name="evil.com", qtype="A", server=LAB_DNS)
    assert out["answers"] == [["A", "198.18.0.1"]]
    out = topo.client(op="query", name="evil.com", qtype="AAAA", server="1.1.1.1")
    assert out["answers"] == [] and out["rcode"] == 0
    # Positive control: the upstream does log what we forward.
    topo.client(op="query", name="internal.example", qtype="A", server=LAB_DNS)
    queries = topo.upstream_queries()
    assert "internal.example A" in queries
    assert not [q for q in queries if q.startswith("evil.com")]
    assert "203.0.113.66" not in topo.r4()


def test_non_public_answer_stripped(topo: Topology) -> None:
    out = topo.client(op="query", name="internal.example", qtype="A", server=LAB_DNS)
    assert out["rcode"] == 0 and out["answers"] == []
    assert "10.0.0.5" not in topo.r4()


def test_txt_gets_no_data_and_is_not_forwarded(topo: Topology) -> None:
    out = topo.client(op="query", name="api.openai.com", qtype="TXT", server=LAB_DNS)
    assert out == {"rcode": 0, "tc": 0, "answers": []}
    assert "api.openai.com TXT" not in topo.upstream_queries()


def test_tcp_query_and_cname_chain(topo: Topology) -> None:
    out = topo.client(op="query", name="cname.example", qtype="A", server=LAB_DNS, tcp=True)
    assert out["answers"] == [["CNAME", "api.openai.com."], ["A", "203.0.113.10"]]


def test_datapath_refusal_audited_through_nflog(topo: Topology) -> None:
    assert topo.client(op="connect", host="10.77.0.5", port=9) == {"got": "ConnectionRefusedError"}
    expected = ("connection", "deny", "gateway", "10.77.0.5", 9, "tcp", SANDBOX_ID)
    seen: list[tuple] = []
    for _ in range(200):  # the kernel batches NFLOG up to 0.1 s, the writer flushes every 0.2 s
        seen = [
            (
                r["kind"],
                r["verdict"],
                r["reason"],
                r["address"],
                r["port"],
                r["protocol"],
                r["sandbox_id"],
            )
            for r in topo.audit_rows()
        ]
        if expected in seen:
            return
        time.sleep(0.05)
    raise AssertionError(f"no nflog audit row; rows: {seen}")


def test_reload_applies_new_policy(topo: Topology) -> None:
    topo.write_state({"allow_out": ["cname.example"], "deny_out": ["0.0.0.0/0"]})
    try:
        assert topo.control("reload") == "ok"
        out = topo.client(op="query", name="api.openai.com", qtype="A", server=LAB_DNS)
        assert out["answers"] == [["A", "198.18.0.1"]]
        # api.openai.com's address was admitted for cname.example too, so it stays; a policy
        # with neither name drops it from the set.
        topo.write_state({"allow_out": ["internal.example"], "deny_out": ["0.0.0.0/0"]})
        assert topo.control("reload") == "ok"
        assert "203.0.113.10" not in topo.r4()
    finally:
        topo.write_state(ENFORCED)
        assert topo.control("reload") == "ok"
    out = topo.client(op="query", name="api.openai.com", qtype="A", server=LAB_DNS)
    assert out["answers"] == [["A", "203.0.113.10"]]


def test_failed_admit_answers_servfail(topo: Topology) -> None:
    # Slot 2 has no veth s2: nothing can be admitted for it, so the answer is never released.
    topo.write_state(ENFORCED, slot=2)
    try:
        assert topo.control("reload") == "ok"
        out = topo.client(op="query", name="api.openai.com", qtype="A", server=LAB_DNS)
        assert out["rcode"] == 2 and out["answers"] == []  # SERVFAIL
        assert "no interface s2" in topo.daemon_log()  # the refusal names the interface
    finally:
        topo.write_state(ENFORCED)
        assert topo.control("reload") == "ok"
    out = topo.client(op="query", name="api.openai.com", qtype="A", server=LAB_DNS)
    assert out["rcode"] == 0 and out["answers"] == [["A", "203.0.113.10"]]


def test_unknown_source_refused(topo: Topology) -> None:
    # From the gateway netns itself the source is not a sandbox: REFUSED, nothing forwarded.
    before = len(topo.upstream_queries())
    out = topo.client_in(
        GW, op="query", name="api.openai.com", qtype="A", server="10.77.0.5", port=5353
    )
    assert out["rcode"] == 5 and out["answers"] == []
    assert len(topo.upstream_queries()) == before


def test_zz_audit_rows_after_clean_stop(topo: Topology) -> None:
    assert topo.stop_daemon() == 0
    rows = topo.audit_rows()
    # Fail closed: with the daemon gone the redirect target has no listener.
    out = topo.client(op="query_error", name="api.openai.com", server=LAB_DNS)
    assert out == {"got": "ConnectionRefusedError"}
    topo.start_daemon()
    out = topo.client(op="query", name="api.openai.com", qtype="A", server=LAB_DNS, tcp=True)
    assert out["answers"] == [["A", "203.0.113.10"]]  # and it comes back after a restart
    dns = [(r["verdict"], r["reason"], r["name"]) for r in rows if r["kind"] == "dns"]
    assert ("allow", "allowed", "api.openai.com") in dns
    assert ("deny", "not_allowed", "evil.com") in dns
    assert ("deny", "qtype_blocked", "api.openai.com") in dns
    assert ("allow", "non_public_stripped", "internal.example") in dns
    allowed = next(r for r in rows if r["name"] == "api.openai.com" and r["reason"] == "allowed")
    assert allowed["address"] == "203.0.113.10" and allowed["sandbox_id"] == SANDBOX_ID


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
