"""Admit resolved addresses into a sandbox's nft set `r4_<slot>` (table `inet declawd`).

The resolver calls this *before* it releases a DNS answer, so the client's very next connect()
already matches the set. Default backend: nf_tables netlink messages for that one set
(`nfnetlink`), whose cost does not grow with the number of sandboxes on the node; the
libnftables (ctypes) and `nft` binary backends remain, selected by DECLAWD_NFTSETS_BACKEND
(netlink|library|binary). Every change is one batch, hence one atomic kernel transaction; a
failure raises NftError so the caller can fail closed (SERVFAIL).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence

from declawd.egress import nfnetlink
from declawd.egress.nfnetlink import NFT_MSG_DELSETELEM, NFT_MSG_NEWSETELEM, Element

log = logging.getLogger(__name__)

TABLE = "inet declawd"


NftError = nfnetlink.NftError  # one error type whatever the backend
BACKENDS = ("netlink", "library", "binary")
BACKEND_ENV = "DECLAWD_NFTSETS_BACKEND"


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


class _Netlink:
    """Element changes as nf_tables netlink batches: O(1) in the number of sandboxes."""

    def __init__(self, table: str, netns_path: str | None) -> None:
        nfnetlink.split_table(table)  # fail at construction on a bad spec
        self.table = table
        self._sock = nfnetlink.NfTablesSocket(netns_path)

    def admit(self, set_name: str, timeouts: Mapping[str, float]) -> None:
        self._sock.setelems(self.table, set_name, admit_ops(timeouts))

    def replace(self, set_name: str, timeouts: Mapping[str, float]) -> None:
        self._sock.setelems(self.table, set_name, replace_ops(timeouts))

    def close(self) -> None:
        self._sock.close()


class NftSets:
    """Writes resolved-address elements. Blocking calls: run them off the event loop.

    `backend`: "netlink" (default), "library" or "binary"; None reads DECLAWD_NFTSETS_BACKEND.
    `netns_path` (netlink only): open the socket in that netns instead of the caller's.
    """

    def __init__(
        self,
        table: str = TABLE,
        *,
        use_library: bool = True,
        backend: str | None = None,
        netns_path: str | None = None,
    ) -> None:
        self.table = table
        chosen = backend or os.environ.get(BACKEND_ENV) or "netlink"
        if not use_library and backend is None:
            chosen = "binary"
        if chosen not in BACKENDS:
            raise ValueError(f"unknown nftsets backend {chosen!r} (one of {BACKENDS})")
        self._netlink: _Netlink | None = None
        self._text: _LibNftables | _NftBinary | None = None
        if chosen == "netlink":
            try:
                self._netlink = _Netlink(table, netns_path)
            except OSError as exc:
                log.warning("nf_tables netlink socket unavailable (%s); using libnftables", exc)
                chosen = "library"
        if chosen == "library":
            try:
                self._text = _LibNftables()
            except OSError as exc:
                log.warning("libnftables unavailable (%s); using the nft binary", exc)
                self._text = _NftBinary()
        elif chosen == "binary":
            self._text = _NftBinary()

    @property
    def backend(self) -> str:
        if self._netlink is not None:
            return "netlink"
        return "library" if isinstance(self._text, _LibNftables) else "binary"

    def run(self, cmd: str) -> str:
        """Run an nft script (text backends; the netlink backend opens the binary lazily)."""
        if self._text is None:
            self._text = _NftBinary()
        return self._text.run(cmd)

    def admit(self, slot: int, timeouts: Mapping[str, float]) -> None:
        """Add (or refresh) elements `{addr timeout Ns}` in r4_<slot>, atomically."""
        if not timeouts:
            return
        if self._netlink is not None:
            self._netlink.admit(resolved_set(slot), timeouts)
        else:
            self.run(admit_command(self.table, resolved_set(slot), timeouts))

    def replace(self, slot: int, timeouts: Mapping[str, float]) -> None:
        """Make r4_<slot> hold exactly `timeouts` (after a policy change), atomically."""
        name = resolved_set(slot)
        if self._netlink is not None:
            self._netlink.replace(name, timeouts)
            return
        cmd = f"flush set {self.table} {name}\n"
        if timeouts:
            cmd += f"add element {self.table} {name} {{ {_elements(timeouts)} }}\n"
        self.run(cmd)

    def close(self) -> None:
        """Idempotent."""
        if self._netlink is not None:
            self._netlink.close()
        if self._text is not None:
            self._text.close()


SetOps = list[tuple[int, Sequence[Element] | None]]


def admit_ops(timeouts: Mapping[str, float]) -> SetOps:
    """The netlink twin of `admit_command`: add, delete, add again with the fresh timeout."""
    timed = [nfnetlink.ipv4_element(a, t) for a, t in sorted(timeouts.items())]
    keys = [Element(e.key) for e in timed]
    return [(NFT_MSG_NEWSETELEM, timed), (NFT_MSG_DELSETELEM, keys), (NFT_MSG_NEWSETELEM, timed)]


def replace_ops(timeouts: Mapping[str, float]) -> SetOps:
    """Flush (DELSETELEM without elements), then add: the set holds exactly `timeouts`."""
    ops: SetOps = [(NFT_MSG_DELSETELEM, None)]
    if timeouts:
        ops.append(
            (
                NFT_MSG_NEWSETELEM,
                [nfnetlink.ipv4_element(a, t) for a, t in sorted(timeouts.items())],
            )
        )
    return ops


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
