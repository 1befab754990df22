"""Per-sandbox certificate authorities, and the leaf certificates the proxy shows a sandbox.

The node makes one ECDSA P-256 CA per sandbox at create (`SandboxCA.create`), in the
sandbox's host directory, which nothing mounts into a container; only the certificate is
copied into the sandbox's trust bundle. The gateway (`LeafContexts`) mints, per (sandbox,
host), a short-lived leaf signed by THAT sandbox's CA, so a certificate minted for one
sandbox never verifies in another. Invariant: a private key is only ever on disk 0600 in a
0700 directory, and leaf keys only for the instant `ssl` needs a file to load them from.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import secrets
import ssl
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

CERT_FILE = "ca.pem"
KEY_FILE = "ca.key"
CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=7)
# Clocks inside a sandbox may lag the host's a little; a leaf is valid from an hour ago.
BACKDATE = dt.timedelta(hours=1)
# A cached leaf is minted again once less than this is left of it.
LEAF_RENEW_BEFORE = dt.timedelta(days=1)
LEAF_CACHE_SIZE = 4096
ALPN = ("h2", "http/1.1")
_CN_MAX = 64  # X.520 upper bound of a common name; longer hosts go in the SAN only


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_new(path: Path, data: bytes, mode: int, *, durable: bool = True) -> None:
    """Write `path` created with its final mode (a key is never briefly readable), then
    rename it into place. `durable=False` for files that live an instant (no fsync)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)  # whatever the umask took away
    os.replace(tmp, path)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, hex: how the gateway tells one CA of an id from
    the next (a restore makes a new CA in the same directory)."""
    return cert.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True)
class CaRef:
    """Where the gateway finds a sandbox's CA, and which one it must be."""

    dir: Path
    fingerprint: str


@dataclass(frozen=True)
class SandboxCA:
    """One sandbox's CA: `cert_pem` is what the sandbox trusts; `key` never leaves the host
    directory it was created in."""

    dir: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def __repr__(self) -> str:  # the key has no business in a log line
        return f"SandboxCA(dir={str(self.dir)!r}, fingerprint={self.fingerprint[:16]}...)"

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)

    @property
    def ref(self) -> CaRef:
        return CaRef(self.dir, self.fingerprint)

    @classmethod
    def create(
        cls, directory: Path, sandbox_id: str, *, now: dt.datetime | None = None
    ) -> SandboxCA:
        """A new CA in `directory` (made 0700), replacing any CA already there."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "declawd sandbox"),
                x509.NameAttribute(
                    NameOID.COMMON_NAME, f"declawd sandbox CA {sandbox_id}"[:_CN_MAX]
                ),
            ]
        )
        start = (now or _now()) - BACKDATE
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        # Key first: a cert.pem on disk always has its key next to it. Not fsynced: the CA
        # lives as long as its sandbox, whose processes a machine crash ends too (a restore
        # makes a new CA), and with hundreds of sandboxes on a node each fsync waited for
        # the filesystem's journal: 56 ms of a create's 650 with 500 sandboxes alive.
        pem = cert.public_bytes(serialization.Encoding.PEM)
        _write_new(directory / KEY_FILE, _key_pem(key), 0o600, durable=False)
        _write_new(directory / CERT_FILE, pem, 0o644, durable=False)
        return cls(directory, cert, key)

    @classmethod
    def load(cls, directory: Path) -> SandboxCA:
        cert = x509.load_pem_x509_certificate((directory / CERT_FILE).read_bytes())
        key = serialization.load_pem_private_key((directory / KEY_FILE).read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{directory / KEY_FILE}: not an EC private key")
        return cls(directory, cert, key)

    def issue(
        self, host: str, leaf_key: ec.EllipticCurvePrivateKey, *, now: dt.datetime | None = None
    ) -> x509.Certificate:
        """A server certificate for `host` (a DNS name, or an IP literal as an IP SAN)."""
        start = (now or _now()) - BACKDATE
        san: x509.GeneralName
        try:
            san = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        subject = (
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
            if len(host) <= _CN_MAX
            else x509.Name([])
        )
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + LEAF_VALIDITY)
            # An empty subject makes the SAN the only identity: then it must be critical.
            .add_extension(x509.SubjectAlternativeName([san]), critical=not subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), False)
            .sign(self.key, hashes.SHA256())
        )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def normalize_host(host: str) -> str:
    """The name a leaf is minted (and cached) for: lower case, no trailing dot; refuses
    what cannot be a TLS server name."""
    name = host.strip().rstrip(".").lower()
    if not name or len(name) > 253 or not name.isascii() or any(c in name for c in "/\\ \0*"):
        raise ValueError(f"host: {host[:80]!r} is not a server name a leaf can be minted for")
    return name


@dataclass
class _Issuer:
    ca: SandboxCA
    leaf_key: ec.EllipticCurvePrivateKey
    key_pem: bytes


@dataclass
class _Leaf:
    context: ssl.SSLContext
    renew_at: dt.datetime


class LeafContexts:
    """Server-side TLS contexts for intercepted connections, one per (sandbox, host), LRU.

    `locate(sandbox_id)` says where that sandbox's CA is (None: no CA, nothing minted).
    One leaf key per sandbox serves all its leaves. Thread-safe; `server_context` does
    file I/O in `tmp_dir` (root-only) only on a cache miss.
    """

    def __init__(
        self,
        locate: Callable[[str], CaRef | None],
        tmp_dir: Path,
        *,
        max_size: int = LEAF_CACHE_SIZE,
        clock: Callable[[], dt.datetime] = _now,
    ) -> None:
        self._locate = locate
        self.tmp_dir = tmp_dir
        self.max_size = max_size
        self._clock = clock
        self._issuers: dict[str, _Issuer] = {}
        self._leaves: OrderedDict[tuple[str, str], _Leaf] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = {"hits": 0, "mints": 0}

    def server_context(self, sandbox_id: str, host: str) -> ssl.SSLContext:
        """The context to finish the sandbox's handshake with: a leaf for `host` signed by
        the sandbox's CA, ALPN h2 and http/1.1, TLS 1.2 at least. Raises LookupError when
        the sandbox has no CA, ValueError for a host no certificate can name."""
        name = normalize_host(host)
        key = (sandbox_id, name)
        with self._lock:
            now = self._clock()
            leaf = self._leaves.get(key)
            if leaf is not None and now < leaf.renew_at:
                self._leaves.move_to_end(key)
                self.stats["hits"] += 1
                return leaf.context
            issuer = self._issuer(sandbox_id)
            cert = issuer.ca.issue(name, issuer.leaf_key, now=now)
            context = self._context(cert, issuer)
            self._leaves[key] = _Leaf(context, cert.not_valid_after_utc - LEAF_RENEW_BEFORE)
            self._leaves.move_to_end(key)
            while len(self._leaves) > self.max_size:
                self._leaves.popitem(last=False)
            self.stats["mints"] += 1
            return context

    def forget(self, sandbox_id: str) -> None:
        """Drop the sandbox's CA, leaf key and contexts (it is gone, or has a new CA)."""
        with self._lock:
            self._issuers.pop(sandbox_id, None)
            for key in [k for k in self._leaves if k[0] == sandbox_id]:
                del self._leaves[key]

    def __len__(self) -> int:
        return len(self._leaves)

    def _issuer(self, sandbox_id: str) -> _Issuer:
        issuer = self._issuers.get(sandbox_id)
        if issuer is not None:
            return issuer
        ref = self._locate(sandbox_id)
        if ref is None:
            raise LookupError(f"sandbox {sandbox_id} has no CA")
        ca = SandboxCA.load(ref.dir)
        if ref.fingerprint and ca.fingerprint != ref.fingerprint:
            # The node is replacing this sandbox's CA (a restore): mint nothing until the
            # gateway has been told which one is current.
            raise LookupError(f"sandbox {sandbox_id}: the CA in {ref.dir} is not the expected one")
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        issuer = self._issuers[sandbox_id] = _Issuer(ca, leaf_key, _key_pem(leaf_key))
        return issuer

    def _context(self, cert: x509.Certificate, issuer: _Issuer) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(list(ALPN))
        # The leaf alone: the sandbox trusts the CA itself, so sending it adds only bytes.
        chain = cert.public_bytes(serialization.Encoding.PEM)
        # `ssl` loads a certificate chain only from files: write both to a root-only
        # directory, load, and unlink at once.
        self.tmp_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.tmp_dir.chmod(0o700)
        tag = secrets.token_hex(8)
        cert_path, key_path = self.tmp_dir / f"{tag}.pem", self.tmp_dir / f"{tag}.key"
        try:
            _write_new(key_path, issuer.key_pem, 0o600, durable=False)
            _write_new(cert_path, chain, 0o600, durable=False)
            context.load_cert_chain(cert_path, key_path)
        finally:
            for path in (cert_path, key_path):
                path.unlink(missing_ok=True)
        return context
