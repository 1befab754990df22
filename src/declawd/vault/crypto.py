"""Encryption of vault secret values at rest: AES-256-GCM under the node master key.

The master key is 32 random bytes in `<keys_dir>/vault.key`, created 0600 on first use and
never rewritten. Each encryption takes a fresh 96-bit nonce and binds the secret's id as
associated data, so a ciphertext copied onto another row does not decrypt. Invariant: a value
is never in a repr, a log line or an exception message; errors name the secret id only.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from declawd.errors import Internal

KEY_BYTES = 32
NONCE_BYTES = 12
# First byte of every stored blob: lets a later format (another cipher, a key id) coexist.
FORMAT_V1 = b"\x01"
KEY_FILE = "vault.key"


class SecretValue:
    """A secret's plaintext in transit through the server: its repr and str hide it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return "SecretValue(***)"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[Any, ...]:
        # Pickles end up in caches, queues and crash dumps: a value must not.
        raise TypeError("a SecretValue is not picklable")


def master_key_path(keys_dir: Path) -> Path:
    return keys_dir / KEY_FILE


class MasterKey:
    """The node's vault key. `load_or_create` is safe against a concurrent first use by
    another process: the file appears whole (hard link of a finished temp file) or not at
    all, and whoever links second reads the winner's key."""

    __slots__ = ("_aead", "path")

    def __init__(self, raw: bytes, path: Path) -> None:
        if len(raw) != KEY_BYTES:
            raise Internal(f"vault master key {path}: expected {KEY_BYTES} bytes, found {len(raw)}")
        self._aead = AESGCM(raw)
        self.path = path

    def __repr__(self) -> str:
        return f"MasterKey({self.path})"

    @classmethod
    def load(cls, path: Path) -> MasterKey:
        """The existing key; Internal if it is missing, the wrong size or not private."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError as exc:
            raise Internal(f"vault master key {path}: missing") from exc
        except OSError as exc:
            raise Internal(f"vault master key {path}: cannot open ({exc.strerror})") from exc
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                # Someone widened it: refuse rather than keep using a key others may read.
                raise Internal(
                    f"vault master key {path}: mode {stat.S_IMODE(mode):04o} lets others read"
                    " it; it must be 0600"
                )
            raw = f.read(KEY_BYTES + 1)
        return cls(raw, path)

    @classmethod
    def load_or_create(cls, path: Path) -> MasterKey:
        if not path.exists():
            _create_key_file(path)
        return cls.load(path)

    # Values -----------------------------------------------------------------------------
    def encrypt(self, value: SecretValue, secret_id: str) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, value.reveal().encode(), secret_id.encode())
        return FORMAT_V1 + nonce + sealed

    def decrypt(self, blob: bytes, secret_id: str) -> SecretValue:
        """Internal (naming only the secret id) when the blob was not sealed by this key for
        this id: a wrong master key, a corrupt row or a row copied from another secret."""
        head = len(FORMAT_V1) + NONCE_BYTES
        if len(blob) < head + 16 or blob[:1] != FORMAT_V1:
            raise Internal(f"vault secret {secret_id}: stored value is corrupt")
        nonce, sealed = blob[1:head], blob[head:]
        try:
            plain = self._aead.decrypt(nonce, sealed, secret_id.encode())
        except InvalidTag:
            raise Internal(
                f"vault secret {secret_id}: cannot decrypt (wrong master key or corrupt row)"
            ) from None
        try:
            return SecretValue(plain.decode())
        except UnicodeDecodeError:
            raise Internal(f"vault secret {secret_id}: stored value is corrupt") from None


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the link's directory entry survives a crash
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
