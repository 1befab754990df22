"""The cluster CA: P-256 keys, CSRs and certificates for mutual TLS between processes.

The control plane holds the CA (`ca.crt`, `ca.key` in `DECLAWD_CLUSTER_CA_DIR`, made by
`declawd cluster init`) and signs: its own server certificate (the internal API), its own
client certificate (calls to nodes, CN `control-plane`), and each node's certificate from
the CSR the node sends when it joins or renews. A certificate's common name is the
identity the other side checks; a node's carries its node id, with its name and address as
subject alternative names. Everything here is pure apart from the file helpers at the end.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from declawd.errors import InvalidInput

CONTROL_PLANE = "control-plane"  # CN of the control plane's certificates
CA_NAME = "declawd cluster CA"
CA_DAYS = 3650


@dataclass(frozen=True)
class ClusterCA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def pin(self) -> str:
        """sha256 of the CA certificate (DER): what a join token carries, so a new node
        trusts the CA it is first shown only if it is this one."""
        return ca_pin(self.cert_pem)

    def sign(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        common_name: str,
        names: list[str],
        lifetime: datetime.timedelta,
        now: datetime.datetime | None = None,
    ) -> x509.Certificate:
        """A leaf certificate for `common_name` (client and server use) with the key of
        `csr`, whose signature must hold; `names` become DNS or IP SANs."""
        if not csr.is_signature_valid:
            raise InvalidInput("csr", "its signature does not verify")
        if not isinstance(csr.public_key(), ec.EllipticCurvePublicKey):
            raise InvalidInput("csr", "must be for an EC (P-256) key")
        now = now or datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = []
        for name in dict.fromkeys([common_name, *names]):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        return (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=False,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(self.key, hashes.SHA256())
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def new_ca(now: datetime.datetime | None = None) -> ClusterCA:
    now = now or datetime.datetime.now(datetime.UTC)
    key = new_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(CA_NAME))
        .issuer_name(_name(CA_NAME))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return ClusterCA(cert, key)


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str) -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(common_name))
        .sign(key, hashes.SHA256())
    )


def load_csr(pem: str) -> x509.CertificateSigningRequest:
    try:
        return x509.load_pem_x509_csr(pem.encode())
    except ValueError as exc:
        raise InvalidInput("csr", f"not a PEM certificate signing request: {exc}") from exc


def ca_pin(cert_pem: bytes) -> str:
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def renew_at(cert: x509.Certificate) -> datetime.datetime:
    """When a certificate should be renewed: once 2/3 of its lifetime has passed."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * 2 / 3


# Files -----------------------------------------------------------------------------------
def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` readable by its owner only (0600 from the first byte)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def init_ca(directory: Path) -> ClusterCA:
    """Make the cluster CA in `directory` (`ca.crt`, `ca.key`); refuses to overwrite one."""
    if (directory / "ca.key").exists():
        raise FileExistsError(f"{directory / 'ca.key'} exists: the cluster CA is already made")
    ca = new_ca()
    write_private(directory / "ca.key", key_pem(ca.key))
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    return ca


def load_ca(directory: Path) -> ClusterCA:
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"no cluster CA in {directory}: run `declawd cluster init` first"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{directory / 'ca.key'}: not an EC key")
    return ClusterCA(cert, key)


@dataclass(frozen=True)
class Identity:
    """A certificate and key on disk with the CA that signed it: one side of mTLS."""

    cert: Path
    key: Path
    ca: Path

    def server_context(self, *, require_client: bool = True) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        ctx.load_verify_locations(self.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_OPTIONAL
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


def issue_to_files(
    ca: ClusterCA,
    directory: Path,
    stem: str,
    common_name: str,
    names: list[str],
    lifetime: datetime.timedelta,
) -> Identity:
    """A new key and certificate signed by `ca`, written as `<stem>.key` / `<stem>.crt`
    beside a copy of `ca.crt` (the control plane's own identities)."""
    key = new_key()
    cert = ca.sign(
        make_csr(key, common_name), common_name=common_name, names=names, lifetime=lifetime
    )
    write_private(directory / f"{stem}.key", key_pem(key))
    (directory / f"{stem}.crt").write_bytes(pem(cert))
    return Identity(directory / f"{stem}.crt", directory / f"{stem}.key", directory / "ca.crt")
