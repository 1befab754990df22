"""The resolver's answer cache: one bounded table per sandbox, entries kept at most their TTL.

Sans-IO (the clock is passed in). Invariants: a sandbox is only ever answered from its own
lookups, and only from a table built under the policy it has now (compared by value); tables
are bounded in entries and bytes, each and together; every entry carries a lower bound of when
its addresses leave the sandbox's nft set, so a hit can be released only once that is proven.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from declawd.egress.dnsfilter import AuditNote
from declawd.egress.policy import EgressPolicy

MAX_ENTRIES_PER_SANDBOX = 2048
MAX_BYTES_PER_SANDBOX = 1 << 20
MAX_BYTES_TOTAL = 32 << 20
# Estimated bytes of one entry besides its strings: dataclass, tuples, key, table slot.
_ENTRY_OVERHEAD = 400
_STR_OVERHEAD = 50

Key = tuple[str, int]  # (normalised name, qtype)


@dataclass
class CachedAnswer:
    """A filtered upstream answer, as `filter_answer` produced it, with its lifetime."""

    rcode: int
    chain: tuple[str, ...]  # queried name, then the CNAME targets
    addresses: tuple[str, ...]  # public A addresses (what was admitted)
    audit: AuditNote
    expires: float  # clock time: when the answer's (capped) TTL runs out
    # Clock time before which every address is surely still in r4_<slot>: taken before the
    # admit, so the kernel's own expiry is never earlier. 0: never admitted (open policy).
    admitted_until: float = 0.0
    size: int = field(init=False)

    def __post_init__(self) -> None:
        strings = self.chain + self.addresses + (self.audit.name, *self.audit.addresses)
        self.size = _ENTRY_OVERHEAD + sum(_STR_OVERHEAD + len(s) for s in strings)

    def ttl_left(self, now: float) -> int:
        """Whole seconds still valid; never more than the upstream allowed."""
        return int(self.expires - now)


@dataclass
class _Table:
    policy: EgressPolicy
    entries: OrderedDict[Key, CachedAnswer] = field(default_factory=OrderedDict)
    size: int = 0
    # Address → clock time before which it is surely still in r4_<slot>: the proof of an
    # admit (taken before it), whichever answer it was for. Names that share an address
    # (a CDN, a wildcard zone) then need no admit each. Kept and dropped with the answers.
    admitted: dict[str, float] = field(default_factory=dict)


class AnswerCache:
    """Answers by sandbox id, least recently used evicted first."""

    def __init__(
        self,
        *,
        max_entries: int = MAX_ENTRIES_PER_SANDBOX,
        max_bytes: int = MAX_BYTES_PER_SANDBOX,
        max_total_bytes: int = MAX_BYTES_TOTAL,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_total_bytes = max_total_bytes
        self._tables: dict[str, _Table] = {}
        self.total_bytes = 0

    def get(
        self, sandbox_id: str, policy: EgressPolicy, key: Key, now: float
    ) -> CachedAnswer | None:
        """A live answer for `key`, or None. Entries with less than 1 s left are gone."""
        table = self._table(sandbox_id, policy, create=False)
        if table is None:
            return None
        found = table.entries.get(key)
        if found is None:
            return None
        if found.ttl_left(now) < 1:
            self._remove(table, key)
            return None
        table.entries.move_to_end(key)
        return found

    def put(self, sandbox_id: str, policy: EgressPolicy, key: Key, answer: CachedAnswer) -> None:
        if answer.size > self.max_bytes or self.max_entries < 1:
            return
        table = self._table(sandbox_id, policy, create=True)
        assert table is not None
        if key in table.entries:
            self._remove(table, key)
        table.entries[key] = answer
        table.size += answer.size
        self.total_bytes += answer.size
        while len(table.entries) > self.max_entries or table.size > self.max_bytes:
            self._remove(table, next(iter(table.entries)))
        while self.total_bytes > self.max_total_bytes:
            # The biggest table pays: one sandbox's flood of names cannot empty the others.
            biggest = max(self._tables.values(), key=lambda t: t.size)
            self._remove(biggest, next(iter(biggest.entries)))

    def admitted_until(self, sandbox_id: str, policy: EgressPolicy, addresses: list[str]) -> float:
        """The clock time before which every one of `addresses` is surely admitted for the
        sandbox under `policy` (0.0 when one has no proof)."""
        table = self._table(sandbox_id, policy, create=False)
        if table is None or not addresses:
            return 0.0
        return min(table.admitted.get(a, 0.0) for a in addresses)

    def note_admitted(
        self, sandbox_id: str, policy: EgressPolicy, timeouts: dict[str, float], at: float
    ) -> None:
        """An admit of these element timeouts succeeded; `at` was taken before it."""
        table = self._table(sandbox_id, policy, create=True)
        assert table is not None
        for address, timeout in timeouts.items():
            until = at + timeout
            if until > table.admitted.get(address, 0.0):
                table.admitted.pop(address, None)  # re-inserted last: the oldest go first
                table.admitted[address] = until
        while len(table.admitted) > self.max_entries:
            del table.admitted[next(iter(table.admitted))]

    def drop(self, sandbox_id: str) -> None:
        """Forget a sandbox's answers (policy changed, sandbox removed). Idempotent."""
        table = self._tables.pop(sandbox_id, None)
        if table is not None:
            self.total_bytes -= table.size

    def discard(self, sandbox_id: str, key: Key) -> None:
        table = self._tables.get(sandbox_id)
        if table is not None and key in table.entries:
            self._remove(table, key)

    def entries(self, sandbox_id: str) -> int:
        table = self._tables.get(sandbox_id)
        return 0 if table is None else len(table.entries)

    def _table(self, sandbox_id: str, policy: EgressPolicy, *, create: bool) -> _Table | None:
        table = self._tables.get(sandbox_id)
        if table is not None and table.policy is not policy:
            if table.policy != policy:
                self.drop(sandbox_id)
                table = None
            else:
                table.policy = policy  # same value, newer object: compare by identity next
        if table is None and create:
            table = self._tables[sandbox_id] = _Table(policy)
        return table

    def _remove(self, table: _Table, key: Key) -> None:
        answer = table.entries.pop(key)
        table.size -= answer.size
        self.total_bytes -= answer.size
