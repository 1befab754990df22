"""Admit resolved addresses into the shared nft set `resolved4` (table `inet declawd`),
keyed `iif . ipv4_addr`: the sandbox's veth by ifindex, then the address.

The resolver calls this *before* it releases a DNS answer, so the client's very next connect()
already matches the set. Keying by ifindex rather than by name means a removed sandbox needs
nothing deleted here: the kernel hands out ifindexes cyclically, so the veth of a reused slot
starts with no element, and the old ones simply expire. A policy change (`replace`) must
delete exactly the sandbox's elements, so this object remembers what it admitted per
interface (until it expires) and the daemon flushes the set when it starts (`reset`), when it
remembers nothing. Default backend: nf_tables netlink messages (`nfnetlink`), whose cost does
not grow with the number of sandboxes on the node; the libnftables (ctypes) and `nft` binary
backends remain, selected by DECLAWD_NFTSETS_BACKEND (netlink|library|binary). Every change is
one batch, hence one atomic kernel transaction; a failure raises NftError so the caller can
fail closed (SERVFAIL).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import struct
import time
from collections.abc import Mapping, Sequence

from declawd.egress import nfnetlink
from declawd.egress.nfnetlink import NFT_MSG_DELSETELEM, NFT_MSG_NEWSETELEM, Element
from declawd.egress.nft import RESOLVED4, TABLE, ifname
from declawd.egress.nftctl import Libnftables, NftError, nft_binary
from declawd.host import call_in_netns

log = logging.getLogger(__name__)

BACKENDS = ("netlink", "library", "binary")
BACKEND_ENV = "DECLAWD_NFTSETS_BACKEND"
# Kept a little past the kernel's own expiry: forgetting an element while the kernel still
# holds it would let `replace` leave it behind.
EXPIRY_GRACE_S = 5.0


class _NftBinary:
    """The `nft` binary in the caller's netns: a fork per change, the last resort."""

    def run(self, cmd: str) -> str:
        return nft_binary(cmd)

    def close(self) -> None:
        pass


class _Netlink:
    """Element changes as nf_tables netlink batches: O(1) in the number of sandboxes."""

    def __init__(self, table: str, netns: str | None) -> None:
        nfnetlink.split_table(table)  # fail at construction on a bad spec
        self.table = table
        self._sock = nfnetlink.NfTablesSocket(netns)

    def admit(self, ifindex: int, timeouts: Mapping[str, float]) -> None:
        self._sock.setelems(self.table, RESOLVED4, admit_ops(ifindex, timeouts))

    def replace(self, ifindex: int, timeouts: Mapping[str, float], previous: Sequence[str]) -> None:
        ops = replace_ops(ifindex, timeouts, previous)
        if ops:
            self._sock.setelems(self.table, RESOLVED4, ops)

    def reset(self) -> None:
        self._sock.setelems(self.table, RESOLVED4, [(NFT_MSG_DELSETELEM, None)])

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
        self._netns_path = netns_path
        # ifindex → address → monotonic time after which the kernel has surely expired it.
        self._admitted: dict[int, dict[str, float]] = {}
        chosen = backend or os.environ.get(BACKEND_ENV) or "netlink"
        if not use_library and backend is None:
            chosen = "binary"
        if chosen not in BACKENDS:
            raise ValueError(f"unknown nftsets backend {chosen!r} (one of {BACKENDS})")
        self._netlink: _Netlink | None = None
        self._text: Libnftables | _NftBinary | None = None
        if chosen == "netlink":
            try:
                self._netlink = _Netlink(table, netns_path)
            except OSError as exc:
                log.warning("nf_tables netlink socket unavailable (%s); using libnftables", exc)
                chosen = "library"
        if chosen == "library":
            try:
                self._text = Libnftables()
            except OSError as exc:
                log.warning("libnftables unavailable (%s); using the nft binary", exc)
                self._text = _NftBinary()
        elif chosen == "binary":
            self._text = _NftBinary()

    @property
    def backend(self) -> str:
        if self._netlink is not None:
            return "netlink"
        return "library" if isinstance(self._text, Libnftables) else "binary"

    def run(self, cmd: str) -> str:
        """Run an nft script (text backends; the netlink backend opens the binary lazily)."""
        if self._text is None:
            self._text = _NftBinary()
        return self._text.run(cmd)

    def ifindex(self, slot: int) -> int:
        """The ifindex of the slot's veth in the gateway netns; NftError if it has none."""
        name = ifname(slot)
        try:
            if self._netns_path is None:
                return socket.if_nametoindex(name)
            return call_in_netns(self._netns_path, lambda: socket.if_nametoindex(name))
        except OSError as exc:
            raise NftError(f"{self.table} {RESOLVED4}: no interface {name}: {exc}") from exc

    def _remember(self, ifindex: int, timeouts: Mapping[str, float]) -> None:
        now = time.monotonic()
        held = self._admitted.setdefault(ifindex, {})
        for address, seconds in timeouts.items():
            held[address] = max(held.get(address, 0.0), now + seconds + EXPIRY_GRACE_S)

    def prune(self) -> None:
        """Forget admissions the kernel has surely expired (the daemon calls it now and then)."""
        now = time.monotonic()
        for ifindex in list(self._admitted):
            held = {a: t for a, t in self._admitted[ifindex].items() if t > now}
            if held:
                self._admitted[ifindex] = held
            else:
                del self._admitted[ifindex]

    def admit(self, slot: int, timeouts: Mapping[str, float]) -> None:
        """Add (or refresh) elements `{iif . addr timeout Ns}` for the slot, atomically."""
        if not timeouts:
            return
        ifindex = self.ifindex(slot)
        if self._netlink is not None:
            self._netlink.admit(ifindex, timeouts)
        else:
            self.run(admit_command(self.table, ifindex, timeouts))
        self._remember(ifindex, timeouts)

    def replace(self, slot: int, timeouts: Mapping[str, float]) -> None:
        """Make the slot's elements exactly `timeouts` (after a policy change), atomically:
        whatever this object admitted for it goes, `timeouts` comes in."""
        ifindex = self.ifindex(slot)
        previous = sorted(self._admitted.get(ifindex, {}))
        if self._netlink is not None:
            self._netlink.replace(ifindex, timeouts, previous)
        elif cmd := replace_command(self.table, ifindex, timeouts, previous):
            self.run(cmd)
        self._admitted.pop(ifindex, None)
        self._remember(ifindex, timeouts)

    def reset(self) -> None:
        """Empty the set: at daemon start, when nothing admitted before is remembered, so no
        element a later `replace` could not delete survives (it never loosens the policy:
        a name is admitted again on its next resolution)."""
        if self._netlink is not None:
            self._netlink.reset()
        else:
            self.run(f"flush set {self.table} {RESOLVED4}\n")
        self._admitted.clear()

    def close(self) -> None:
        """Idempotent."""
        if self._netlink is not None:
            self._netlink.close()
        if self._text is not None:
            self._text.close()


SetOps = list[tuple[int, Sequence[Element] | None]]


def resolved_key(ifindex: int, address: str) -> bytes:
    """`iif . ipv4_addr`: the ifindex is host-order, the address network-order."""
    return struct.pack("=I", ifindex) + ipaddress.IPv4Address(address).packed


def _timed(ifindex: int, timeouts: Mapping[str, float]) -> list[Element]:
    return [
        Element(resolved_key(ifindex, a), nfnetlink.ipv4_element(a, t).timeout_ms)
        for a, t in sorted(timeouts.items())
    ]


def admit_ops(ifindex: int, timeouts: Mapping[str, float]) -> SetOps:
    """The netlink twin of `admit_command`: add, delete, add again with the fresh timeout."""
    timed = _timed(ifindex, timeouts)
    keys = [Element(e.key) for e in timed]
    return [(NFT_MSG_NEWSETELEM, timed), (NFT_MSG_DELSETELEM, keys), (NFT_MSG_NEWSETELEM, timed)]


def replace_ops(ifindex: int, timeouts: Mapping[str, float], previous: Sequence[str]) -> SetOps:
    """The netlink twin of `replace_command`: add then delete every previous and new address
    (an element that already expired cannot fail the batch), then add the new ones."""
    every = sorted({*previous, *timeouts})
    if not every:
        return []
    keys = [Element(resolved_key(ifindex, a)) for a in every]
    ops: SetOps = [(NFT_MSG_NEWSETELEM, keys), (NFT_MSG_DELSETELEM, keys)]
    if timeouts:
        ops.append((NFT_MSG_NEWSETELEM, _timed(ifindex, timeouts)))
    return ops


def _elements(ifindex: int, timeouts: Mapping[str, float]) -> str:
    parts = []
    for address, seconds in sorted(timeouts.items()):
        # Only ever IPv4 literals reach nft: anything else would be an injection vector.
        ip = ipaddress.IPv4Address(address)
        parts.append(f"{int(ifindex)} . {ip} timeout {max(1, int(seconds + 0.999))}s")
    return ", ".join(parts)


def _keys(ifindex: int, addresses: Sequence[str]) -> str:
    return ", ".join(f"{int(ifindex)} . {ipaddress.IPv4Address(a)}" for a in sorted(addresses))


def admit_command(table: str, ifindex: int, timeouts: Mapping[str, float]) -> str:
    """One batch that adds each element and resets its timeout even if it already exists.

    `add` of an existing element keeps its old timeout on older kernels, so the batch adds
    (creating missing ones), deletes (all now exist), then adds with the new timeout; the
    transaction is atomic, so a packet never sees the element missing.
    """
    elems = _elements(ifindex, timeouts)
    return (
        f"add element {table} {RESOLVED4} {{ {elems} }}\n"
        f"delete element {table} {RESOLVED4} {{ {_keys(ifindex, list(timeouts))} }}\n"
        f"add element {table} {RESOLVED4} {{ {elems} }}\n"
    )


def replace_command(
    table: str, ifindex: int, timeouts: Mapping[str, float], previous: Sequence[str]
) -> str:
    """The interface's elements become exactly `timeouts`, in one transaction."""
    every = sorted({*previous, *timeouts})
    if not every:
        return ""
    keys = _keys(ifindex, every)
    cmd = f"add element {table} {RESOLVED4} {{ {keys} }}\n"
    cmd += f"delete element {table} {RESOLVED4} {{ {keys} }}\n"
    if timeouts:
        cmd += f"add element {table} {RESOLVED4} {{ {_elements(ifindex, timeouts)} }}\n"
    return cmd
