"""Trust inside a sandbox: its own CA, and the one bundle every TLS client in it reads.

At create the node makes the sandbox's CA (inspect/ca.py) in `<sandbox dir>/ca` and writes
`<sandbox dir>/trust/ca-bundle.pem` = the upstream's CAs (system CAs, + the lab CA in lab
mode) + that CA. The bundle is bind-mounted read-only over the system bundle, over
/etc/declawd/ca-bundle.pem and over every certifi `cacert.pem` found in the rootfs, and the
usual variables point at it, so clients need no configuration. Invariant: the CA's key stays
in `ca/`, which no mount reaches; only certificates enter a sandbox.
"""

from __future__ import annotations

import contextlib
import shutil
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from declawd.config import Settings
from declawd.inspect.ca import CERT_FILE, CaRef, SandboxCA, fingerprint
from declawd.runtime import Mount

CA_DIR = "ca"
TRUST_DIR = "trust"
BUNDLE_FILE = "ca-bundle.pem"
CA_BUNDLE_IN_SANDBOX = "/etc/declawd/ca-bundle.pem"
SYSTEM_BUNDLE_IN_SANDBOX = "/etc/ssl/certs/ca-certificates.crt"
CA_BUNDLE_ENV = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")
# Where pip and Debian put certifi's own bundle (`requests` reads it, not the system's).
CERTIFI_GLOBS = (
    "usr/lib/python3*/dist-packages/certifi/cacert.pem",
    "usr/lib/python3*/site-packages/certifi/cacert.pem",
    "usr/local/lib/python3*/*-packages/certifi/cacert.pem",
    "opt/*/lib/python3*/site-packages/certifi/cacert.pem",
    "root/.local/lib/python3*/site-packages/certifi/cacert.pem",
    "home/*/.local/lib/python3*/site-packages/certifi/cacert.pem",
)
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
_RO = ["bind", "ro", "nosuid", "nodev", "noexec"]


def ca_dir(settings: Settings, sandbox_id: str) -> Path:
    return settings.sandbox_dir(sandbox_id) / CA_DIR


def bundle_path(settings: Settings, sandbox_id: str) -> Path:
    return settings.sandbox_dir(sandbox_id) / TRUST_DIR / BUNDLE_FILE


def create_ca(settings: Settings, sandbox_id: str) -> CaRef:
    """A fresh CA for the sandbox (a restore gets a new one too); blocking."""
    return SandboxCA.create(ca_dir(settings, sandbox_id), sandbox_id).ref


def current_ca(settings: Settings, sandbox_id: str) -> CaRef | None:
    """The sandbox's CA as it is on disk (None: it has none, e.g. created before CAs)."""
    directory = ca_dir(settings, sandbox_id)
    try:
        cert = x509.load_pem_x509_certificate((directory / CERT_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    return CaRef(directory, fingerprint(cert))


# The upstream bundle as last read, by path, with the (inode, size, mtime) it was read at:
# every create writes it into a bundle of its own, and reading the ~200 KB each time showed
# up in a create's path. A bundle replaced (renamed over) or rewritten is read again.
_UPSTREAM_READ: dict[Path, tuple[tuple[int, int, int], bytes]] = {}
# Certifi bundles found in a template's rootfs, by its layers (which are content-addressed
# and never written to: the same layers with an empty upper layer give the same view).
_CERTIFI_BY_LAYERS: dict[tuple[str, ...], list[str]] = {}
_CERTIFI_CACHE_MAX = 256


def upstream_cas(bundle: Path | None) -> bytes:
    """The upstream's CAs as PEM: its bundle, or the host's own store for None."""
    if bundle is None:
        bundle = Path(ssl.get_default_verify_paths().cafile or SYSTEM_BUNDLE)
    try:
        st = bundle.stat()
    except FileNotFoundError:
        return b""
    key = (st.st_ino, st.st_size, st.st_mtime_ns)
    hit = _UPSTREAM_READ.get(bundle)
    if hit is not None and hit[0] == key:
        return hit[1]
    try:
        data = bundle.read_bytes()
    except FileNotFoundError:
        return b""
    data = data if not data or data.endswith(b"\n") else data + b"\n"
    _UPSTREAM_READ[bundle] = (key, data)
    return data


def write_bundle(settings: Settings, sandbox_id: str, upstream_bundle: Path | None) -> Path:
    """`trust/ca-bundle.pem` = upstream CAs + the sandbox's CA certificate; blocking."""
    cert = (ca_dir(settings, sandbox_id) / CERT_FILE).read_bytes()
    path = bundle_path(settings, sandbox_id)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(
        upstream_cas(upstream_bundle) + f"# declawd sandbox CA {sandbox_id}\n".encode() + cert
    )
    tmp.chmod(0o644)
    tmp.replace(path)
    return path


def find_certifi(rootfs: Path) -> list[str]:
    """Paths (inside the sandbox) of the certifi bundles the rootfs ships as regular files.

    Only paths with no symlink on the way are taken: a link in the template resolves to a
    host path when followed from here, and a linked `cacert.pem` (Debian's points at the
    system bundle) is covered by the system bundle's mount already.
    """
    found: set[str] = set()
    for pattern in CERTIFI_GLOBS:
        for path in rootfs.glob(pattern):
            rel = path.relative_to(rootfs)
            steps = [rootfs.joinpath(*rel.parts[: i + 1]) for i in range(len(rel.parts))]
            if any(p.is_symlink() for p in steps) or not path.is_file():
                continue
            found.add("/" + rel.as_posix())
    return sorted(found)


@dataclass(frozen=True)
class SandboxTrust:
    """What a sandbox's spec and environment need to trust its CA."""

    bundle: Path
    certifi: Sequence[str] = ()

    def mounts(self) -> list[Mount]:
        targets = [CA_BUNDLE_IN_SANDBOX, SYSTEM_BUNDLE_IN_SANDBOX, *self.certifi]
        return [Mount(t, str(self.bundle), "bind", list(_RO)) for t in targets]


def trust_env() -> dict[str, str]:
    """Variables TLS clients read for their CA bundle (Node adds NODE_EXTRA_CA_CERTS to its
    own store; the bundle holds our CA, so that is enough)."""
    return dict.fromkeys(CA_BUNDLE_ENV, CA_BUNDLE_IN_SANDBOX)


def certifi_of(rootfs: Path, layers: Sequence[Path] | None) -> list[str]:
    """`find_certifi(rootfs)`, looked up once per set of layers when the rootfs is those
    layers under a fresh upper layer (`layers`); None for a rootfs with a filled upper
    layer of its own (a restore), which is searched every time."""
    if layers is None:
        return find_certifi(rootfs)
    key = tuple(str(p) for p in layers)
    found = _CERTIFI_BY_LAYERS.get(key)
    if found is None:
        found = find_certifi(rootfs)
        if len(_CERTIFI_BY_LAYERS) >= _CERTIFI_CACHE_MAX:
            _CERTIFI_BY_LAYERS.clear()
        _CERTIFI_BY_LAYERS[key] = found
    return list(found)


def prepare_trust(
    settings: Settings,
    sandbox_id: str,
    upstream_bundle: Path | None,
    rootfs: Path,
    layers: Sequence[Path] | None = None,
) -> SandboxTrust:
    """Write the bundle and find the certifi bundles to cover (after the rootfs is
    mounted, so a restored sandbox's own pip installs are covered too: pass `layers` only
    for a rootfs whose upper layer is fresh); blocking."""
    return SandboxTrust(
        write_bundle(settings, sandbox_id, upstream_bundle), certifi_of(rootfs, layers)
    )


def remove_trust(settings: Settings, sandbox_id: str) -> None:
    """Remove the CA (its key first of all) and the bundle; idempotent, blocking."""
    for directory in (ca_dir(settings, sandbox_id), bundle_path(settings, sandbox_id).parent):
        with contextlib.suppress(FileNotFoundError):  # already gone: nothing to report
            shutil.rmtree(directory)
