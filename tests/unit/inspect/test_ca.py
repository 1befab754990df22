"""Per-sandbox CAs and the leaves the gateway mints from them, verified with Python's own
TLS stack in memory (no sockets)."""

from __future__ import annotations

import datetime as dt
import ssl
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from declawd.inspect.ca import (
    CERT_FILE,
    KEY_FILE,
    LEAF_VALIDITY,
    CaRef,
    LeafContexts,
    SandboxCA,
    normalize_host,
)


def _handshake(
    server_ctx: ssl.SSLContext, ca_pem: bytes, server_hostname: str, alpn: list[str]
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A full TLS handshake between two SSLObjects over memory BIOs; raises what the
    client's verification raises."""
    client_ctx = ssl.create_default_context(cadata=ca_pem.decode())
    # Python 3.13's default, and what recent OpenSSL-based clients check.
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    client_ctx.set_alpn_protocols(alpn)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, end in (("client", client), ("server", server)):
            if done[name]:
                continue
            try:
                end.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return client, server
    raise AssertionError("handshake did not finish")


@pytest.fixture
def cas(tmp_path: Path) -> dict[str, SandboxCA]:
    return {sid: SandboxCA.create(tmp_path / sid / "ca", sid) for sid in ("sbx-a", "sbx-b")}


def _leaves(tmp_path: Path, cas: dict[str, SandboxCA], **kwargs: Any) -> LeafContexts:
    refs = {sid: ca.ref for sid, ca in cas.items()}
    return LeafContexts(refs.get, tmp_path / "gateway" / "leaves", **kwargs)


def test_a_leaf_verifies_against_its_sandboxes_ca_with_alpn(
    tmp_path: Path, cas: dict[str, SandboxCA]
) -> None:
    leaves = _leaves(tmp_path, cas)
    ctx = leaves.server_context("sbx-a", "api.example.com")
    client, server = _handshake(ctx, cas["sbx-a"].cert_pem, "api.example.com", ["h2", "http/1.1"])
    assert client.selected_alpn_protocol() == "h2"
    assert server.version() in ("TLSv1.2", "TLSv1.3")
    client, _ = _handshake(ctx, cas["sbx-a"].cert_pem, "api.example.com", ["http/1.1"])
    assert client.selected_alpn_protocol() == "http/1.1"
    peer = x509.load_der_x509_certificate(client.getpeercert(binary_form=True) or b"")
    san = peer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["api.example.com"]
    assert peer.issuer == cas["sbx-a"].cert.subject
    lifetime = peer.not_valid_after_utc - peer.not_valid_before_utc
    assert lifetime == LEAF_VALIDITY


def test_a_leaf_does_not_verify_against_another_sandboxes_ca(
    tmp_path: Path, cas: dict[str, SandboxCA]
) -> None:
    ctx = _leaves(tmp_path, cas).server_context("sbx-a", "api.example.com")
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        _handshake(ctx, cas["sbx-b"].cert_pem, "api.example.com", ["http/1.1"])


def test_a_leaf_does_not_verify_for_another_host(tmp_path: Path, cas: dict[str, SandboxCA]) -> None:
    ctx = _leaves(tmp_path, cas).server_context("sbx-a", "api.example.com")
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _handshake(ctx, cas["sbx-a"].cert_pem, "other.example.com", ["http/1.1"])


def test_an_ip_literal_gets_an_ip_san(tmp_path: Path, cas: dict[str, SandboxCA]) -> None:
    ctx = _leaves(tmp_path, cas).server_context("sbx-a", "203.0.113.7")
    client, _ = _handshake(ctx, cas["sbx-a"].cert_pem, "203.0.113.7", ["http/1.1"])
    peer = x509.load_der_x509_certificate(client.getpeercert(binary_form=True) or b"")
    san = peer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["203.0.113.7"]
    assert san.get_values_for_type(x509.DNSName) == []


def test_a_host_longer_than_a_common_name_is_named_by_a_critical_san(
    tmp_path: Path, cas: dict[str, SandboxCA]
) -> None:
    host = "a" * 60 + ".example.com"
    ctx = _leaves(tmp_path, cas).server_context("sbx-a", host)
    client, _ = _handshake(ctx, cas["sbx-a"].cert_pem, host, ["http/1.1"])
    peer = x509.load_der_x509_certificate(client.getpeercert(binary_form=True) or b"")
    assert peer.subject == x509.Name([])
    assert peer.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical


def test_key_files_are_root_only_and_leaf_files_do_not_stay(
    tmp_path: Path, cas: dict[str, SandboxCA]
) -> None:
    ca_dir = cas["sbx-a"].dir
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((ca_dir / KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE((ca_dir / CERT_FILE).stat().st_mode) == 0o644
    leaves = _leaves(tmp_path, cas)
    leaves.server_context("sbx-a", "api.example.com")
    assert stat.S_IMODE(leaves.tmp_dir.stat().st_mode) == 0o700
    assert list(leaves.tmp_dir.iterdir()) == []


def test_load_gives_back_the_same_ca(tmp_path: Path, cas: dict[str, SandboxCA]) -> None:
    loaded = SandboxCA.load(cas["sbx-a"].dir)
    assert loaded.fingerprint == cas["sbx-a"].fingerprint
    assert loaded.cert_pem == cas["sbx-a"].cert_pem
    assert "PRIVATE" not in repr(loaded)


def test_ca_is_a_p256_ca_limited_to_leaves(cas: dict[str, SandboxCA]) -> None:
    cert = cas["sbx-a"].cert
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert (bc.value.ca, bc.value.path_length, bc.critical) == (True, 0, True)
    assert cas["sbx-a"].key.curve.name == "secp256r1"


def test_contexts_are_cached_per_sandbox_and_host(
    tmp_path: Path, cas: dict[str, SandboxCA]
) -> None:
    leaves = _leaves(tmp_path, cas)
    first = leaves.server_context("sbx-a", "api.example.com")
    assert leaves.server_context("sbx-a", "API.example.com.") is first
    other_host = leaves.server_context("sbx-a", "b.example.com")
    other_sandbox = leaves.server_context("sbx-b", "api.example.com")
    assert other_host is not first and other_sandbox is not first
    assert leaves.stats == {"hits": 1, "mints": 3}
    leaves.forget("sbx-a")
    assert len(leaves) == 1
    assert leaves.server_context("sbx-a", "api.example.com") is not first


def test_the_cache_is_bounded_least_recently_used_first(
    tmp_path: Path, cas: dict[str, SandboxCA]
) -> None:
    leaves = _leaves(tmp_path, cas, max_size=2)
    a = leaves.server_context("sbx-a", "a.example.com")
    leaves.server_context("sbx-a", "b.example.com")
    assert leaves.server_context("sbx-a", "a.example.com") is a  # a is now the most recent
    leaves.server_context("sbx-a", "c.example.com")  # evicts b
    assert len(leaves) == 2
    assert leaves.server_context("sbx-a", "a.example.com") is a
    assert leaves.stats["mints"] == 3
    leaves.server_context("sbx-a", "b.example.com")
    assert leaves.stats["mints"] == 4


def test_a_leaf_near_its_end_is_minted_again(tmp_path: Path, cas: dict[str, SandboxCA]) -> None:
    now = [dt.datetime(2030, 1, 1, tzinfo=dt.UTC)]
    leaves = _leaves(tmp_path, cas, clock=lambda: now[0])
    first = leaves.server_context("sbx-a", "api.example.com")
    now[0] += dt.timedelta(days=5)
    assert leaves.server_context("sbx-a", "api.example.com") is first
    now[0] += dt.timedelta(days=1)
    assert leaves.server_context("sbx-a", "api.example.com") is not first


def test_a_sandbox_without_a_ca_or_with_a_replaced_one_gets_no_leaf(
    tmp_path: Path, cas: dict[str, SandboxCA]
) -> None:
    refs = {"sbx-a": CaRef(cas["sbx-a"].dir, cas["sbx-b"].fingerprint)}
    leaves = LeafContexts(refs.get, tmp_path / "leaves")
    with pytest.raises(LookupError, match="sbx-c has no CA"):
        leaves.server_context("sbx-c", "api.example.com")
    with pytest.raises(LookupError, match="not the expected one"):
        leaves.server_context("sbx-a", "api.example.com")


@pytest.mark.parametrize("host", ["", ".", "a b.com", "*.example.com", "ex\u00e4mple.com"])
def test_names_no_certificate_can_carry_are_refused(host: str) -> None:
    with pytest.raises(ValueError, match="not a server name"):
        normalize_host(host)
