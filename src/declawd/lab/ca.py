"""The lab CA: one persistent certificate authority per state directory, and its leaves.

`ensure_ca` creates `lab/ca.pem` + `lab/ca.key` (0600) once, under a file lock so the node
and `declawd lab serve` never race into two different CAs, and (re)writes
`lab/ca-bundle.pem` = system CAs + lab CA, which lab-mode sandboxes trust. Leaf certificates
are cached in `lab/certs/` and reissued when they no longer chain to the current CA, no
longer cover the wanted names, or are near expiry; self-signed leaves (bad-certificate hosts)
are cached beside them and never chain to the lab CA.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from declawd.config import Settings

SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
_CA_DAYS = 3650
_LEAF_DAYS = 365
_RENEW_BEFORE = dt.timedelta(days=7)


def ca_cert_path(settings: Settings) -> Path:
    return settings.lab_dir / "ca.pem"


def ca_key_path(settings: Settings) -> Path:
    return settings.lab_dir / "ca.key"


def ca_bundle_path(settings: Settings) -> Path:
    """System CAs + lab CA; bind-mounted into lab-mode sandboxes (SSL_CERT_FILE etc.)."""
    return settings.lab_dir / "ca-bundle.pem"


@dataclass
class LabCA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    certs_dir: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def leaf(self, names: Sequence[str]) -> tuple[Path, Path]:
        """(cert chain path, key path) for a leaf covering `names` (first is the CN)."""
        return self._cached(names, prefix="", self_signed=False)

    def self_signed(self, names: Sequence[str]) -> tuple[Path, Path]:
        """(cert path, key path) for a self-signed leaf covering `names`: it chains to no CA,
        so a client trusting the lab CA still fails verification (bad-certificate hosts)."""
        return self._cached(names, prefix="self-signed-", self_signed=True)

    def _cached(self, names: Sequence[str], *, prefix: str, self_signed: bool) -> tuple[Path, Path]:
        tag = hashlib.sha256(",".join(names).encode()).hexdigest()[:12]
        cert_path = self.certs_dir / f"{prefix}{names[0]}-{tag}.pem"
        key_path = self.certs_dir / f"{prefix}{names[0]}-{tag}.key"
        if not self._leaf_current(cert_path, key_path, names, self_signed):
            key = ec.generate_private_key(ec.SECP256R1())
            if self_signed:
                cert = _leaf(names, key, issuer=_cn(names[0]), signer=key)
                chain = cert.public_bytes(serialization.Encoding.PEM)
            else:
                cert = _leaf(names, key, issuer=self.cert.subject, signer=self.key)
                chain = cert.public_bytes(serialization.Encoding.PEM) + self.cert_pem
            _write_private(key_path, _key_pem(key))
            _write_atomic(cert_path, chain, 0o644)
        return cert_path, key_path

    def _leaf_current(
        self, cert_path: Path, key_path: Path, names: Sequence[str], self_signed: bool
    ) -> bool:
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key_path.stat()
        except (OSError, ValueError):
            return False
        try:
            cert.verify_directly_issued_by(cert if self_signed else self.cert)
        except Exception:  # any verification failure means "reissue"
            return False
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if sorted(san.get_values_for_type(x509.DNSName)) != sorted(names):
            return False
        return cert.not_valid_after_utc - _now() > _RENEW_BEFORE


def _cn(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def _leaf(
    names: Sequence[str],
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(_cn(names[0]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=_LEAF_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), False
        )
        .sign(signer, hashes.SHA256())
    )


def ensure_ca(settings: Settings) -> LabCA:
    """Load or create the lab CA and refresh `ca-bundle.pem`; safe across processes."""
    lab_dir = settings.lab_dir
    lab_dir.mkdir(parents=True, exist_ok=True)
    with _locked(lab_dir / ".ca.lock"):
        cert_path, key_path = ca_cert_path(settings), ca_key_path(settings)
        if cert_path.exists() and key_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_path}: not an EC private key")
        else:
            cert, key = _create_ca(settings.instance)
            _write_private(key_path, _key_pem(key))
            _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        ca = LabCA(cert=cert, key=key, certs_dir=lab_dir / "certs")
        ca.certs_dir.mkdir(mode=0o700, exist_ok=True)
        system = SYSTEM_BUNDLE.read_bytes() if SYSTEM_BUNDLE.exists() else b""
        if system and not system.endswith(b"\n"):
            system += b"\n"
        bundle = system + b"# declawd lab CA\n" + ca.cert_pem
        bundle_path = ca_bundle_path(settings)
        if not bundle_path.exists() or bundle_path.read_bytes() != bundle:
            _write_atomic(bundle_path, bundle, 0o644)
        return ca


def _create_ca(instance: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "declawd lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"declawd lab CA ({instance})"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    _write_atomic(path, data, 0o600)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    # Created with its final mode so a private key is never briefly world-readable.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
