"""Errors raised by the store.

These are internal: callers turn the ones a client may see into domain errors
(`declawd.errors`, e.g. `Duplicate` on a template alias becomes a `Conflict`). Lookups of a missing record return None
instead of raising; only mutations of a missing record raise `RecordNotFound`.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class Duplicate(StoreError):
    """A unique constraint was violated (team name, sandbox id, live slot, ...)."""


class RecordNotFound(StoreError, LookupError):
    """An update or allocation named a record that does not exist."""


class AmbiguousKey(StoreError):
    """A key prefix given to `revoke_api_key` matches more than one key."""


class SchemaTooNew(StoreError):
    """The database was migrated by a newer declawd than this one."""
