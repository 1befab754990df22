"""The blob store: template layer archives, snapshot archives and volume trees.

One interface (`BlobStore`) for what every node and API server must reach. The backend here
is a directory (`FsBlobStore`): the state directory in the single-process default, a shared
filesystem mounted on every host in a cluster (`DECLAWD_BLOB_DIR`; NFS in production, see
docs/blobs.md). An object store (S3) would implement the same calls but `tree`, which only
a filesystem can answer (volumes' live mounts need one).

Keys are relative '/'-separated paths of plain names: `snapshots/<id>/fs.tar`,
`layers/<key>.tar`, `volumes/<id>`. Invariants: a blob is visible under its key only once it
is complete and durable (written aside, fsynced, renamed); a key never names anything
outside the store's root.
"""

from __future__ import annotations

from declawd.blobs.fs import BlobLockTimeout, BlobStore, FsBlobStore, check_key, open_blobs

__all__ = ["BlobLockTimeout", "BlobStore", "FsBlobStore", "check_key", "open_blobs"]
