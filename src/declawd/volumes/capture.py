"""Volumes made from a running sandbox: `snapshot` (any path) and `commit` (an attachment).

The sandbox packs the path itself (`tar` run by envd as root inside), so the host never
resolves a sandbox path; the stream is spooled on the host (bounded by the quota) and goes
through the upload filter. Invariant: all or nothing: a gap in the output's sequence numbers
(envd dropped what was not read in time) or a failing tar fails the capture.
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
import shlex
import tempfile
from pathlib import Path

from declawd.errors import Internal, InvalidInput, NotFound
from declawd.node.envd_client import EnvdClient, EnvdNotFound
from declawd.store.volumes import VolumeRecord
from declawd.volumes import archives
from declawd.volumes.archives import ArchiveReport
from declawd.volumes.paths import KERNEL_PATHS, components, is_within
from declawd.volumes.service import ARCHIVE_OVERHEAD, VolumeService
from declawd.volumes.tree import write_all

log = logging.getLogger(__name__)

DEFAULT_NAME = "snapshot"
_STDERR_KEPT = 4000
# GNU tar exits 1 when a file changed while it was read: the archive is still whole.
_TAR_OK = (0, 1)


def sandbox_path(raw: object, label: str = "path") -> str:
    if not isinstance(raw, str) or not raw:
        raise InvalidInput(label, "is required")
    if not raw.startswith("/"):
        raise InvalidInput(label, f"must be an absolute path, got {raw!r}")
    path = "/" + "/".join(components(raw, label))
    for top in KERNEL_PATHS:
        if is_within(path, top):
            raise InvalidInput(label, f"{path} is under {top}, which holds no files to keep")
    return path


async def snapshot(
    service: VolumeService, team_id: str, client: EnvdClient, raw_path: object, name: str | None
) -> tuple[VolumeRecord, ArchiveReport]:
    """A new volume holding what is at `raw_path` in the sandbox now (a directory's content,
    or a single file at the volume's root)."""
    path = sandbox_path(raw_path)
    try:
        entry = await client.stat(path, "root")
    except EnvdNotFound as exc:
        raise NotFound(f"path: not found in the sandbox: {path}") from exc
    if entry.type == "dir":
        cmd = f"tar -c -f - -C {shlex.quote(path)} ."
    else:
        parent, base = posixpath.split(path)
        cmd = f"tar -c -f - -C {shlex.quote(parent or '/')} {shlex.quote(base)}"
    limit = await service.allowance(team_id) + ARCHIVE_OVERHEAD
    spool = await _spool_command(service, client, cmd, limit)
    try:
        reports: list[ArchiveReport] = []

        def fill(target: Path, max_bytes: int) -> ArchiveReport:
            with open(spool, "rb") as f:
                report = archives.extract(f, target, max_bytes=max_bytes, owner=service.owner)
            reports.append(report)
            return report

        rec = await service.create_from(team_id, name or DEFAULT_NAME, fill)
        return rec, reports[0]
    finally:
        spool.unlink(missing_ok=True)


async def commit(
    service: VolumeService,
    team_id: str,
    sandbox_id: str,
    client: EnvdClient,
    volume_id: str,
    name: str | None,
) -> tuple[VolumeRecord, ArchiveReport]:
    """A new volume holding what the sandbox has at the path it attached `volume_id` to;
    the source volume is left as it is (the SDK's contract)."""
    source = await service.require(team_id, volume_id)
    attached = [
        a
        for a in await asyncio.to_thread(service.store.attachments_of, sandbox_id)
        if a.volume_id == volume_id
    ]
    if not attached:
        raise NotFound(f"volume '{volume_id}' is not attached to sandbox '{sandbox_id}'")
    return await snapshot(
        service, team_id, client, attached[0].mount_path, name or f"{source.name}-commit"
    )


async def _spool_command(service: VolumeService, client: EnvdClient, cmd: str, limit: int) -> Path:
    """Run `cmd` as root in the sandbox and write its whole stdout to a host temp file."""
    incoming = service.root / ".incoming"
    await asyncio.to_thread(incoming.mkdir, mode=0o700, parents=True, exist_ok=True)
    fd, name = await asyncio.to_thread(tempfile.mkstemp, dir=incoming, prefix="cap-")
    spool = Path(name)
    pid: int | None = None
    try:
        pid = await client.start(cmd, user="root")
        stderr = b""
        expected, written, exit_code = 1, 0, None
        async for ev in client.events(pid, since=0):
            if ev.seq != expected:
                raise Internal("capture: the sandbox's output was cut short (a gap); retry")
            expected = ev.seq + 1
            if ev.type == "stdout":
                written += len(ev.data)
                if written > limit:
                    raise service.too_large("snapshot")
                await asyncio.to_thread(write_all, fd, ev.data)
            elif ev.type == "stderr":
                stderr = (stderr + ev.data)[-_STDERR_KEPT:]
            elif ev.type == "exit":
                exit_code = ev.exit_code
        if exit_code not in _TAR_OK:
            detail = stderr.decode(errors="replace").strip() or "no message"
            raise Internal(f"capture: tar in the sandbox exited {exit_code}: {detail}")
        pid = None
        return spool
    except BaseException:
        spool.unlink(missing_ok=True)
        if pid is not None:
            try:
                await client.signal(pid, 9)
            except Exception as exc:  # the sandbox may be gone; the capture failed anyway
                log.info("capture: could not stop tar (pid %s): %s", pid, exc)
        raise
    finally:
        os.close(fd)
