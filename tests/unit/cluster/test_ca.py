"""The cluster CA: signing CSRs, SANs, lifetimes, renewal time, and refusing bad input."""

from __future__ import annotations

import datetime
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from declawd.cluster import ca as cca
from declawd.cluster.agent import JoinToken
from declawd.cluster.control import sign_node_csr
from declawd.errors import InvalidInput


def test_signs_a_node_csr_with_its_name_address_and_lifetime() -> None:
    ca = cca.new_ca()
    key = cca.new_key()
    csr = cca.make_csr(key, "node-a").public_bytes(cca.serialization.Encoding.PEM).decode()
    cert = x509.load_pem_x509_certificate(
        sign_node_csr(ca, csr, "node-a", ["host-a", "10.0.0.7"], 24).encode()
    )
    assert cca.common_name(cert) == "node-a"
    assert cert.issuer == ca.cert.subject
    ca_key = ca.cert.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey) and cert.signature_hash_algorithm
    ca_key.verify(
        cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
    )
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["node-a", "host-a"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(hours=24) < life <= datetime.timedelta(hours=24, minutes=6)
    leaf_key = cert.public_key()
    assert isinstance(leaf_key, ec.EllipticCurvePublicKey)
    assert leaf_key.public_numbers() == key.public_key().public_numbers()


def test_renewal_is_due_after_two_thirds_of_the_lifetime() -> None:
    ca = cca.new_ca()
    now = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    key = cca.new_key()
    cert = ca.sign(
        cca.make_csr(key, "n"),
        common_name="n",
        names=[],
        lifetime=datetime.timedelta(hours=3),
        now=now,
    )
    start = now - datetime.timedelta(minutes=5)
    assert cca.renew_at(cert) == start + (now + datetime.timedelta(hours=3) - start) * 2 / 3


def test_refuses_a_csr_whose_signature_does_not_hold() -> None:
    ca = cca.new_ca()
    good = cca.make_csr(cca.new_key(), "n").public_bytes(cca.serialization.Encoding.PEM)
    der = bytearray(cca.x509.load_pem_x509_csr(good).public_bytes(cca.serialization.Encoding.DER))
    der[-5] ^= 0x01  # a bit of the signature
    bad = x509.load_der_x509_csr(bytes(der)).public_bytes(cca.serialization.Encoding.PEM).decode()
    with pytest.raises(InvalidInput, match="signature"):
        sign_node_csr(ca, bad, "n", [], 1)
    with pytest.raises(InvalidInput, match="PEM"):
        sign_node_csr(ca, "not a csr", "n", [], 1)
    with pytest.raises(InvalidInput, match="node_id"):
        sign_node_csr(ca, good.decode(), "a/b", [], 1)


def test_init_writes_the_key_0600_and_refuses_to_overwrite(tmp_path: Path) -> None:
    made = cca.init_ca(tmp_path / "ca")
    assert stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode) == 0o600
    loaded = cca.load_ca(tmp_path / "ca")
    assert loaded.pin == made.pin == cca.ca_pin((tmp_path / "ca" / "ca.crt").read_bytes())
    with pytest.raises(FileExistsError):
        cca.init_ca(tmp_path / "ca")
    with pytest.raises(FileNotFoundError, match="cluster init"):
        cca.load_ca(tmp_path / "nothing")


def test_join_token_carries_the_ca_pin() -> None:
    pin = "ab" * 32
    assert JoinToken.parse(f"dcwj_x-y_z.{pin}\n") == JoinToken("dcwj_x-y_z", pin)
    for bad in ("", "dcwj_only", f".{pin}", "dcwj_x.short"):
        with pytest.raises(InvalidInput):
            JoinToken.parse(bad)
