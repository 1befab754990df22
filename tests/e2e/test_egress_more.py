"""More of SECURITY.md's egress table and §11.3's truth table, from inside real sandboxes.

Complements test_egress.py: CIDR-only policies (open default, deny lists, `::/0`, overlap),
IPv6 entries refused, port-53 interception over TCP, DoT/DoH, ClientHello split over
segments and records, HTTP keep-alive / CONNECT / absolute-form, DNS-admitted addresses
expiring, multi-address names, CNAME chains and the metadata floor under every policy. Each
negative probe asserts the failure class and sits next to a positive control. runc + runsc.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from declaw import ALL_TRAFFIC, InvalidArgumentException, NetworkPolicy, Sandbox, SecurityPolicy

from declawd.client import BadRequest, DeclawdClient
from tests.e2e.test_egress import PROBE, _querylog

pytestmark = pytest.mark.e2e

GATEWAY_UPLINK = "100.96.0.1"  # the gateway's address on the lab link (contracts.md)
RESET = ("ConnectionResetError", "SSLEOFError", "SSLZeroReturnError", "EOF", "BrokenPipeError")

PROBE_MORE = r"""
import json, socket, ssl, struct, sys, time

def _name(buf, i):
    while True:
        n = buf[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        i += n + 1

def _exactly(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"{len(buf)} of {n} bytes")
        buf += chunk
    return buf

def dns_tcp(server, name, qtype=1):
    q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    q += struct.pack(">HH", qtype, 1)
    try:
        s = socket.create_connection((server, 53), timeout=5)
        s.sendall(struct.pack(">H", len(q)) + q)
        n = struct.unpack(">H", _exactly(s, 2))[0]
        buf = _exactly(s, n)
        s.close()
    except Exception as e:
        return type(e).__name__ + ":" + str(e)
    rcode, ancount = buf[3] & 15, struct.unpack(">H", buf[6:8])[0]
    i = _name(buf, 12) + 4
    addrs = []
    for _ in range(ancount):
        i = _name(buf, i)
        rtype, _, _, rdlen = struct.unpack(">HHIH", buf[i:i + 10])
        i += 10
        if rtype == 1:
            addrs.append(socket.inet_ntoa(buf[i:i + 4]))
        i += rdlen
    return {"rcode": rcode, "a": sorted(addrs)}

def _refragment(flight, records):
    # one TLS record holding the ClientHello -> the same handshake bytes in `records` records
    head, body = flight[:5], flight[5:5 + struct.unpack(">H", flight[3:5])[0]]
    step = -(-len(body) // records)
    out = b""
    for k in range(0, len(body), step):
        piece = body[k:k + step]
        out += head[:3] + struct.pack(">H", len(piece)) + piece
    return out + flight[5 + len(body):]

def tls_split(host, sni=None, addr=None, pieces=(1, 4, 40), records=1, port=443):
    # A real ClientHello (from ssl.MemoryBIO) written in several TCP segments and optionally
    # re-framed over several TLS records, then a normal handshake and one HTTP request.
    sni = sni or host
    ctx = ssl.create_default_context()
    if sni != host:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    try:
        s = socket.create_connection((addr or host, port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = _refragment(out.read(), records)
        pos = 0
        for size in pieces:
            s.sendall(hello[pos:pos + size])
            pos += size
            time.sleep(0.1)
        s.sendall(hello[pos:])
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                pending = out.read()
                if pending:
                    s.sendall(pending)
                data = s.recv(65536)
                if not data:
                    return "EOF"
                inc.write(data)
        obj.write(b"GET / HTTP/1.1\r\nHost: " + sni.encode() + b"\r\nConnection: close\r\n\r\n")
        s.sendall(out.read())
        while True:
            try:
                first = obj.read(4096)
                break
            except ssl.SSLWantReadError:
                data = s.recv(65536)
                if not data:
                    return "EOF"
                inc.write(data)
        s.close()
        return "OK:" + first.split(b"\r\n", 1)[0].decode()
    except Exception as e:
        return type(e).__name__

def _response(f):
    status = f.readline()
    if not status:
        return "EOF"
    length = 0
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    f.read(length)
    return status.split(b" ")[1].decode()

def http_raw(addr, requests, port=80):
    # several requests on ONE connection; each entry: (request line target, Host header)
    out = []
    try:
        s = socket.create_connection((addr, port), timeout=5)
        f = s.makefile("rb")
        for target, host in requests:
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            out.append(_response(f))
    except Exception as e:
        out.append(type(e).__name__)
    return out

def connect_method(addr, authority, port=80):
    try:
        s = socket.create_connection((addr, port), timeout=5)
        s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        return _response(s.makefile("rb"))
    except Exception as e:
        return type(e).__name__

def ttl_expiry(name, poll=2.0, limit=150.0):
    # Resolve once, keep one TLS connection busy, and poll new connects until refused.
    addr = socket.gethostbyname(name)
    s = ssl.create_default_context().wrap_socket(
        socket.create_connection((addr, 443), timeout=5), server_hostname=name)
    f = s.makefile("rb")
    def req():
        try:
            s.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
            return _response(f)
        except Exception as e:
            return type(e).__name__
    first, new, start = req(), "CONNECTED", time.monotonic()
    while time.monotonic() - start < limit:
        try:
            socket.create_connection((addr, 443), timeout=5).close()
        except Exception as e:
            new = type(e).__name__
            break
        if req() != "200":
            break
        time.sleep(poll)
    return {"addr": addr, "first": first, "new_after_expiry": new, "established": req()}

print(json.dumps(eval(sys.argv[1])))
"""


def run(s: Sandbox, script: str, expr: str, timeout: int = 60) -> object:
    r = s.commands.run(f"python3 {script} {json.dumps(expr)!s}", timeout=timeout)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def probe(s: Sandbox, expr: str) -> object:
    return run(s, "/tmp/probe.py", expr)


def more(s: Sandbox, expr: str, timeout: int = 60) -> object:
    return run(s, "/tmp/more.py", expr, timeout)


def _create(runtime: str, allow: list[str] | None, deny: list[str] | None) -> Sandbox:
    security = None
    if allow is not None or deny is not None:
        security = SecurityPolicy(network=NetworkPolicy(allow_out=allow or [], deny_out=deny or []))
    s = Sandbox.create(
        template="python", timeout=300, metadata={"declaw.runtime": runtime}, security=security
    )
    s.files.write("/tmp/probe.py", PROBE)
    s.files.write("/tmp/more.py", PROBE_MORE)
    return s


@pytest.fixture
def client(server: dict[str, str]) -> Iterator[DeclawdClient]:
    with DeclawdClient(api_key=server["key"], domain=server["domain"]) as c:
        yield c


@pytest.fixture
def sbx(server: dict[str, str], runtime: str) -> Iterator[Sandbox]:
    s = _create(runtime, None, None)
    try:
        yield s
    finally:
        s.kill(wait=True)


LOCKED = ["api.openai.com", "a.example.org", "multi.lab", "shortttl.lab", "cdn.example.com"]


@pytest.fixture
def locked(server: dict[str, str], runtime: str) -> Iterator[Sandbox]:
    s = _create(runtime, LOCKED, [ALL_TRAFFIC])
    try:
        yield s
    finally:
        s.kill(wait=True)


# --- §11.3 truth table: CIDR-only policies, replaced in place on one sandbox -----------------


def test_truth_table_cidr_rows(sbx: Sandbox, client: DeclawdClient) -> None:
    api, evil = "203.0.113.10", "203.0.113.66"
    # empty / empty: open
    assert probe(sbx, f'tcp("{evil}", 443)') == "CONNECTED"
    # CIDRs only in allow_out, deny empty: the rest stays open
    client.set_network(sbx.sandbox_id, [f"{api}/32"], [])
    assert probe(sbx, f'tcp("{api}", 443)') == "CONNECTED"
    assert probe(sbx, f'tcp("{evil}", 443)') == "CONNECTED"
    # deny CIDRs only: those refused in the kernel, the rest open
    client.set_network(sbx.sandbox_id, [], [f"{evil}/32"])
    assert probe(sbx, f'tcp("{evil}", 443)') == "ConnectionRefusedError"
    assert probe(sbx, 'udp("198.51.100.20", 9999)') == "DATA:ping"  # open also for UDP
    assert probe(sbx, f'tcp("{api}", 443)') == "CONNECTED"
    # allow beats deny on overlap
    client.set_network(sbx.sandbox_id, [f"{api}/32"], ["203.0.113.0/24"])
    assert probe(sbx, f'tcp("{api}", 443)') == "CONNECTED"
    assert probe(sbx, f'tcp("{evil}", 443)') == "ConnectionRefusedError"
    assert probe(sbx, 'tcp("198.51.100.20", 443)') == "CONNECTED"  # outside the deny: open
    client.set_network(sbx.sandbox_id, ["203.0.113.0/24"], [f"{evil}/32"])
    assert probe(sbx, f'tcp("{evil}", 443)') == "CONNECTED"
    # `::/0` only: IPv6 refused (the node blocks IPv6: AAAA empty), IPv4 open
    client.set_network(sbx.sandbox_id, [], ["::/0"])
    assert probe(sbx, f'tcp("{evil}", 443)') == "CONNECTED"
    assert probe(sbx, 'http("https://evil.com/")') == "OK:200"
    r = sbx.commands.run(
        "python3 -c \"import socket\ntry:\n print(socket.getaddrinfo('v6.lab', 443, "
        'socket.AF_INET6))\nexcept OSError as e:\n print(type(e).__name__)"',
        timeout=30,
    )
    assert r.stdout.strip() == "gaierror", r.stdout  # no AAAA data, though the lab has one
    assert probe(sbx, 'resolve("v6.lab")') == ["203.0.113.60"]  # control: A still answered


def test_ipv6_entries_refused_with_400(sbx: Sandbox, client: DeclawdClient) -> None:
    for allow, deny, field in (
        (["2001:db8::/32"], [], "allow_out"),
        ([], ["2001:db8::1"], "deny_out"),
        (["api.openai.com"], [ALL_TRAFFIC, "2001:db8::/32"], "deny_out"),
    ):
        with pytest.raises(BadRequest) as exc:
            client.set_network(sbx.sandbox_id, allow, deny)
        assert field in exc.value.message and "IPv6" in exc.value.message
        with pytest.raises(InvalidArgumentException):
            Sandbox.create(
                template="python",
                timeout=30,
                security=SecurityPolicy(network=NetworkPolicy(allow_out=allow, deny_out=deny)),
            )
    # control: the same sandbox accepts IPv4 entries and the `::/0` deny
    assert client.set_network(sbx.sandbox_id, [], ["::/0"]).deny_out == ["::/0"]


# --- DNS: any port 53 is the node's resolver; DoT / DoH refused ------------------------------


def test_tcp_port_53_anywhere_answered_by_node_resolver(locked: Sandbox) -> None:
    t0 = time.time()
    # TCP to a public resolver's address: answered by the node with the lab's answer
    assert more(locked, 'dns_tcp("8.8.8.8", "api.openai.com")') == {
        "rcode": 0,
        "a": ["203.0.113.10"],
    }
    assert more(locked, 'dns_tcp("203.0.113.66", "a.example.org")') == {
        "rcode": 0,
        "a": ["198.51.100.20"],
    }
    # a denied name over TCP gets the sink address, and never leaves the node
    assert more(locked, 'dns_tcp("8.8.8.8", "evil.com")')["a"] == ["198.18.0.1"]  # type: ignore[index]
    time.sleep(0.5)  # the lab appends its log line after answering
    log = _querylog(t0 - 1)
    ours = [q for q in log if q["name"].rstrip(".") in ("api.openai.com", "a.example.org")]
    assert ours, log
    # the upstream query came from the gateway's uplink, not from the sandbox to 8.8.8.8
    assert {q["client"] for q in ours} == {GATEWAY_UPLINK}, ours
    assert "evil.com" not in {q["name"].rstrip(".") for q in log}


def test_dot_and_doh_to_unlisted_resolver_refused(locked: Sandbox) -> None:
    for addr in ("1.1.1.1", "8.8.8.8", "203.0.113.66"):
        assert probe(locked, f'tcp("{addr}", 853)') == "ConnectionRefusedError"
    # DoH: HTTPS to a resolver that is not listed, by address and by name
    assert probe(locked, 'tls("1.1.1.1", 443, sni="cloudflare-dns.com")') == (
        "ConnectionRefusedError"
    )
    assert probe(locked, 'http("https://dns.google/dns-query?dns=AAAB")') == (
        "URLError:ConnectionRefusedError"
    )
    # DoH hidden behind an allowed address: the SNI of the unlisted name is refused
    assert probe(locked, 'resolve("api.openai.com")') == ["203.0.113.10"]
    assert probe(locked, 'tls("api.openai.com", sni="dns.google", addr="203.0.113.10")') in RESET
    # DoT to an allowed host's address on 853: not TLS for an allowed SNI
    assert probe(locked, 'tls("api.openai.com", 853, sni="dns.google", addr="203.0.113.10")') in (
        *RESET,
        "ConnectionRefusedError",
    )
    # control: HTTPS to the allowed name
    assert probe(locked, 'tls("api.openai.com")') == "OK:HTTP/1.1 200 OK"


# --- L7 proxy ------------------------------------------------------------------------------


def test_split_client_hello_parsed(locked: Sandbox) -> None:
    # several TCP segments (1, 4, 40 bytes, then the rest)
    assert more(locked, 'tls_split("api.openai.com")') == "OK:HTTP/1.1 200 OK"
    # the handshake message spread over three TLS records, and over segments too
    assert more(locked, 'tls_split("api.openai.com", records=3)') == "OK:HTTP/1.1 200 OK"
    # the same split with a denied SNI to the allowed address is inspected and reset
    assert more(locked, 'tls_split("api.openai.com", sni="evil.com", addr="203.0.113.10")') in RESET
    assert (
        more(
            locked,
            'tls_split("api.openai.com", sni="evil.com", addr="203.0.113.10", records=3)',
        )
        in RESET
    )


def test_http_keepalive_connect_and_absolute_form(locked: Sandbox) -> None:
    a = "198.51.100.20"
    assert probe(locked, 'resolve("a.example.org")') == [a]
    # control: two allowed requests on one keep-alive connection
    assert more(locked, f'http_raw("{a}", [("/", "a.example.org"), ("/", "a.example.org")])') == [
        "200",
        "200",
    ]
    # the second request of the same connection names a denied host: cut
    got = more(locked, f'http_raw("{a}", [("/", "a.example.org"), ("/", "evil.com")])')
    assert got[0] == "200" and got[1] in RESET, got  # type: ignore[index]
    # absolute-form to another host, with an allowed Host header: refused
    got = more(locked, f'http_raw("{a}", [("http://evil.com/", "a.example.org")])')
    assert got[0] in RESET, got  # type: ignore[index]
    got = more(
        locked, f'http_raw("{a}", [("/", "a.example.org"), ("http://evil.com/", "a.example.org")])'
    )
    assert got[0] == "200" and got[1] in RESET, got  # type: ignore[index]
    # CONNECT to another host: refused
    assert more(locked, f'connect_method("{a}", "evil.com:443")') in RESET


def test_dns_admitted_address_expires_but_established_survives(locked: Sandbox) -> None:
    # shortttl.lab has TTL 2 s: admitted for clamp(2)=5 s + 30 s grace; the script polls
    # new connects every 2 s until the kernel refuses one, keeping one TLS session busy.
    got = more(locked, 'ttl_expiry("shortttl.lab")', timeout=240)
    assert got == {
        "addr": "203.0.113.52",
        "first": "200",
        "new_after_expiry": "ConnectionRefusedError",
        "established": "200",
    }
    # re-resolving admits the address again
    assert probe(locked, 'tcp("shortttl.lab", 443)') == "CONNECTED"


def test_multi_address_names_and_cname_chains(locked: Sandbox) -> None:
    assert probe(locked, 'resolve("multi.lab")') == ["203.0.113.50", "203.0.113.51"]
    for addr in ("203.0.113.50", "203.0.113.51"):
        assert probe(locked, f'tcp("{addr}", 443)') == "CONNECTED"
        assert probe(locked, f'http("http://{addr}/", host="multi.lab")') == "OK:200"
    # cdn.example.com -> www.example.com -> example.com: the allowed alias is followed
    assert probe(locked, 'resolve("cdn.example.com")') == ["203.0.113.20"]
    assert probe(locked, 'tcp("cdn.example.com", 443)') == "CONNECTED"
    assert probe(locked, 'http("http://cdn.example.com/")') == "OK:200"
    # the chain's other names are not allowed by themselves
    assert probe(locked, 'resolve("example.com")') == ["198.18.0.1"]
    assert probe(locked, 'http("http://203.0.113.20/", host="example.com")') in (
        "URLError:ConnectionResetError",
        "ConnectionResetError",
        "RemoteDisconnected",
        "URLError:RemoteDisconnected",
    )


# --- platform floor --------------------------------------------------------------------------


def test_metadata_refused_under_every_policy(sbx: Sandbox, client: DeclawdClient) -> None:
    for allow, deny, control in (
        ([], [], 'tcp("evil.com", 443)'),
        (["169.254.169.254/32"], [], 'tcp("evil.com", 443)'),
        (["169.254.169.254/32", "203.0.113.10/32"], [ALL_TRAFFIC], 'tcp("203.0.113.10", 443)'),
        (["169.254.0.0/16", "0.0.0.0/0"], [], 'tcp("evil.com", 443)'),
        (["metadata.lab", "api.openai.com"], [ALL_TRAFFIC], 'tcp("api.openai.com", 443)'),
    ):
        client.set_network(sbx.sandbox_id, allow, deny)
        assert probe(sbx, 'tcp("169.254.169.254", 80)') == "ConnectionRefusedError", allow
        assert probe(sbx, 'udp("169.254.169.254", 80)') in (
            "ConnectionRefusedError",
            "timeout",
            "TimeoutError",
        )
        assert probe(sbx, 'resolve("metadata.lab")') in ("gaierror", [], ["198.18.0.1"])
        assert probe(sbx, control) == "CONNECTED", (allow, deny)
