"""Build contexts: tar.gz uploads that `copies` / COPY read from, stored content-addressed.

`contexts/<context_id>/files` holds the extracted tree; `context_id` is `ctx-` + the
sha256 of the upload, so equal uploads share one dir and layer cache keys stay stable.
Invariant: nothing is extracted unless every member is a plain file, dir or link whose
path and target stay inside the context, and the sizes are under the caps. With a shared
blob store the upload itself is also kept there as `contexts/<context_id>.tar` (the bytes as
uploaded), so the node that runs the build, and any API server that checks a spec against
it, can extract the same tree (`publish_context`, `fetch_context`); gc (`blobgc.py`) removes
the blobs no template references (`published_contexts`, `unpublish_context`), going by their
age, which an upload of the same bytes renews.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import secrets
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from declawd.errors import Internal, InvalidInput, TooLarge
from declawd.templates.distribute import blob_mtime

if TYPE_CHECKING:
    from declawd.blobs import BlobStore

MAX_UPLOAD_BYTES = 100 * 1024 * 1024
MAX_EXTRACTED_BYTES = 1024 * 1024 * 1024
MAX_MEMBERS = 20000
CONTEXTS = "contexts"
# An upload of a context the blob store has already rewrites the blob if it is older than
# this, so its age (what gc goes by) counts from the latest upload; gc's age floor
# (blobgc.SHARED_MIN_AGE_S) is well above it.
REFRESH_AFTER_S = 600.0


def _clean_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return posixpath.normpath(name) if name else "."


def validate_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Check every member (pure over the archive's index); InvalidInput names the first bad one."""
    members = tar.getmembers()
    if len(members) > MAX_MEMBERS:
        raise TooLarge(f"context: more than {MAX_MEMBERS} entries")
    total = 0
    names: set[str] = set()
    for m in members:
        raw = m.name
        if raw.startswith("/") or "\x00" in raw:
            raise InvalidInput("context", f"absolute path {raw!r}")
        name = _clean_name(raw)
        if name == ".." or name.startswith("../") or "/../" in f"/{raw}/":
            raise InvalidInput("context", f"path {raw!r} leaves the context")
        if m.issym():
            target = m.linkname
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
            if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
                raise InvalidInput("context", f"symlink {raw!r} -> {target!r} leaves the context")
        elif m.islnk():
            if _clean_name(m.linkname) not in names:
                raise InvalidInput(
                    "context", f"hard link {raw!r} -> {m.linkname!r} is not to an earlier file"
                )
        elif not (m.isfile() or m.isdir()):
            raise InvalidInput("context", f"{raw!r} is not a regular file, directory or link")
        total += m.size
        if total > MAX_EXTRACTED_BYTES:
            raise TooLarge(f"context: more than {MAX_EXTRACTED_BYTES // 2**20} MiB extracted")
        names.add(name)
    return members


def store_context(contexts_dir: Path, body: bytes) -> str:
    """Validate and extract an uploaded tar.gz; returns its context id (idempotent)."""
    if len(body) > MAX_UPLOAD_BYTES:
        raise TooLarge(f"context: larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
    if not body:
        raise InvalidInput("context", "empty body (expected a tar.gz archive)")
    context_id = "ctx-" + hashlib.sha256(body).hexdigest()
    final = contexts_dir / context_id
    if (final / "files").is_dir():
        return context_id
    contexts_dir.mkdir(parents=True, exist_ok=True)
    tmp = contexts_dir / f".tmp-{secrets.token_hex(6)}"
    try:
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
            members = validate_members(tar)
            (tmp / "files").mkdir(parents=True)
            # the data filter re-checks what we checked and strips setuid bits and owners
            tar.extractall(tmp / "files", members=members, filter="data")
        os.chmod(tmp / "files", 0o755)
        try:
            tmp.rename(final)
        except OSError:
            if not (final / "files").is_dir():
                raise
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidInput("context", f"not a valid tar.gz archive ({exc})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return context_id


def context_has(contexts_dir: Path, context_id: str, src: str) -> bool:
    """Whether `src` (already checked to be relative without `..`) exists in the context."""
    root = (contexts_dir / context_id / "files").resolve()
    path = (root / src).resolve()
    return (path == root or root in path.parents) and (path.exists() or path.is_symlink())


def context_blob_key(context_id: str) -> str:
    return f"{CONTEXTS}/{context_id}.tar"


@dataclass(frozen=True)
class PublishedContext:
    """One `contexts/<id>.tar` as gc sees it: when it was (last) uploaded, and its size."""

    context_id: str
    published_at: float
    size_bytes: int


def publish_context(blobs: BlobStore, context_id: str, body: bytes) -> bool:
    """Keep the upload `body` (already stored as `context_id`) in the blob store; False if
    it was there already (equal uploads have equal ids). A copy older than
    `REFRESH_AFTER_S` is written again all the same: an upload made just before a build
    must not find its context collected as an old, unused one."""
    key = context_blob_key(context_id)
    at = blob_mtime(blobs, key)
    if at is not None and time.time() - at < REFRESH_AFTER_S:
        return False
    with blobs.writing(key) as partial:
        partial.write_bytes(body)
    return at is None


def published_contexts(blobs: BlobStore) -> list[PublishedContext]:
    """Every build context the blob store holds, by id."""
    out = []
    for name in blobs.list(CONTEXTS):
        if not (name.startswith("ctx-") and name.endswith(".tar")):
            continue
        context_id = name[: -len(".tar")]
        at = blob_mtime(blobs, context_blob_key(context_id))
        if at is not None:
            size = blobs.size(context_blob_key(context_id)) or 0
            out.append(PublishedContext(context_id, at, size))
    return out


def unpublish_context(
    blobs: BlobStore, context_id: str, *, published_before: float | None = None
) -> bool:
    """Remove context `context_id` from the blob store; False if it was not there, or if it
    was uploaded at or after `published_before` (again since the caller looked)."""
    key = context_blob_key(context_id)
    at = blob_mtime(blobs, key)
    if at is None or (published_before is not None and at >= published_before):
        return False
    blobs.delete(key)
    return True


def remove_context(contexts_dir: Path, context_id: str) -> None:
    """Delete this host's extracted copy of a context (renamed aside first, so a half-deleted
    tree never passes for the context); idempotent."""
    final = contexts_dir / context_id
    if not final.exists():
        return
    doomed = contexts_dir / f".gc-{secrets.token_hex(6)}"
    try:
        final.rename(doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed)


def fetch_context(blobs: BlobStore, contexts_dir: Path, context_id: str) -> bool:
    """Extract context `context_id` from the blob store unless it is here already; False
    if it was here, or if the blob store does not have it either (the caller's check then
    names it unknown). The upload is validated again, and must hash to its id."""
    if (contexts_dir / context_id / "files").is_dir():
        return False
    try:
        with blobs.reading(context_blob_key(context_id)) as path:
            body = path.read_bytes()
    except (FileNotFoundError, ValueError):  # ValueError: not a valid key, so no such blob
        return False
    got = store_context(contexts_dir, body)
    if got != context_id:
        raise Internal(f"build context {context_id}: its blob holds {got} instead")
    return True
