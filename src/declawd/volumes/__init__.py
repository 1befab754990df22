"""Volumes: team-owned directory trees, shared by sandboxes and served file by file.

Uploads and sandbox captures are filtered into fresh trees (archives), single files are read
and written with versions (files), sandboxes get a volume as a bind mount or a copy (attach).
Invariants: the host never follows a symlink in a tree (host: `nosymfollow`; tree: no final
component followed), another team's volume is NotFound, the team quota bounds API writes.
"""

from declawd.volumes.attach import (
    Attachment,
    attachment_mounts,
    copy_into_sandbox,
    record_attachments,
    resolve_attachments,
)
from declawd.volumes.files import FileInfo, VolumeFiles
from declawd.volumes.service import BACKEND, VolumeService

__all__ = [
    "BACKEND",
    "Attachment",
    "FileInfo",
    "VolumeFiles",
    "VolumeService",
    "attachment_mounts",
    "copy_into_sandbox",
    "record_attachments",
    "resolve_attachments",
]
