"""Apply nft scripts (libnftables through ctypes, or the `nft` binary) and one sandbox's
rules (nf_tables netlink batches from `nftrules`, or those scripts), in any netns.

A libnftables context talks netlink through a socket that belongs to the netns of the thread
that opened it, so a context for another namespace lives on a `NetnsThread` there: no fork
per transaction. The `nft` binary (`DECLAWD_NFT_BACKEND=nsenter`, or when the library is
missing) runs under nsenter. `sandbox_add/update/remove` send netlink batches whose cost does
not grow with the node (`DECLAWD_NFT_CONTROL_BACKEND=text` runs the scripts instead); both
first read what the slot holds (`read_record`, exact-key netlink reads) to delete exactly it.
Invariant: every change is applied as one transaction, and a refusal raises NftError carrying
nft's (or the kernel's) message.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import os
import shutil
import threading
from typing import TYPE_CHECKING, Any

from declawd.egress import nft as nftc
from declawd.egress.policy import EgressPolicy
from declawd.errors import Internal
from declawd.host import CommandFailed, NetnsThread, netns_path, run_sync

if TYPE_CHECKING:
    from declawd.egress.nfnetlink import NfTablesSocket
    from declawd.egress.nftrules import Batch


_OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON
# "lib" (default) or "nsenter" (fork `nft -f -` per transaction); see bench_datapath.
BACKEND = os.environ.get("DECLAWD_NFT_BACKEND", "lib")
# One sandbox's rules: "netlink" (default; nftrules batches) or "text" (nft.py's scripts
# through BACKEND above), read at each call so tests and benches can switch.
CONTROL_BACKENDS = ("netlink", "text")
CONTROL_BACKEND_ENV = "DECLAWD_NFT_CONTROL_BACKEND"
DEFAULT_CONTROL_BACKEND = "netlink"


class NftError(Internal):
    """nftables refused a transaction (or could not be reached); nft's message says why."""


@functools.cache
def _library() -> Any:
    """libnftables with its prototypes declared; loaded once per process (OSError if absent)."""
    lib = ctypes.CDLL(ctypes.util.find_library("nftables") or "libnftables.so.1")
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    return lib


class Libnftables:
    """One libnftables context, in the caller's netns or (given `netns`) in that one.

    Thread-safe: calls are serialised by a lock, and a context for another netns runs every
    call on its own thread inside that netns. `inode` tells which namespace it was made for.
    """

    def __init__(self, netns: str | None = None) -> None:
        self._lib = _library()
        self._lock = threading.Lock()
        self._thread = NetnsThread(netns) if netns is not None else None
        self.inode = self._thread.inode if self._thread is not None else None
        try:
            ctx = self._call(self._new)
        except BaseException:
            if self._thread is not None:
                self._thread.close()
            raise
        self._ctx: int | None = ctx

    def _call(self, fn: Any, *args: Any) -> Any:
        with self._lock:
            return fn(*args) if self._thread is None else self._thread.call(fn, *args)

    def _new(self) -> int:
        ctx = self._lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
        if not ctx:
            raise OSError("nft_ctx_new failed")
        self._lib.nft_ctx_buffer_output(ctx)
        self._lib.nft_ctx_buffer_error(ctx)
        return int(ctx)

    def _run(self, script: str, json_out: bool) -> str:
        lib, ctx = self._lib, self._ctx
        if ctx is None:
            raise NftError("nft context closed")
        lib.nft_ctx_output_set_flags(ctx, _OUTPUT_JSON if json_out else 0)
        rc = lib.nft_run_cmd_from_buffer(ctx, script.encode())
        out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
        err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        if rc != 0:
            raise NftError(err.strip() or f"nft failed (rc={rc})")
        return out

    def run(self, script: str, json_out: bool = False) -> str:
        """Apply `script` as one transaction; its (JSON) output."""
        return str(self._call(self._run, script, json_out))

    def close(self) -> None:
        """Idempotent."""
        ctx, self._ctx = self._ctx, None
        try:
            if ctx is not None:
                self._call(self._lib.nft_ctx_free, ctx)
        finally:
            if self._thread is not None:
                self._thread.close()


def nft_binary(script: str, *, netns: str | None = None, json_out: bool = False) -> str:
    """`nft -f -` (one transaction), in `netns` when given; a fork per call."""
    argv = [shutil.which("nft") or "/usr/sbin/nft", *(["-j"] if json_out else []), "-f", "-"]
    try:
        return run_sync(*argv, netns=netns, stdin=script).stdout
    except CommandFailed as exc:
        raise NftError(exc.stderr.strip() or str(exc)) from exc


_contexts: dict[str, Libnftables] = {}
_contexts_lock = threading.Lock()


def _context(netns: str) -> Libnftables:
    with _contexts_lock:
        ctx = _contexts.get(netns)
        if ctx is not None and ctx.inode != os.stat(netns_path(netns)).st_ino:
            ctx.close()  # the namespace was deleted and made again under the same name
            ctx = None
        if ctx is None:
            ctx = _contexts[netns] = Libnftables(netns)
        return ctx


def forget_netns(netns: str) -> None:
    """Drop the cached nft context and netlink socket of a namespace being deleted."""
    with _contexts_lock:
        ctx = _contexts.pop(netns, None)
        held = _sockets.pop(netns, None)
    if ctx is not None:
        ctx.close()
    if held is not None:
        held[1].close()


def nft_sync(netns: str, script: str, *, json_out: bool = False, backend: str = "") -> str:
    """Apply `script` as one transaction inside `netns` (blocking)."""
    if (backend or BACKEND) == "nsenter":
        return nft_binary(script, netns=netns, json_out=json_out)
    return _context(netns).run(script, json_out)


async def nft(netns: str, script: str, *, json_out: bool = False) -> str:
    return await asyncio.to_thread(nft_sync, netns, script, json_out=json_out)


# One sandbox's rules --------------------------------------------------------------------
_sockets: dict[str, tuple[int, NfTablesSocket]] = {}


def control_backend(backend: str | None = None) -> str:
    """`backend`, else $DECLAWD_NFT_CONTROL_BACKEND, else the default; validated."""
    chosen = backend or os.environ.get(CONTROL_BACKEND_ENV) or DEFAULT_CONTROL_BACKEND
    if chosen not in CONTROL_BACKENDS:
        raise ValueError(f"unknown nft control backend {chosen!r} (one of {CONTROL_BACKENDS})")
    return chosen


def _socket(netns: str) -> NfTablesSocket:
    from declawd.egress.nfnetlink import NfTablesSocket

    with _contexts_lock:
        inode = os.stat(netns_path(netns)).st_ino
        held = _sockets.get(netns)
        if held is not None and held[0] != inode:
            held[1].close()  # the namespace was deleted and made again under the same name
            held = None
        if held is None:
            held = _sockets[netns] = (inode, NfTablesSocket(netns_path(netns)))
        return held[1]


def apply_batch(netns: str, batch: Batch, what: str) -> None:
    """Send one `nftrules` batch (one transaction) into `netns`; NftError if refused."""
    try:
        sock = _socket(netns)
    except OSError as exc:
        raise NftError(f"{nftc.TABLE} {what}: nf_tables netlink in {netns}: {exc}") from exc
    sock.transact(batch.messages, labels=batch.labels, context=f"{nftc.TABLE} {what}")


RECORD_KEYS_PER_REQUEST = 1024  # a nested attribute holds at most 64 KiB


def read_record(netns: str, slot: int) -> nftc.Elements:
    """What the slot holds in the shared sets, from its `nrec` / `rec` entries (two exact-key
    reads, whatever the node's size); NOTHING when it holds nothing (or there is no table).

    Callers serialise changes to one slot (the server's per-sandbox operations), so the
    record cannot change between this read and the transaction built from it.
    """
    from declawd.egress import nftrules

    try:
        sock = _socket(netns)
    except OSError as exc:
        raise NftError(f"{nftc.TABLE} slot {slot}: nf_tables netlink in {netns}: {exc}") from exc
    count = sock.get_elements(nftc.TABLE, nftc.NREC, [nftrules.count_key(slot)])
    if not count:
        return nftc.NOTHING
    n = nftrules.parse_count(count[0])
    entries: list[bytes] = []
    for start in range(0, n, RECORD_KEYS_PER_REQUEST):
        keys = [
            nftrules.record_key(slot, i)
            for i in range(start, min(n, start + RECORD_KEYS_PER_REQUEST))
        ]
        got = sock.get_elements(nftc.TABLE, nftc.REC, keys)
        if got is None or len(got) != len(keys):
            raise NftError(f"{nftc.TABLE} slot {slot}: nrec says {n} entries, rec lacks some")
        entries += got
    return nftrules.parse_record(entries)


def sandbox_add_sync(
    netns: str,
    slot: int,
    address: str,
    policy: EgressPolicy,
    inspect: bool = False,
    *,
    backend: str | None = None,
) -> None:
    """Install one sandbox's elements, replacing what its slot held (one transaction)."""
    previous = read_record(netns, slot)
    if control_backend(backend) == "text":
        nft_sync(netns, nftc.sandbox_add_script(slot, address, policy, inspect, previous))
        return
    from declawd.egress import nftrules

    batch = nftrules.sandbox_add(slot, address, policy, inspect, previous)
    apply_batch(netns, batch, f"sandbox {slot}")


def sandbox_update_sync(
    netns: str,
    slot: int,
    address: str,
    policy: EgressPolicy,
    inspect: bool = False,
    *,
    backend: str | None = None,
) -> None:
    """Make one sandbox's elements those of `policy` (one transaction)."""
    previous = read_record(netns, slot)
    if control_backend(backend) == "text":
        nft_sync(netns, nftc.sandbox_update_script(slot, address, policy, inspect, previous))
        return
    from declawd.egress import nftrules

    batch = nftrules.sandbox_update(slot, address, policy, inspect, previous)
    apply_batch(netns, batch, f"sandbox {slot}")


def sandbox_remove_sync(netns: str, slot: int, *, backend: str | None = None) -> None:
    """Remove everything of one slot, whether or not any of it exists (one transaction)."""
    previous = read_record(netns, slot)
    if control_backend(backend) == "text":
        nft_sync(netns, nftc.sandbox_remove_script(slot, previous))
        return
    from declawd.egress import nftrules

    apply_batch(netns, nftrules.sandbox_remove(slot, previous), f"sandbox {slot}")


async def sandbox_add(
    netns: str, slot: int, address: str, policy: EgressPolicy, inspect: bool = False
) -> None:
    await asyncio.to_thread(sandbox_add_sync, netns, slot, address, policy, inspect)


async def sandbox_update(
    netns: str, slot: int, address: str, policy: EgressPolicy, inspect: bool = False
) -> None:
    await asyncio.to_thread(sandbox_update_sync, netns, slot, address, policy, inspect)


async def sandbox_remove(netns: str, slot: int) -> None:
    await asyncio.to_thread(sandbox_remove_sync, netns, slot)
