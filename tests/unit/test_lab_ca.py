"""The lab CA: created once, reused, private key 0600, leaves chain to it, bundle holds it."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from declawd.config import Settings
from declawd.lab import ca as lab_ca
from declawd.lab.ca import ca_bundle_path, ca_cert_path, ca_key_path, ensure_ca


def _settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path)


def test_ca_is_created_once_and_reused(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    first = ensure_ca(s)
    pem, key = ca_cert_path(s).read_bytes(), ca_key_path(s).read_bytes()
    second = ensure_ca(s)
    assert ca_cert_path(s).read_bytes() == pem and ca_key_path(s).read_bytes() == key
    assert first.cert == second.cert
    assert stat.S_IMODE(ca_key_path(s).stat().st_mode) == 0o600
    assert first.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_bundle_is_system_cas_plus_lab_ca(tmp_path: Path, monkeypatch: object) -> None:
    system = tmp_path / "system.crt"
    other = ensure_ca(_settings(tmp_path / "other")).cert_pem
    system.write_bytes(other)
    monkeypatch.setattr(lab_ca, "SYSTEM_BUNDLE", system)  # type: ignore[attr-defined]
    s = _settings(tmp_path / "s")
    ca = ensure_ca(s)
    bundle = ca_bundle_path(s).read_bytes()
    assert bundle.startswith(other) and bundle.endswith(ca.cert_pem)


def test_bundle_without_system_store_holds_lab_ca(tmp_path: Path, monkeypatch: object) -> None:
    monkeypatch.setattr(lab_ca, "SYSTEM_BUNDLE", tmp_path / "absent")  # type: ignore[attr-defined]
    s = _settings(tmp_path)
    ca = ensure_ca(s)
    assert ca_bundle_path(s).read_bytes().endswith(ca.cert_pem)


def test_leaf_verifies_against_lab_ca_for_its_names(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    ca = ensure_ca(s)
    cert_path, key_path = ca.leaf(["example.com", "www.example.com"])
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    leaf = x509.load_pem_x509_certificate(cert_path.read_bytes())
    leaf.verify_directly_issued_by(ca.cert)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["example.com", "www.example.com"]
    # usable by Python's ssl as a server chain
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)


def test_leaf_is_cached_and_reissued_for_a_new_ca(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    ca = ensure_ca(s)
    cert_path, _ = ca.leaf(["api.openai.com"])
    pem = cert_path.read_bytes()
    assert ca.leaf(["api.openai.com"])[0].read_bytes() == pem
    ca_cert_path(s).unlink()
    ca_key_path(s).unlink()
    new_ca = ensure_ca(s)
    assert new_ca.cert != ca.cert
    reissued = x509.load_pem_x509_certificate(new_ca.leaf(["api.openai.com"])[0].read_bytes())
    reissued.verify_directly_issued_by(new_ca.cert)


def test_self_signed_leaf_chains_to_no_ca_and_is_cached(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    ca = ensure_ca(s)
    cert_path, key_path = ca.self_signed(["untrusted.example.net"])
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    leaf = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert leaf.issuer == leaf.subject
    leaf.verify_directly_issued_by(leaf)
    with pytest.raises(ValueError):  # its issuer is not the lab CA
        leaf.verify_directly_issued_by(ca.cert)
    assert cert_path.read_bytes().count(b"BEGIN CERTIFICATE") == 1  # no lab CA in the chain
    again = ca.self_signed(["untrusted.example.net"])
    assert again == (cert_path, key_path)
    assert x509.load_pem_x509_certificate(again[0].read_bytes()) == leaf  # reused, not reissued
    assert ca.leaf(["untrusted.example.net"])[0] != cert_path  # the lab-CA leaf is another file
