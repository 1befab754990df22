"""Garbage collection of the shared blob store: published layers and build contexts nobody uses.

`TemplateService.gc` runs this where the store and the shared blob store meet (a cluster's
API server, or a server with `DECLAWD_BLOB_DIR`); a node's gc cleans its own cache only.
Invariants: a layer or context is removed only when no template record references it (any
team, any state), no catalog built-in or running build does, and it is older than
`SHARED_MIN_AGE_S`; one collector runs at a time across every host (blob lock "gc"); a layer
goes under its own publish lock, json first (`LayerDistributor.unpublish`), so no host sees
it published without its archive, and a fetch that loses the race gets NotFound.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from declawd.blobs import BlobLockTimeout
from declawd.templates.context import published_contexts, remove_context, unpublish_context
from declawd.templates.distribute import LOCK_STALE_S, LayerDistributor

log = logging.getLogger(__name__)

# The age floor of the shared part, whatever min_age_s the caller asks for: a build in
# progress on another host publishes each layer as soon as it is built, but its template's
# record names its layers only once the build completes, and a context is uploaded before
# the build that uses it is recorded. An hour covers both (the same grace the CLI's gc has
# always given the local cache); builds recorded as building are kept by their plan too.
SHARED_MIN_AGE_S = 3600.0
GC_LOCK = "gc"
# A second collector waits this long for the first, then gives up (BlobLockTimeout: Busy).
GC_LOCK_WAIT_S = 5.0


class Referenced(NamedTuple):
    """What the store and this process use: layer keys and build context ids."""

    layers: set[str]
    contexts: set[str]


@dataclass
class SharedSweep:
    """What one sweep removed (or would have, in a dry run)."""

    layers: list[str] = field(default_factory=list)
    layer_bytes: int = 0
    contexts: list[str] = field(default_factory=list)
    context_bytes: int = 0
    busy: list[str] = field(default_factory=list)  # layers a publisher held: kept

    def as_dict(self) -> dict[str, Any]:
        return {
            "removed_published": len(self.layers),
            "freed_published_bytes": self.layer_bytes,
            "published": self.layers,
            "removed_contexts": len(self.contexts),
            "freed_context_bytes": self.context_bytes,
            "contexts": self.contexts,
        }


def sweep_shared(
    dist: LayerDistributor,
    referenced: Callable[[], Referenced],
    *,
    min_age_s: float = 0.0,
    only: Iterable[str] | None = None,
    dry_run: bool = False,
    contexts_dir: Path | None = None,
) -> SharedSweep:
    """Unpublish the layers and delete the contexts that `referenced()` does not name and
    that are older than `max(min_age_s, SHARED_MIN_AGE_S)`. `only` limits the layers to
    those keys and leaves contexts alone. `contexts_dir`: this host's extracted contexts,
    whose copy of a removed context goes too (a build naming it is then refused here).

    `referenced` is called after the listing, so a template recorded while the blob store
    was listed is seen. A dry run takes no lock and removes nothing."""
    blobs = dist.blobs
    wanted = None if only is None else set(only)
    held: contextlib.AbstractContextManager[None] = (
        contextlib.nullcontext()
        if dry_run
        else blobs.lock(GC_LOCK, wait_s=GC_LOCK_WAIT_S, stale_s=LOCK_STALE_S)
    )
    out = SharedSweep()
    with held:
        layers = dist.published_layers()
        contexts = published_contexts(blobs) if wanted is None else []
        keep = referenced()
        cutoff = time.time() - max(min_age_s, SHARED_MIN_AGE_S)
        for layer in layers:
            if layer.key in keep.layers or layer.published_at >= cutoff:
                continue
            if wanted is not None and layer.key not in wanted:
                continue
            if not dry_run:
                try:
                    if not dist.unpublish(layer.key, published_before=cutoff):
                        continue
                except BlobLockTimeout:
                    out.busy.append(layer.key)
                    continue
            out.layers.append(layer.key)
            out.layer_bytes += layer.tar_bytes
        for ctx in contexts:
            if ctx.context_id in keep.contexts or ctx.published_at >= cutoff:
                continue
            if not dry_run:
                if not unpublish_context(blobs, ctx.context_id, published_before=cutoff):
                    continue
                if contexts_dir is not None:
                    remove_context(contexts_dir, ctx.context_id)
            out.contexts.append(ctx.context_id)
            out.context_bytes += ctx.size_bytes
    if out.layers or out.contexts or out.busy:
        log.info(
            "blob store gc%s: %d layer(s) (%.1f MB), %d context(s) (%.1f MB)%s",
            " (dry run)" if dry_run else "",
            len(out.layers),
            out.layer_bytes / 1e6,
            len(out.contexts),
            out.context_bytes / 1e6,
            f"; {len(out.busy)} being published, kept" if out.busy else "",
        )
    return out
