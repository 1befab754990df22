"""SECURITY.md's egress table, probed from inside real sandboxes through the official SDK.

Every negative probe asserts *why* it failed (refused / reset / DNS answer) and sits next to
a positive control that proves the path works when the policy allows it. Runs on runc and
runsc. The lab's DNS query log proves denied names never left the node.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from declaw import ALL_TRAFFIC, NetworkPolicy, Sandbox, SecurityPolicy

pytestmark = pytest.mark.e2e

PROBE = r"""
import json, socket, ssl, sys, urllib.request

def tcp(host, port, payload=None, timeout=5):
    try:
        s = socket.create_connection((host, port), timeout=timeout)
    except Exception as e:
        return type(e).__name__
    try:
        if payload is not None:
            s.sendall(payload)
            data = s.recv(200)
            return "DATA:" + data.decode(errors="replace") if data else "EOF"
        return "CONNECTED"
    except Exception as e:
        return type(e).__name__
    finally:
        s.close()

def tls(host, port=443, sni="", addr=None, timeout=5):
    # sni="" (default): the host name; sni=None: no SNI at all.
    if sni == "":
        sni = host
    ctx = ssl.create_default_context()
    if sni is None or addr is not None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        raw = socket.create_connection((addr or host, port), timeout=timeout)
        s = ctx.wrap_socket(raw, server_hostname=sni)
        s.sendall(b"GET / HTTP/1.1\r\nHost: " + (sni or host).encode() + b"\r\nConnection: close\r\n\r\n")
        data = s.recv(4096)
        s.close()
        return "OK:" + data.split(b"\r\n", 1)[0].decode()
    except Exception as e:
        return type(e).__name__

def http(url, host=None):
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return "OK:" + str(r.status)
    except Exception as e:
        reason = getattr(e, "reason", None)
        return type(e).__name__ + (":" + type(reason).__name__ if isinstance(reason, BaseException) else "")

def resolve(name):
    try:
        return sorted({a[4][0] for a in socket.getaddrinfo(name, 443, socket.AF_INET)})
    except Exception as e:
        return type(e).__name__

def udp(host, port, timeout=2):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(b"ping", (host, port))
        return "DATA:" + s.recvfrom(100)[0].decode()
    except Exception as e:
        return type(e).__name__
    finally:
        s.close()

print(json.dumps(eval(sys.argv[1])))
"""


def probe(s: Sandbox, expr: str, user: str = "user") -> object:
    r = s.commands.run(f"python3 /tmp/probe.py {json.dumps(expr)!s}", timeout=60, user=user)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def _create(runtime: str, allow: list[str] | None, deny: list[str] | None) -> Sandbox:
    kwargs: dict[str, object] = {}
    if allow is not None or deny is not None:
        kwargs["security"] = SecurityPolicy(
            network=NetworkPolicy(allow_out=allow or [], deny_out=deny or [])
        )
    s = Sandbox.create(
        template="python", timeout=300, metadata={"declaw.runtime": runtime}, **kwargs
    )
    s.files.write("/tmp/probe.py", PROBE)
    return s


@pytest.fixture
def locked(server: dict[str, str], runtime: str) -> Iterator[Sandbox]:
    s = _create(
        runtime, ["api.openai.com", "*.example.org", "smtp.lab", "metadata.lab"], [ALL_TRAFFIC]
    )
    try:
        yield s
    finally:
        s.kill(wait=True)


@pytest.fixture
def open_sbx(server: dict[str, str], runtime: str) -> Iterator[Sandbox]:
    s = _create(runtime, None, None)
    try:
        yield s
    finally:
        s.kill(wait=True)


def _querylog(since: float) -> list[dict]:
    from tests.e2e.conftest import STATE_DIR

    path = Path(STATE_DIR) / "lab" / "query.log"
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with_time = json.loads(line)
        if with_time.get("time", 0) >= since:
            out.append(with_time)
    return out


def test_denied_name_refused_in_kernel_and_never_forwarded(locked: Sandbox) -> None:
    t0 = time.time()
    assert probe(locked, 'tcp("evil.com", 443)') == "ConnectionRefusedError"
    assert probe(locked, 'tcp("1.1.1.1", 443)') == "ConnectionRefusedError"
    assert probe(locked, 'tcp("203.0.113.66", 443)') == "ConnectionRefusedError"
    # positive control: the allowed name connects and serves TLS with the lab CA
    assert probe(locked, 'tcp("api.openai.com", 443)') == "CONNECTED"
    assert probe(locked, 'tls("api.openai.com")') == "OK:HTTP/1.1 200 OK"
    names = {q["name"].rstrip(".") for q in _querylog(t0)}
    assert "api.openai.com" in names
    assert "evil.com" not in names


def test_wildcard_and_http_host_checks(locked: Sandbox) -> None:
    assert probe(locked, 'http("http://a.example.org/")') == "OK:200"
    assert probe(locked, 'http("http://b.c.example.org/")') == "OK:200"
    assert probe(locked, 'http("https://api.openai.com/")') == "OK:200"
    # Host header of a name that is not allowed, sent to an allowed address: refused by the proxy.
    assert probe(locked, 'http("http://a.example.org/", host="evil.com")') in (
        "URLError:ConnectionResetError",
        "ConnectionResetError",
        "RemoteDisconnected",
        "URLError:RemoteDisconnected",
    )


def test_sni_spoofing_and_missing_sni_refused(locked: Sandbox) -> None:
    openai = probe(locked, 'resolve("api.openai.com")')
    assert openai == ["203.0.113.10"]
    # SNI of a denied name to an allowed address
    assert probe(locked, 'tls("api.openai.com", sni="evil.com", addr="203.0.113.10")') in (
        "ConnectionResetError",
        "SSLEOFError",
        "SSLZeroReturnError",
    )
    # allowed SNI to an address this sandbox resolved for another name
    assert probe(locked, 'resolve("a.example.org")') == ["198.51.100.20"]
    assert probe(locked, 'tls("a.example.org", sni="api.openai.com", addr="198.51.100.20")') in (
        "ConnectionResetError",
        "SSLEOFError",
        "SSLZeroReturnError",
    )
    # no SNI
    assert probe(locked, 'tls("api.openai.com", sni=None, addr="203.0.113.10")') in (
        "ConnectionResetError",
        "SSLEOFError",
        "SSLZeroReturnError",
    )
    # control: allowed SNI to its own resolved address
    assert probe(locked, 'tls("api.openai.com")').startswith("OK:")


def test_server_first_protocol_passes_only_to_resolved_allowed_host(locked: Sandbox) -> None:
    # before this sandbox resolved smtp.lab, its address is refused in the kernel
    assert (
        probe(locked, 'tcp("203.0.113.25", 25, payload=b"", timeout=15)')
        == "ConnectionRefusedError"
    )
    assert probe(locked, 'resolve("smtp.lab")') == ["203.0.113.25"]
    # The client sends nothing: after the proxy's peek window the stream is handled as
    # opaque and passes because smtp.lab is an allowed name this sandbox resolved.
    banner = probe(locked, 'tcp("smtp.lab", 25, payload=b"", timeout=15)')
    assert str(banner).startswith("DATA:220 smtp.lab")


def test_non_public_answers_stripped_and_metadata_refused(
    locked: Sandbox, open_sbx: Sandbox
) -> None:
    assert probe(locked, 'resolve("metadata.lab")') in ("gaierror", [])
    for s in (locked, open_sbx):
        assert probe(s, 'tcp("169.254.169.254", 80)') == "ConnectionRefusedError"
        assert probe(s, 'tcp("10.1.2.3", 80)') == "ConnectionRefusedError"
        assert probe(s, 'tcp("127.0.0.53", 53)') in ("ConnectionRefusedError",)


def test_other_query_types_return_no_data(locked: Sandbox) -> None:
    r = locked.commands.run(
        'python3 -c "import socket,struct;'
        "q=b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x03txt\\x03lab\\x00\\x00\\x10\\x00\\x01';"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(3);"
        "s.sendto(q,('8.8.8.8',53));d=s.recv(512);print(struct.unpack('>H',d[6:8])[0], d[3]&15)\"",
        timeout=30,
    )
    ancount, rcode = r.stdout.split()
    assert ancount == "0", r.stdout  # answered by the node's resolver, with no data


def test_udp_to_dns_only_address_refused(locked: Sandbox, open_sbx: Sandbox) -> None:
    assert probe(locked, 'resolve("api.openai.com")') == ["203.0.113.10"]
    assert probe(locked, 'udp("203.0.113.10", 443)') in (
        "ConnectionRefusedError",
        "timeout",
        "TimeoutError",
    )
    # control: an open policy passes UDP to the same lab host
    assert probe(open_sbx, 'udp("203.0.113.10", 443)') == "DATA:ping"


def test_open_policy_reaches_lab_and_floor_still_applies(open_sbx: Sandbox) -> None:
    assert probe(open_sbx, 'tcp("evil.com", 443)') == "CONNECTED"
    assert probe(open_sbx, 'http("https://evil.com/")') == "OK:200"


def test_cidr_policy_and_no_net_admin(server: dict[str, str], runtime: str) -> None:
    s = _create(runtime, ["203.0.113.10/32"], [ALL_TRAFFIC])
    try:
        assert probe(s, 'tcp("203.0.113.10", 443)') == "CONNECTED"
        assert probe(s, 'tcp("203.0.113.66", 443)') == "ConnectionRefusedError"
        # root inside cannot touch the datapath: rules live outside its namespace
        r = s.commands.run("ip route del default; ip link set eth0 down; echo $?", user="root")
        assert probe(s, 'tcp("203.0.113.10", 443)') == "CONNECTED", r.stdout + r.stderr
    finally:
        s.kill(wait=True)


def test_policy_replace_cuts_and_reopens(server: dict[str, str], runtime: str) -> None:
    s = _create(runtime, ["api.openai.com"], [ALL_TRAFFIC])
    try:
        h = {"X-API-Key": server["key"]}
        assert probe(s, 'tcp("api.openai.com", 443)') == "CONNECTED"
        r = httpx.put(
            f"{server['url']}/sandboxes/{s.sandbox_id}/network",
            headers=h,
            json={"allow_out": ["evil.com"], "deny_out": ["0.0.0.0/0"]},
        )
        assert r.status_code == 200, r.text
        assert httpx.get(f"{server['url']}/sandboxes/{s.sandbox_id}/network", headers=h).json() == {
            "allow_out": ["evil.com"],
            "deny_out": ["0.0.0.0/0"],
        }
        assert probe(s, 'tcp("evil.com", 443)') == "CONNECTED"
        assert probe(s, 'tcp("api.openai.com", 443)') == "ConnectionRefusedError"
        bad = httpx.put(
            f"{server['url']}/sandboxes/{s.sandbox_id}/network",
            headers=h,
            json={"allow_out": ["not a domain"], "deny_out": ["0.0.0.0/0"]},
        )
        assert bad.status_code == 400 and "allow_out" in bad.json()["message"]
    finally:
        s.kill(wait=True)


def test_audit_records_decisions(server: dict[str, str], locked: Sandbox) -> None:
    probe(locked, 'tcp("evil.com", 443)')
    probe(locked, 'tcp("api.openai.com", 443)')
    h = {"X-API-Key": server["key"]}
    url = f"{server['url']}/sandboxes/{locked.sandbox_id}/audit"
    deadline = time.monotonic() + 10
    events: list[dict] = []
    while time.monotonic() < deadline:
        events = httpx.get(url, headers=h, params={"limit": 1000}).json()["events"]
        kinds = {(e["kind"], e["verdict"], e.get("name")) for e in events}
        if ("dns", "deny", "evil.com") in kinds and ("dns", "allow", "api.openai.com") in kinds:
            break
        time.sleep(0.3)
    kinds = {(e["kind"], e["verdict"], e.get("name")) for e in events}
    assert ("dns", "deny", "evil.com") in kinds
    assert ("dns", "allow", "api.openai.com") in kinds
    denied = httpx.get(url, headers=h, params={"verdict": "deny", "kind": "dns"}).json()["events"]
    assert denied and all(e["verdict"] == "deny" and e["kind"] == "dns" for e in denied)
