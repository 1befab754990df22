"""Admit resolved addresses into a sandbox's nft set `r4_<slot>` (table `inet declawd`).

The resolver calls this *before* it releases a DNS answer, so the client's very next connect()
already matches the set. Default backend: nf_tables netlink messages for that one set
(`nfnetlink`), whose cost does not grow with the number of sandboxes on the node; the
libnftables (ctypes) and `nft` binary backends remain, selected by DECLAWD_NFTSETS_BACKEND
(netlink|library|binary). Every change is one batch, hence one atomic kernel transaction; a
failure raises NftError so the caller can fail closed (SERVFAIL).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping, Sequence

from declawd.egress import nfnetlink
from declawd.egress.nfnetlink import NFT_MSG_DELSETELEM, NFT_MSG_NEWSETELEM, Element
from declawd.egress.nft import TABLE
from declawd.egress.nftctl import Libnftables, nft_binary

log = logging.getLogger(__name__)

BACKENDS = ("netlink", "library", "binary")
BACKEND_ENV = "DECLAWD_NFTSETS_BACKEND"


def resolved_set(slot: int) -> str:
    return f"r4_{int(slot)}"


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
