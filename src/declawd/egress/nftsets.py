"""Admit resolved addresses into a sandbox's nft set `r4_<slot>` (table `inet declawd`).

The resolver calls this *before* it releases a DNS answer, so the client's very next connect()
already matches the set. Talks to libnftables.so.1 through ctypes (the Debian python3-nftables
binding targets the system python, not our venv) and falls back to the `nft` binary. Every
change is one nft batch, hence one atomic kernel transaction; a failure raises NftError so the
caller can fail closed (SERVFAIL) instead of releasing an address the datapath does not know.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import logging
import shutil
import subprocess
import threading
from collections.abc import Mapping

log = logging.getLogger(__name__)

TABLE = "inet declawd"


class NftError(RuntimeError):
    """An nft command failed; the message carries nft's error output."""


def resolved_set(slot: int) -> str:
    return f"r4_{int(slot)}"


class _LibNftables:
    """Minimal ctypes binding: one context, output/error buffered, used under a lock."""

    def __init__(self) -> None:
        path = ctypes.util.find_library("nftables") or "libnftables.so.1"
        lib = ctypes.CDLL(path)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        ctx = lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
        if not ctx:
            raise OSError("nft_ctx_new failed")
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        self._lib = lib
        self._ctx: int | None = ctx
        self._lock = threading.Lock()

    def run(self, cmd: str) -> str:
        with self._lock:
            if self._ctx is None:
                raise NftError("nft context closed")
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, cmd.encode())
            out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
            err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
        if rc != 0:
            raise NftError(err.strip() or f"nft failed with {rc}")
        return out

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None


class _NftBinary:
    def __init__(self) -> None:
        binary = shutil.which("nft") or "/usr/sbin/nft"
        self._argv = [binary, "-f", "-"]

    def run(self, cmd: str) -> str:
        proc = subprocess.run(self._argv, input=cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise NftError(proc.stderr.strip() or f"nft exited {proc.returncode}")
        return proc.stdout

    def close(self) -> None:
        pass


class NftSets:
    """Writes resolved-address elements. Blocking calls: run them off the event loop."""

    def __init__(self, table: str = TABLE, *, use_library: bool = True) -> None:
        self.table = table
        self._backend: _LibNftables | _NftBinary
        if use_library:
            try:
                self._backend = _LibNftables()
            except OSError as exc:
                log.warning("libnftables unavailable (%s); using the nft binary", exc)
                self._backend = _NftBinary()
        else:
            self._backend = _NftBinary()

    @property
    def backend(self) -> str:
        return "library" if isinstance(self._backend, _LibNftables) else "binary"

    def run(self, cmd: str) -> str:
        return self._backend.run(cmd)

    def admit(self, slot: int, timeouts: Mapping[str, float]) -> None:
        """Add (or refresh) elements `{addr timeout Ns}` in r4_<slot>, atomically."""
        if timeouts:
            self.run(admit_command(self.table, resolved_set(slot), timeouts))

    def replace(self, slot: int, timeouts: Mapping[str, float]) -> None:
        """Make r4_<slot> hold exactly `timeouts` (after a policy change), atomically."""
        name = resolved_set(slot)
        cmd = f"flush set {self.table} {name}\n"
        if timeouts:
            cmd += f"add element {self.table} {name} {{ {_elements(timeouts)} }}\n"
        self.run(cmd)

    def close(self) -> None:
        self._backend.close()


def _elements(timeouts: Mapping[str, float]) -> str:
    parts = []
    for address, seconds in sorted(timeouts.items()):
        # Only ever IPv4 literals reach nft: anything else would be an injection vector.
        ip = ipaddress.IPv4Address(address)
        parts.append(f"{ip} timeout {max(1, int(seconds + 0.999))}s")
    return ", ".join(parts)


def admit_command(table: str, set_name: str, timeouts: Mapping[str, float]) -> str:
    """One batch that adds each element and resets its timeout even if it already exists.

    `add` of an existing element keeps its old timeout on older kernels, so the batch adds
    (creating missing ones), deletes (all now exist), then adds with the new timeout; the
    transaction is atomic, so a packet never sees the element missing.
    """
    elems = _elements(timeouts)
    plain = ", ".join(str(ipaddress.IPv4Address(a)) for a in sorted(timeouts))
    return (
        f"add element {table} {set_name} {{ {elems} }}\n"
        f"delete element {table} {set_name} {{ {plain} }}\n"
        f"add element {table} {set_name} {{ {elems} }}\n"
    )
