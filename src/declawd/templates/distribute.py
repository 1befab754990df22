"""Template layers through the blob store: publish a committed layer, fetch one into the cache.

In a cluster the layers are built once, by one node, and reach the others through the blob
store (a shared filesystem, docs/cluster.md). A published layer is two blobs:

- `layers/<key>.tar`: the layer's `fs` tree archived with GNU tar and the snapshot
  archives' flags (`node/snapshots.py` TAR_FLAGS: every xattr, trusted.overlay.* included,
  ACLs, numeric owners, holes kept as holes); whiteouts are 0:0 char devices and are
  archived and extracted as such (as root);
- `layers/<key>.json`: its `LayerInfo`, the archive's size and when it was published,
  written LAST, so a layer is in the blob store exactly when its json is.

Invariants: a published layer is never rewritten (a publisher holds the layer's blob lock
and skips a key whose json exists, so two hosts publishing the same layer at once write it
once); a fetch extracts into a `LayerCache.staging` dir and commits it, so a half-fetched
layer never appears in the local cache, and a fetched layer's `layer.json` says
`"origin": "fetched"`; a layer is unpublished (gc, `blobgc.py`) under the same lock, json
FIRST, so no host ever sees as published a layer whose archive is gone, and a fetch that
loses that race fails with NotFound, never with a half-extracted layer. Every call blocks (tar, the disk, a network filesystem): run them on
worker threads.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from declawd.blobs import BlobStore
from declawd.errors import Internal, NotFound
from declawd.host import run_sync
from declawd.node.snapshots import TAR_FLAGS
from declawd.templates.layers import LayerCache, LayerInfo

log = logging.getLogger(__name__)

LAYERS = "layers"
# A publisher holds the layer's lock while it archives the layer (seconds to a minute for a
# large one on NFS); another host waits that long at most, then gives up (BlobLockTimeout).
PUBLISH_WAIT_S = 900.0
# A holder renews its lock every stale_s / 4; one that stopped (it crashed) loses it then.
LOCK_STALE_S = 60.0


def tar_key(key: str) -> str:
    return f"{LAYERS}/{key}.tar"


def info_key(key: str) -> str:
    return f"{LAYERS}/{key}.json"


def blob_mtime(blobs: BlobStore, key: str) -> float | None:
    """When blob `key` was written (None if there is none). On the filesystem backend the
    file's own mtime, set by the file server's clock."""
    try:
        with blobs.reading(key) as path:
            return path.stat().st_mtime
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class Published:
    """What `layers/<key>.json` says: the layer as it was built, its archive's size, and
    when it was published (0 in records written before that was recorded)."""

    info: LayerInfo
    tar_bytes: int
    published_by: str
    published_at: float = 0.0


@dataclass(frozen=True)
class PublishedLayer:
    """One key under `layers/` as gc sees it. `complete`: its json is there (else an archive
    a publisher left without one when it died: no host uses it)."""

    key: str
    published_at: float
    tar_bytes: int
    complete: bool


class LayerDistributor:
    """Moves layers between one host's `LayerCache` and the blob store (blocking calls)."""

    def __init__(
        self,
        cache: LayerCache,
        blobs: BlobStore,
        *,
        lock_wait_s: float = PUBLISH_WAIT_S,
        lock_stale_s: float = LOCK_STALE_S,
    ) -> None:
        self.cache = cache
        self.blobs = blobs
        self.lock_wait_s = lock_wait_s
        self.lock_stale_s = lock_stale_s
        # Two threads of this process fetching one layer fetch it once.
        self._fetching: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    # Presence ----------------------------------------------------------------------------
    def published(self, key: str) -> bool:
        """Whether layer `key` is complete in the blob store (its json is there)."""
        return self.blobs.exists(info_key(key))

    def unpublished(self, keys: Iterable[str]) -> list[str]:
        """Those of `keys` the blob store does not have (in order)."""
        return [k for k in keys if not self.published(k)]

    def published_info(self, key: str) -> Published | None:
        try:
            with self.blobs.reading(info_key(key)) as path:
                data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise Internal(f"layer {key[:12]}: its blob store record is unreadable: {exc}") from exc
        return Published(
            info=LayerInfo.from_dict(data["layer"]),
            tar_bytes=int(data["tar_bytes"]),
            published_by=str(data.get("published_by") or ""),
            published_at=float(data.get("published_at") or 0.0),
        )

    def published_layers(self) -> list[PublishedLayer]:
        """Every layer key the blob store holds a json or an archive of, sorted."""
        keys: set[str] = set()
        for name in self.blobs.list(LAYERS):
            for suffix in (".json", ".tar"):
                if name.endswith(suffix) and len(name) > len(suffix):
                    keys.add(name[: -len(suffix)])
        return [e for e in map(self._entry, sorted(keys)) if e is not None]

    def _entry(self, key: str) -> PublishedLayer | None:
        try:
            pub = self.published_info(key)
        except (Internal, KeyError, TypeError, ValueError):
            # an unreadable json: "published" all the same (a fetch fails on it)
            at = blob_mtime(self.blobs, info_key(key))
            return None if at is None else PublishedLayer(key, at, self._tar_size(key), True)
        if pub is not None:
            # records from before `published_at` was recorded: the json's own mtime
            at = pub.published_at or blob_mtime(self.blobs, info_key(key)) or time.time()
            return PublishedLayer(key, at, pub.tar_bytes, True)
        at = blob_mtime(self.blobs, tar_key(key))
        return None if at is None else PublishedLayer(key, at, self._tar_size(key), False)

    def _tar_size(self, key: str) -> int:
        return self.blobs.size(tar_key(key)) or 0

    # Publishing --------------------------------------------------------------------------
    def publish(self, key: str) -> bool:
        """Archive the local layer `key` into the blob store; False if it was there already
        (idempotent; NotFound if this host does not have the layer)."""
        if self.published(key):
            return False
        info = self.cache.info(key)
        if info is None:
            raise NotFound(f"layer {key[:12]} is not in the local layer cache")
        with self.blobs.lock(f"layer-{key}", wait_s=self.lock_wait_s, stale_s=self.lock_stale_s):
            if self.published(key):  # another host published it while we waited
                return False
            t0 = time.monotonic()
            with self.blobs.writing(tar_key(key)) as partial:
                run_sync(
                    "tar", *TAR_FLAGS, "-cpf", str(partial), "-C", str(self.cache.fs(key)), "."
                )
                tar_bytes = partial.stat().st_size
            # The json last: from now on the layer is in the blob store.
            record = {
                "layer": asdict(info),
                "tar_bytes": tar_bytes,
                "published_by": socket.gethostname(),
                "published_at": time.time(),
            }
            with self.blobs.writing(info_key(key)) as partial:
                partial.write_text(json.dumps(record, indent=1))
        log.info(
            "layer %s published: %.1f MB in %.1fs",
            key[:12],
            tar_bytes / 1e6,
            time.monotonic() - t0,
        )
        return True

    def publish_all(self, keys: Iterable[str]) -> list[str]:
        """Publish those of `keys` the blob store lacks; returns the ones this call wrote."""
        return [k for k in keys if self.publish(k)]

    def unpublish(self, key: str, *, published_before: float | None = None) -> bool:
        """Remove layer `key` from the blob store: its json first (from then on no host
        fetches it), then its archive. False if neither was there, or if it was published
        at or after `published_before` (published again since the caller looked).

        Under the layer's publish lock, taken without waiting: BlobLockTimeout while a
        publisher holds it, i.e. while the layer is being published, so in use."""
        with self.blobs.lock(f"layer-{key}", wait_s=0.0, stale_s=self.lock_stale_s):
            entry = self._entry(key)
            if entry is None:
                return False
            if published_before is not None and entry.published_at >= published_before:
                return False
            self.blobs.delete(info_key(key))
            self.blobs.delete(tar_key(key))
        log.info(
            "layer %s unpublished: %.1f MB freed in the blob store",
            key[:12],
            entry.tar_bytes / 1e6,
        )
        return True

    # Fetching ----------------------------------------------------------------------------
    def fetch(self, key: str) -> bool:
        """Make layer `key` local from the blob store; False if it was local already.
        NotFound if the blob store does not have it either."""
        if self.cache.exists(key):
            return False
        with self._guard:
            lock = self._fetching.setdefault(key, threading.Lock())
        with lock:
            if self.cache.exists(key):
                return False
            pub = self.published_info(key)
            if pub is None:
                raise NotFound(f"layer {key[:12]} is neither local nor in the blob store")
            t0 = time.monotonic()
            try:
                self._extract(key, pub, t0)
            except (Internal, OSError) as exc:
                # gc unpublished it meanwhile: its archive vanished before or while tar
                # read it (on NFS another host's unlink ends an open read), and the staging
                # dir is gone with whatever tar had written
                if self.published(key):
                    raise
                raise NotFound(
                    f"layer {key[:12]} was removed from the blob store while it was fetched"
                ) from exc
        log.info(
            "layer %s fetched from the blob store (built by %s): %.1f MB in %.1fs",
            key[:12],
            pub.published_by or "?",
            pub.tar_bytes / 1e6,
            time.monotonic() - t0,
        )
        return True

    def _extract(self, key: str, pub: Published, t0: float) -> None:
        with self.blobs.reading(tar_key(key)) as tar, self.cache.staging(key) as tmp:
            size = tar.stat().st_size
            if size != pub.tar_bytes:
                raise Internal(
                    f"layer {key[:12]}: its archive has {size} bytes, its record says "
                    f"{pub.tar_bytes}"
                )
            (tmp / "fs").mkdir()
            run_sync("tar", *TAR_FLAGS, "-xpf", str(tar), "-C", str(tmp / "fs"))
            self.cache.commit(
                tmp,
                key,
                pub.info.parent,
                pub.info.label,
                pub.info.build_seconds,
                origin="fetched",
                fetch_seconds=time.monotonic() - t0,
            )

    def fetch_all(self, keys: Iterable[str]) -> list[str]:
        """Make every layer of a template's chain (`keys`, lowest first) local; returns the
        ones this call fetched."""
        return [k for k in keys if self.fetch(k)]
