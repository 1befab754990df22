"""ResolvedNames: which addresses each sandbox resolved, through our resolver, for which names.

The resolver records every admitted (name, address) pair with the same lifetime it gives the
element in the sandbox's nft set `r4_<slot>` (clamped TTL + grace); the proxy asks it whether a
connection's original destination was resolved *by this sandbox* for the name the client claims
(SNI / Host), which is what defeats SNI spoofing. Expired pairs are never reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable

TTL_MIN_S = 5.0
TTL_MAX_S = 3600.0
GRACE_S = 30.0
# Bound per-sandbox memory: a hostile sandbox can resolve many names; the oldest go first.
MAX_PAIRS_PER_SANDBOX = 20_000


def normalize_name(name: str) -> str:
    """Lower-case, without one trailing dot (the form policy matching uses)."""
    name = name.strip().lower()
    return name[:-1] if name.endswith(".") else name


def admitted_lifetime(ttl_s: float, grace_s: float = GRACE_S) -> float:
    """Seconds an answer's addresses stay admitted: clamp(TTL, 5 s..1 h) + grace."""
    return min(max(float(ttl_s), TTL_MIN_S), TTL_MAX_S) + grace_s


class ResolvedNames:
    """In-memory (sandbox, name, address) → expiry, with a reverse index by address."""

    def __init__(
        self, grace_s: float = GRACE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._grace_s = grace_s
        self._clock = clock
        # sandbox_id -> address -> name -> expiry (monotonic seconds)
        self._by_address: dict[str, dict[str, dict[str, float]]] = {}
        # sandbox_id -> address -> the latest expiry of its names: the resolver asks for it
        # on every forwarded answer, and a CDN's or a wildcard zone's address may hold
        # thousands of names (a max over them was 33 µs of a query at 3000).
        self._latest: dict[str, dict[str, float]] = {}
        self._pairs: dict[str, int] = {}  # sandbox_id -> number of (address, name) pairs

    @property
    def grace_s(self) -> float:
        return self._grace_s

    def record(self, sandbox_id: str, name: str, addresses: list[str], ttl_s: float) -> None:
        """Remember that `name` resolved to `addresses` for this sandbox, for clamp(ttl)+grace."""
        if not addresses:
            return
        expiry = self._clock() + admitted_lifetime(ttl_s, self._grace_s)
        name = normalize_name(name)
        table = self._by_address.setdefault(sandbox_id, {})
        latest = self._latest.setdefault(sandbox_id, {})
        pairs = self._pairs.get(sandbox_id, 0)
        for address in addresses:
            names = table.setdefault(address, {})
            known = names.get(name)
            pairs += known is None
            # Never shorten: the resolver installs max(new, remaining) in nft too, so both agree.
            names[name] = expiry if known is None else max(expiry, known)
            latest[address] = max(latest.get(address, 0.0), names[name])
        self._pairs[sandbox_id] = pairs
        if pairs > MAX_PAIRS_PER_SANDBOX:
            self._prune(sandbox_id, force=True)

    def resolved_for(self, sandbox_id: str, name: str, address: str) -> bool:
        """True when this sandbox resolved `name` to `address` and the pair has not expired."""
        names = self._by_address.get(sandbox_id, {}).get(address)
        if not names:
            return False
        expiry = names.get(normalize_name(name))
        return expiry is not None and expiry > self._clock()

    def any_allowed_name_for(
        self,
        sandbox_id: str,
        address: str,
        still_allowed: Callable[[str], bool] | None = None,
    ) -> str | None:
        """A live name this sandbox resolved to `address` (and still allowed, if a check is given)."""
        names = self._by_address.get(sandbox_id, {}).get(address)
        if not names:
            return None
        now = self._clock()
        for name, expiry in sorted(names.items()):
            if expiry > now and (still_allowed is None or still_allowed(name)):
                return name
        return None

    def retain(self, sandbox_id: str, still_allowed: Callable[[str], bool]) -> None:
        """Drop the pairs whose name the sandbox's (new) policy no longer allows."""
        table = self._by_address.get(sandbox_id)
        if table is None:
            return
        for address in list(table):
            names = table[address]
            for name in [n for n in names if not still_allowed(n)]:
                del names[name]
            if not names:
                del table[address]
        self._count(sandbox_id)

    def forget(self, sandbox_id: str) -> None:
        """Drop everything known about a sandbox (removed, or its slot reused). Idempotent."""
        self._by_address.pop(sandbox_id, None)
        self._latest.pop(sandbox_id, None)
        self._pairs.pop(sandbox_id, None)

    def addresses(self, sandbox_id: str) -> dict[str, float]:
        """Live address → latest expiry for a sandbox (used to re-seed nft sets after restart)."""
        now = self._clock()
        return {a: e for a, e in self._latest.get(sandbox_id, {}).items() if e > now}

    def remaining(self, sandbox_id: str) -> dict[str, float]:
        """Live address → seconds until its latest pair expires."""
        now = self._clock()
        return {a: e - now for a, e in self.addresses(sandbox_id).items()}

    def remaining_for(self, sandbox_id: str, addresses: list[str]) -> dict[str, float]:
        """Like `remaining`, for these addresses only (the resolver's hot path)."""
        latest = self._latest.get(sandbox_id)
        if not latest:
            return {}
        now = self._clock()
        out: dict[str, float] = {}
        for address in addresses:
            expiry = latest.get(address, 0.0)
            if expiry > now:
                out[address] = expiry - now
        return out

    def sandboxes(self) -> list[str]:
        return list(self._by_address)

    def _prune(self, sandbox_id: str, force: bool = False) -> None:
        table = self._by_address.get(sandbox_id)
        if table is None:
            return
        now = self._clock()
        for address in list(table):
            names = table[address]
            for name in [n for n, e in names.items() if e <= now]:
                del names[name]
            if not names:
                del table[address]
        if force:
            pairs = sorted(
                ((e, a, n) for a, ns in table.items() for n, e in ns.items()), reverse=True
            )
            for _e, address, name in pairs[MAX_PAIRS_PER_SANDBOX // 2 :]:
                del table[address][name]
                if not table[address]:
                    del table[address]
        self._count(sandbox_id)

    def _count(self, sandbox_id: str) -> None:
        """After pairs were dropped: the pair count and each address's latest expiry anew."""
        table = self._by_address.get(sandbox_id)
        if table is not None:
            self._pairs[sandbox_id] = sum(len(names) for names in table.values())
            self._latest[sandbox_id] = {a: max(names.values()) for a, names in table.items()}

    def prune(self) -> None:
        """Drop expired pairs for every sandbox (called periodically by the daemon)."""
        for sandbox_id in list(self._by_address):
            self._prune(sandbox_id)
