"""Namespace plumbing for the datapath: run `ip`/`sysctl`/`conntrack` in a netns, apply nft.

Named network namespaces live in /var/run/netns (iproute2's convention) so they survive
our process. nft scripts go through libnftables (ctypes) on a thread that `setns()`'d into
the target namespace: no fork per transaction. Invariant: every nft script is applied as
one transaction, and a failure raises NftError carrying nft's own message.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

NETNS_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000


class CommandError(RuntimeError):
    def __init__(self, argv: list[str], rc: int, stderr: str) -> None:
        super().__init__(f"{' '.join(argv)} exited {rc}: {stderr.strip()}")
        self.argv = argv
        self.rc = rc
        self.stderr = stderr


class NftError(RuntimeError):
    pass


def netns_path(name: str) -> str:
    return str(NETNS_DIR / name)


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def list_netns(prefix: str = "") -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


async def run(
    *argv: str, netns: str | None = None, stdin: str | None = None, check: bool = True
) -> tuple[int, str, str]:
    """Run a command, inside netns `netns` when given (nsenter keeps /sys and resolv.conf)."""
    full = list(argv)
    if netns is not None:
        full = ["nsenter", f"--net={netns_path(netns)}", *full]
    proc = await asyncio.create_subprocess_exec(
        *full,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    rc = proc.returncode if proc.returncode is not None else -1
    if check and rc != 0:
        raise CommandError(full, rc, err.decode(errors="replace"))
    return rc, out.decode(errors="replace"), err.decode(errors="replace")


async def add_netns(name: str) -> bool:
    """Create netns `name` unless it exists; True if created by this call."""
    if netns_exists(name):
        return False
    await run("ip", "netns", "add", name)
    return True


async def delete_netns(name: str) -> None:
    """Idempotent. Deleting the netns destroys every interface still inside it."""
    if netns_exists(name):
        await run("ip", "netns", "delete", name, check=False)
    if netns_exists(name):  # a stale bind-mount file without a live namespace
        with contextlib.suppress(OSError):
            os.unlink(netns_path(name))


async def sysctl(netns: str, key: str, value: str) -> None:
    """Write a sysctl as seen from inside `netns` (net.* is per namespace)."""
    await sysctls(netns, {key: value})


async def sysctls(netns: str, values: dict[str, str]) -> None:
    """Write several sysctls inside `netns` with one process."""
    script = "; ".join(
        f"echo {value} > /proc/sys/{key.replace('.', '/')}" for key, value in values.items()
    )
    await run("sh", "-ec", script, netns=netns)


# nft ------------------------------------------------------------------------------


class _Libnftables:
    """A libnftables context whose netlink socket lives in one network namespace.

    The socket is bound to the netns of the thread that opens it, so the context is
    created and always used on one dedicated thread that entered the namespace.
    """

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.ino = os.stat(netns_path(netns)).st_ino
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"nft-{netns}")
        self._ctx = self._pool.submit(self._open).result()

    def _open(self) -> int:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fd = os.open(netns_path(self.netns), os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns failed")
        finally:
            os.close(fd)
        lib = ctypes.CDLL("libnftables.so.1")
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        self._lib = lib
        ctx = lib.nft_ctx_new(0)
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        return int(ctx)

    def _run(self, script: str, json_out: bool) -> str:
        lib, ctx = self._lib, self._ctx
        lib.nft_ctx_output_set_flags(ctx, 1 << 4 if json_out else 0)  # NFT_CTX_OUTPUT_JSON
        rc = lib.nft_run_cmd_from_buffer(ctx, script.encode())
        out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
        err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        if rc != 0:
            raise NftError(err.strip() or f"nft failed (rc={rc})")
        return out

    def run(self, script: str, json_out: bool = False) -> str:
        return self._pool.submit(self._run, script, json_out).result()

    def close(self) -> None:
        try:
            self._pool.submit(self._lib.nft_ctx_free, self._ctx).result()
        finally:
            self._pool.shutdown(wait=False)


_contexts: dict[str, _Libnftables] = {}
_contexts_lock = threading.Lock()
# "lib" (default) or "nsenter" (fork `nft -f -` per transaction); see bench_datapath.
BACKEND = os.environ.get("DECLAWD_NFT_BACKEND", "lib")


def _context(netns: str) -> _Libnftables:
    with _contexts_lock:
        ctx = _contexts.get(netns)
        ino = os.stat(netns_path(netns)).st_ino
        if ctx is not None and ctx.ino != ino:  # the namespace was recreated
            ctx.close()
            ctx = None
        if ctx is None:
            ctx = _contexts[netns] = _Libnftables(netns)
        return ctx


def forget_netns(netns: str) -> None:
    """Drop the cached nft context of a namespace that is being deleted."""
    with _contexts_lock:
        ctx = _contexts.pop(netns, None)
    if ctx is not None:
        ctx.close()


def nft_sync(netns: str, script: str, *, json_out: bool = False, backend: str = "") -> str:
    """Apply `script` as one transaction inside `netns` (blocking)."""
    if (backend or BACKEND) == "nsenter":
        import subprocess

        argv = ["nsenter", f"--net={netns_path(netns)}", "nft"]
        argv += ["-j", "-f", "-"] if json_out else ["-f", "-"]
        p = subprocess.run(argv, input=script, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise NftError(p.stderr.strip())
        return p.stdout
    return _context(netns).run(script, json_out)


async def nft(netns: str, script: str, *, json_out: bool = False) -> str:
    return await asyncio.to_thread(nft_sync, netns, script, json_out=json_out)
