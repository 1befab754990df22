"""Which connections are intercepted, and what happens when the upstream cannot be trusted.

No interception without need: a sandbox whose policy needs none keeps the lab CA's own
certificate and its request reaches the lab byte for byte, while an inspecting sandbox sees
a leaf from its OWN CA (one per sandbox). Under an open policy all TCP of an inspecting
sandbox goes through the proxy (rewritten, opaque streams still pass) and UDP to 443 is
refused so QUIC falls back to TCP; a CIDR-allowed destination is inspected too. An upstream
with a bad certificate is a 502 with a JSON message, audited, and the lab never sees the
request; without inspection the client itself meets the bad certificate.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
from cryptography import x509
from declaw import ALL_TRAFFIC, NetworkPolicy, Sandbox, SecurityPolicy

from declawd.client import DeclawdClient
from declawd.lab.ca import ca_cert_path
from tests.e2e import conftest as c
from tests.e2e.test_inspection import (
    ALLOWED,
    FULL,
    H1_HOST,
    assert_rewritten_both_ways,
    create,
    echo,
    eventually,
    inspecting,
    lab_requests,
    marker,
    probe,
    record_headers,
    seen_upstream,
    settings,
)

pytestmark = pytest.mark.e2e

RUNTIMES = c.RUNTIMES if FULL else ["runc"]
API_ADDR = "203.0.113.10"  # api.openai.com in the lab: TLS on 443, TCP echo :7, UDP echo :443
BAD_CERT_HOSTS = ("untrusted.example.net", "wrongname.example.net")
BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


@pytest.fixture(scope="module")
def client(server: dict[str, str]) -> Iterator[DeclawdClient]:
    with DeclawdClient(api_key=server["key"], domain=server["domain"]) as cl:
        yield cl


def _lab_ca() -> x509.Certificate:
    return x509.load_pem_x509_certificate(ca_cert_path(settings()).read_bytes())


def _peer(s: Sandbox, host: str = H1_HOST) -> x509.Certificate:
    got = probe(s, f"tls_peer({host!r})")
    assert "error" not in got, got
    return x509.load_der_x509_certificate(base64.b64decode(got["der"]))


def _bundle(s: Sandbox) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(s.files.read(BUNDLE).encode())


@pytest.mark.parametrize("runtime", c.RUNTIMES)
def test_no_interception_without_need(server: dict[str, str], runtime: str) -> None:
    network = NetworkPolicy(allow_out=ALLOWED, deny_out=[ALL_TRAFFIC])
    plain = create(runtime, security=SecurityPolicy(network=network))
    try:
        inspected = create(runtime, security=inspecting(ALLOWED))
        try:
            lab_ca = _lab_ca()
            # Passthrough: the lab's own leaf, issued by the lab CA.
            leaf = _peer(plain)
            assert leaf.issuer == lab_ca.subject
            leaf.verify_directly_issued_by(lab_ca)
            # Inspected: a leaf minted by the sandbox's own CA, which its trust bundle holds
            # and the other sandbox's bundle does not.
            minted = _peer(inspected)
            assert minted.issuer != lab_ca.subject
            issuers = [ca for ca in _bundle(inspected) if ca.subject == minted.issuer]
            assert len(issuers) == 1, [ca.subject for ca in _bundle(inspected)]
            minted.verify_directly_issued_by(issuers[0])
            assert issuers[0] not in _bundle(plain)
            san = minted.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert san.get_values_for_type(x509.DNSName) == [H1_HOST]

            # The passthrough request reaches the lab exactly as the sandbox wrote it.
            m, t0 = marker(), time.time()
            body = json.dumps({"msg": "hello-out", "ask": "pong-in"}).encode()
            request = (
                f"POST /anything?case={m} HTTP/1.1\r\nHost: {H1_HOST}\r\nX-Probe: exact\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode() + body
            got = probe(plain, f"raw_tls({H1_HOST!r}, {base64.b64encode(request).decode()!r})")
            assert got["head"].startswith("HTTP/1.1 200"), got
            assert json.loads(got["body"])["json"] == {"msg": "hello-out", "ask": "pong-in"}
            (rec,) = seen_upstream(H1_HOST, m, t0)
            assert record_headers(rec) == {
                "host": [H1_HOST],
                "x-probe": ["exact"],
                "content-type": ["application/json"],
                "content-length": [str(len(body))],
                "connection": ["close"],
            }, rec
            assert hashlib.sha256(body).hexdigest() in json.dumps(rec), rec
        finally:
            inspected.kill(wait=True)
    finally:
        plain.kill(wait=True)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_open_policy_is_inspected_and_quic_refused(
    server: dict[str, str], client: DeclawdClient, runtime: str
) -> None:
    opened = create(runtime, security=inspecting(None))
    try:
        control = create(runtime)  # open policy, nothing to inspect
        try:
            for host in (H1_HOST, "evil.com"):  # every host: the rules name none
                m, t0 = marker(), time.time()
                result = probe(opened, f"curl('https://{host}/anything?case={m}')")
                assert_rewritten_both_ways(result, host, m, t0)
            # QUIC cannot skip the scan: UDP to 443 is refused, while the same probe from the
            # sandbox without inspection gets the lab's echo.
            assert probe(opened, f"udp({API_ADDR!r}, 443)") in (
                "ConnectionRefusedError",
                "timeout",
                "TimeoutError",
            )
            assert probe(control, f"udp({API_ADDR!r}, 443)") == "DATA:ping"
            # A stream that is neither TLS nor HTTP still passes through the proxy (a line:
            # letters alone could still become an HTTP request line, so the proxy waits).
            assert probe(opened, f"tcp({H1_HOST!r}, 7, payload=b'ping\\n')") == "DATA:ping\n"

            def refused() -> bool:
                events = client.audit(opened.sandbox_id, kind="connection", verdict="deny")
                return any(e.reason == "udp_quic_inspect" for e in events)

            assert eventually(refused), "no udp_quic_inspect event"
        finally:
            control.kill(wait=True)
    finally:
        opened.kill(wait=True)


def test_cidr_allowed_destination_is_inspected(server: dict[str, str]) -> None:
    s = create(security=inspecting([f"{API_ADDR}/32"]))
    try:
        m, t0 = marker(), time.time()
        resolve = ["--resolve", f"{H1_HOST}:443:{API_ADDR}"]  # by address: no DNS rule needed
        result = probe(s, f"curl('https://{H1_HOST}/anything?case={m}', extra={resolve!r})")
        assert_rewritten_both_ways(result, H1_HOST, m, t0)
    finally:
        s.kill(wait=True)


def _tls_failures(client: DeclawdClient, sandbox_id: str, host: str) -> list[Any]:
    events = client.audit(sandbox_id, kind="connection", verdict="deny")
    return [e for e in events if e.reason == "upstream_tls_failed" and e.name == host]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_upstream_with_bad_certificate_is_502_audited_and_never_reached(
    server: dict[str, str], client: DeclawdClient, runtime: str
) -> None:
    allow = [*ALLOWED, *BAD_CERT_HOSTS]
    inspected = create(runtime, security=inspecting(allow))
    try:
        plain = create(
            runtime,
            security=SecurityPolicy(network=NetworkPolicy(allow_out=allow, deny_out=[ALL_TRAFFIC])),
        )
        try:
            t0 = time.time()
            for host in BAD_CERT_HOSTS:
                result = probe(inspected, f"curl('https://{host}/anything')")
                assert "error" not in result, result
                assert result["status"] == 502, result
                doc = json.loads(result["text"])
                assert doc["error"] == "upstream_unavailable" and doc["reason"], doc
                assert eventually(partial(_tls_failures, client, inspected.sandbox_id, host))
                # Without inspection the client meets the bad certificate itself.
                bare = probe(plain, f"curl('https://{host}/anything')")
                assert bare.get("exit") == 60, bare  # curl: peer certificate cannot be verified
            # Control: a good upstream through the same sandbox works and is logged ...
            m = marker()
            assert echo(probe(inspected, f"curl('https://{H1_HOST}/anything?case={m}')"))
            assert seen_upstream(H1_HOST, m, t0)
            # ... and by then the bad-certificate hosts have still seen no request at all.
            for host in BAD_CERT_HOSTS:
                assert lab_requests(host, t0) == [], host
        finally:
            plain.kill(wait=True)
    finally:
        inspected.kill(wait=True)


@pytest.mark.parametrize("runtime", c.RUNTIMES)
def test_the_sandbox_ca_key_is_nowhere_inside_the_sandbox(
    server: dict[str, str], runtime: str
) -> None:
    """SECURITY.md: the CA's private key lives outside every sandbox. Its base64 body is
    searched for over the sandbox's whole filesystem as root; the CA certificate, which the
    sandbox must trust, is found the same way (the search works)."""
    s = create(runtime, security=inspecting(ALLOWED))
    try:
        ca = settings().sandbox_dir(s.sandbox_id) / "ca"
        key_line = (ca / "ca.key").read_text().splitlines()[1]
        cert_line = (ca / "ca.pem").read_text().splitlines()[1]

        def found(needle: str) -> list[str]:
            cmd = (
                "grep -rlsF --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev "
                f"-e {needle!r} / || true"
            )
            return s.commands.run(cmd, user="root", timeout=300).stdout.split()

        # Control: the trusted certificate is found in the bundle the sandbox reads.
        assert "/etc/declawd/ca-bundle.pem" in found(cert_line)
        assert found(key_line) == []  # the key: in no file anywhere
    finally:
        s.kill(wait=True)
