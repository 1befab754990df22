"""The lab end to end: a client netns linked to the lab like the gateway would be.

The client netns plays the gateway: it holds `lab0` (100.96.0.1/30) and the lab holds
`up0` (100.96.0.2/30), so the lab sees exactly the source address it sees in production.
Client probes run as separate processes via `nsenter --net=...`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from declawd.config import Settings
from declawd.host import netns_exists
from declawd.lab import LabError, LabProcess, ensure_lab_netns, load_config
from declawd.lab.ca import ca_bundle_path, ca_cert_path, ca_key_path
from declawd.lab.querylog import read

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

INSTANCE = "dcwtlab"
CLIENT_NS = "dcwtlab-cli"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    subprocess.run(["/work/shared/tools/egress-guard"], check=False, capture_output=True)
    settings = Settings(instance=INSTANCE, state_dir=tmp_path_factory.mktemp("labstate"))
    with LabProcess(settings):
        try:
            _ip("netns", "add", CLIENT_NS)
            _ip("-n", CLIENT_NS, "link", "set", "lo", "up")
            _ip("-n", CLIENT_NS, "link", "add", "lab0", "type", "veth", "peer", "name", "up0",
                "netns", settings.lab_netns)  # fmt: skip
            _ip("-n", CLIENT_NS, "addr", "add", "100.96.0.1/30", "dev", "lab0")
            _ip("-n", CLIENT_NS, "link", "set", "lab0", "up")
            _ip("-n", settings.lab_netns, "addr", "add", "100.96.0.2/30", "dev", "up0")
            _ip("-n", settings.lab_netns, "link", "set", "up0", "up")
            _ip("-n", CLIENT_NS, "route", "add", "default", "via", "100.96.0.2")
            yield settings
        finally:
            subprocess.run(["ip", "netns", "delete", CLIENT_NS], check=False, capture_output=True)


def client(lab: Settings, code: str, helper: str = "") -> object:
    """Run `helper` + `code` (which prints one JSON document) in the client netns."""
    proc = subprocess.run(
        [
            "nsenter",
            f"--net=/var/run/netns/{CLIENT_NS}",
            sys.executable,
            "-c",
            helper + textwrap.dedent(code),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "LAB_CA": str(ca_cert_path(lab)),
            "LAB_BUNDLE": str(ca_bundle_path(lab)),
        },
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


DNS_HELPER = """
import json, socket, struct
from dnslib import DNSRecord, QTYPE
def ask(name, qtype="A", tcp=False):
    q = DNSRecord.question(name, qtype)
    if tcp:
        s = socket.create_connection(("198.51.100.53", 53), timeout=5)
        s.sendall(struct.pack("!H", len(q.pack())) + q.pack())
        n = struct.unpack("!H", s.recv(2))[0]
        data = b""
        while len(data) < n:
            data += s.recv(n - len(data))
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.sendto(q.pack(), ("198.51.100.53", 53))
        data = s.recv(65535)
    r = DNSRecord.parse(data)
    return {"rcode": r.header.rcode, "tc": r.header.tc,
            "rr": [[QTYPE.get(x.rtype), str(x.rdata)] for x in r.rr]}
"""


def test_dns_answers_from_the_client_side(lab: Settings) -> None:
    out = client(
        lab,
        helper=DNS_HELPER,
        code="""
    print(json.dumps({
        "a": ask("api.openai.com"),
        "cname": ask("www.example.com"),
        "nx": ask("no-such-host.lab"),
        "aaaa": ask("api.openai.com", "AAAA"),
        "txt": ask("txt.lab", "TXT"),
        "many_udp": ask("many.lab"),
        "many_tcp": ask("many.lab", tcp=True),
    }))
    """,
    )
    assert isinstance(out, dict)
    assert out["a"] == {"rcode": 0, "tc": 0, "rr": [["A", "203.0.113.10"]]}
    assert out["cname"]["rr"] == [["CNAME", "example.com."], ["A", "203.0.113.20"]]
    assert out["nx"]["rcode"] == 3 and out["nx"]["rr"] == []
    assert out["aaaa"] == {"rcode": 0, "tc": 0, "rr": []}
    assert out["txt"]["rr"] == [["TXT", '"lab-secret"']]
    assert out["many_udp"]["tc"] == 1 and out["many_udp"]["rr"] == []
    assert len(out["many_tcp"]["rr"]) == 100


def test_query_log_records_each_query_with_the_gateway_as_client(lab: Settings) -> None:
    since = time.time()
    name = f"probe-{os.getpid()}-{time.monotonic_ns()}.lab"
    client(
        lab,
        helper=DNS_HELPER,
        code=f"""
    ask({name!r}, "A")
    ask("evil.com", "TXT")
    print("{{}}")
    """,
    )
    entries = [e for e in read(lab, since=since) if e["client"] == "100.96.0.1"]
    seen = [(e["name"], e["type"], e["rcode"]) for e in entries]
    assert (name, "A", "NXDOMAIN") in seen
    assert ("evil.com", "TXT", "NOERROR") in seen
    unasked = f"never-asked-{os.getpid()}.lab"
    assert all(e["name"] != unasked for e in read(lab))


HTTPS_GET = """
import http.client, json, os, ssl
def get(cafile, ip="203.0.113.10", sni="api.openai.com", path="/hello"):
    ctx = ssl.create_default_context(cafile=cafile)
    conn = http.client.HTTPSConnection(ip, 443, context=ctx, timeout=10)
    import socket
    raw = socket.create_connection((ip, 443), timeout=10)
    conn.sock = ctx.wrap_socket(raw, server_hostname=sni)
    conn.request("GET", path, headers={"Host": sni})
    r = conn.getresponse()
    return {"status": r.status, "doc": json.loads(r.read())}
def attempt(cafile, **kw):
    try:
        return get(cafile, **kw)
    except ssl.SSLCertVerificationError as e:
        return {"error": "verify", "reason": e.verify_message}
"""


def test_https_is_verified_by_the_lab_ca(lab: Settings) -> None:
    out = client(
        lab,
        helper=HTTPS_GET,
        code="""
    print(json.dumps({
        "ca": attempt(os.environ["LAB_CA"]),
        "bundle": attempt(os.environ["LAB_BUNDLE"]),
        "alias": attempt(os.environ["LAB_CA"], ip="203.0.113.20", sni="www.example.com"),
        "system_only": attempt("/etc/ssl/certs/ca-certificates.crt"),
        "wrong_name": attempt(os.environ["LAB_CA"], sni="not-configured.example"),
    }))
    """,
    )
    assert isinstance(out, dict)
    assert out["ca"]["status"] == 200
    assert out["ca"]["doc"] == {
        "host": "api.openai.com",
        "server": "api.openai.com",
        "path": "/hello",
        "method": "GET",
        "tls": True,
        "client": "100.96.0.1",
    }
    assert out["bundle"]["status"] == 200
    assert out["alias"]["doc"]["server"] == "example.com"
    # negative controls: the lab CA is what makes it trusted, and names are checked
    assert out["system_only"]["error"] == "verify"
    assert out["wrong_name"]["error"] == "verify"
    assert "mismatch" in out["wrong_name"]["reason"].lower()


def test_http_keep_alive_bytes_and_echo(lab: Settings) -> None:
    out = client(
        lab,
        """
    import http.client, json, ssl, os
    conn = http.client.HTTPConnection("203.0.113.40", 80, timeout=30)
    conn.request("GET", "/", headers={"Host": "big.lab"})
    first = json.loads(conn.getresponse().read())
    sock = conn.sock
    conn.request("GET", "/bytes/10000000")
    r = conn.getresponse()
    body = r.read()
    same_after_bytes = conn.sock is sock
    conn.request("POST", "/echo", body=b"hello lab" * 1000)
    echo = conn.getresponse().read()
    same_after_echo = conn.sock is sock
    ctx = ssl.create_default_context(cafile=os.environ["LAB_CA"])
    tls = http.client.HTTPSConnection("big.lab", 443, context=ctx, timeout=30)
    import socket
    tls.sock = ctx.wrap_socket(socket.create_connection(("203.0.113.40", 443)), server_hostname="big.lab")
    tls.request("GET", "/bytes/10000000")
    tls_len = len(tls.getresponse().read())
    print(json.dumps({
        "first": first, "len": len(body), "clen": r.getheader("Content-Length"),
        "same_after_bytes": same_after_bytes, "same_after_echo": same_after_echo,
        "echo_ok": echo == b"hello lab" * 1000, "tls_len": tls_len,
    }))
    """,
    )
    assert isinstance(out, dict)
    assert out["first"]["server"] == "big.lab" and out["first"]["tls"] is False
    assert out["len"] == 10_000_000 and out["clen"] == "10000000"
    assert out["tls_len"] == 10_000_000
    assert out["same_after_bytes"] and out["same_after_echo"]
    assert out["echo_ok"]


def test_banner_echo_udp_and_refusals(lab: Settings) -> None:
    out = client(
        lab,
        """
    import json, socket
    def refused(fn):
        try:
            fn()
            return "no error"
        except ConnectionRefusedError:
            return "refused"
    s = socket.create_connection(("203.0.113.25", 25), timeout=5)
    banner = s.recv(1024).decode()        # server speaks first
    s.sendall(b"EHLO me\\r\\n")
    ehlo = s.recv(1024).decode()
    s.sendall(b"QUIT\\r\\n")
    bye = s.recv(1024).decode()
    s.close()
    e = socket.create_connection(("203.0.113.10", 7), timeout=5)
    e.sendall(b"ping")
    tcp_echo = e.recv(16).decode()
    e.close()
    def udp(addr):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.settimeout(5)
        u.connect(addr)
        u.send(b"quic?")
        return u.recv(64).decode()
    print(json.dumps({
        "banner": banner, "ehlo": ehlo, "bye": bye, "tcp_echo": tcp_echo,
        "udp443": udp(("203.0.113.10", 443)), "udp9999": udp(("198.51.100.20", 9999)),
        "udp_unserved": refused(lambda: udp(("203.0.113.66", 9999))),
        "tcp_unserved": refused(lambda: socket.create_connection(("203.0.113.25", 80), timeout=5)),
    }))
    """,
    )
    assert out == {
        "banner": "220 smtp.lab ESMTP lab\r\n",
        "ehlo": "250 ok\r\n",
        "bye": "221 bye\r\n",
        "tcp_echo": "ping",
        "udp443": "quic?",
        "udp9999": "quic?",
        "udp_unserved": "refused",
        "tcp_unserved": "refused",
    }


def test_lab_netns_holds_served_addresses_only_and_routes_via_the_gateway(lab: Settings) -> None:
    ensure_lab_netns(lab, load_config())  # up0 exists now: the default route appears
    addrs = subprocess.run(
        ["ip", "-n", lab.lab_netns, "-o", "addr", "show", "dev", "lo"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for present in ("203.0.113.10/32", "203.0.113.66/32", "198.51.100.53/32", "198.51.100.20/32"):
        assert present in addrs
    for absent in ("169.254.169.254", "10.1.2.3", "203.0.113.150"):
        assert absent not in addrs
    route = subprocess.run(
        ["ip", "-n", lab.lab_netns, "route", "show", "default"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "via 100.96.0.1 dev up0" in route


def test_second_lab_for_the_same_state_is_refused_and_harmless(lab: Settings) -> None:
    with pytest.raises(LabError, match="already running"):
        LabProcess(lab, ready_timeout=20).start()
    assert netns_exists(lab.lab_netns)  # the running lab's netns survived the failed start


def test_lab_process_leaves_nothing_behind_and_keeps_its_ca(tmp_path: Path) -> None:
    settings = Settings(instance="dcwtlab2", state_dir=tmp_path)
    with LabProcess(settings) as proc:
        assert netns_exists("dcwtlab2-lab")
        pid = proc.proc.pid if proc.proc else 0
        ca = ca_cert_path(settings).read_bytes()
        key = ca_key_path(settings).read_bytes()
    assert not netns_exists("dcwtlab2-lab")
    assert not Path(f"/proc/{pid}").exists()
    assert not (settings.lab_dir / "lab.pid").exists()

    async def run_async() -> None:
        async with LabProcess(settings):
            assert netns_exists("dcwtlab2-lab")

    import asyncio

    asyncio.run(run_async())
    assert not netns_exists("dcwtlab2-lab")
    assert ca_cert_path(settings).read_bytes() == ca and ca_key_path(settings).read_bytes() == key


def test_bad_config_fails_fast_with_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "lab.json"
    bad.write_text(
        json.dumps({"hosts": [{"name": "x.lab", "addresses": ["10.0.0.1"], "http": True}]})
    )
    settings = Settings(instance="dcwtlab3", state_dir=tmp_path)
    with pytest.raises(LabError, match=r"hosts\[0\]\.addresses\[0\]"):
        LabProcess(settings, bad).start()
    assert not netns_exists("dcwtlab3-lab")


def test_lab_links_itself_to_an_existing_gateway_netns(tmp_path: Path) -> None:
    settings = Settings(instance="dcwtlab4", state_dir=tmp_path)
    _ip("netns", "add", settings.gateway_netns)
    try:
        with LabProcess(settings):
            route = subprocess.run(
                ["ip", "-n", settings.lab_netns, "route", "show", "default"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            assert "via 100.96.0.1 dev up0" in route
            # the gateway's own default route is Gateway.ensure's job; add it as it would
            _ip("-n", settings.gateway_netns, "route", "replace", "default", "via", "100.96.0.2")
            fetch = "import urllib.request as u; print(u.urlopen('http://203.0.113.10/').read().decode())"
            got = subprocess.run(
                ["nsenter", f"--net=/var/run/netns/{settings.gateway_netns}", sys.executable, "-c", fetch],
                capture_output=True, text=True, check=True, timeout=30,
            ).stdout  # fmt: skip
            assert json.loads(got)["client"] == "100.96.0.1"
            gw_links = subprocess.run(
                ["ip", "-n", settings.gateway_netns, "-o", "link"], capture_output=True, text=True
            ).stdout
            assert "lab0" in gw_links
        # the lab's netns (and with it the veth pair) is gone; the gateway netns is untouched
        assert not netns_exists(settings.lab_netns)
        assert netns_exists(settings.gateway_netns)
        gw_links = subprocess.run(
            ["ip", "-n", settings.gateway_netns, "-o", "link"], capture_output=True, text=True
        ).stdout
        assert "lab0" not in gw_links
    finally:
        subprocess.run(["ip", "netns", "delete", settings.gateway_netns], check=False)
        subprocess.run(
            ["ip", "netns", "delete", settings.lab_netns], check=False, capture_output=True
        )
