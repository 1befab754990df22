"""Volumes attached at sandbox create: validated up front, then bind-mounted or copied in.

`resolve_attachments` checks the whole list before anything is allocated (400 naming
`volumes[i].<field>`, 404 for a volume the team lacks). Live modes are bind mounts (`mount-ro`
read-only even for root: no CAP_SYS_ADMIN to remount); `copy` streams a tar through envd into
`tar` run as the sandbox user, so no sandbox path is ever resolved on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from declawd.errors import Internal, InvalidInput, Unavailable
from declawd.node.envd_client import EnvdClient, EnvdError
from declawd.runtime import Mount
from declawd.store.volumes import AttachmentRow
from declawd.volumes import archives
from declawd.volumes.paths import is_within, mount_path, volume_path
from declawd.volumes.service import VolumeService
from declawd.volumes.tree import CHUNK, VolumeTree

MODES = ("copy", "mount", "mount-ro")
MAX_ATTACHMENTS = 16
_PREPARE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Attachment:
    volume_id: str
    mount_path: str  # canonical, absolute, inside the sandbox
    mode: str  # copy | mount | mount-ro
    subpath: str  # relative to the volume root; "" for the whole volume
    host_path: Path  # the directory on the host that is mounted or copied

    @property
    def live(self) -> bool:
        return self.mode != "copy"


async def resolve_attachments(
    volumes_service: VolumeService, team_id: str, raw: object
) -> list[Attachment]:
    """The create body's `volumes`, checked whole: shapes, modes, mount paths (no kernel,
    system or platform path, no two that overlap), `subpath` (live mounts only, an existing
    directory), and that each volume is the team's."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidInput("volumes", "must be an array")
    if len(raw) > MAX_ATTACHMENTS:
        raise InvalidInput("volumes", f"at most {MAX_ATTACHMENTS} attachments")
    out: list[Attachment] = []
    for i, item in enumerate(raw):
        label = f"volumes[{i}]"
        if not isinstance(item, dict):
            raise InvalidInput(label, "must be an object")
        volume_id = item.get("volume_id")
        if not isinstance(volume_id, str) or not volume_id:
            raise InvalidInput(f"{label}.volume_id", "is required")
        target = mount_path(item.get("mount_path"), f"{label}.mount_path")
        mode = item.get("mode") or "copy"
        if mode not in MODES:
            raise InvalidInput(f"{label}.mode", f"must be one of {', '.join(MODES)}")
        sub = "/"
        if item.get("subpath") not in (None, ""):
            if mode == "copy":
                raise InvalidInput(
                    f"{label}.subpath", "is for live mounts only (mode mount or mount-ro)"
                )
            if not isinstance(item["subpath"], str):
                raise InvalidInput(f"{label}.subpath", "must be a string")
            sub = volume_path(item["subpath"], f"{label}.subpath")
        for j, earlier in enumerate(out):
            if is_within(target, earlier.mount_path) or is_within(earlier.mount_path, target):
                raise InvalidInput(
                    f"{label}.mount_path", f"{target} overlaps volumes[{j}].mount_path"
                )
        await volumes_service.require(team_id, volume_id, label=f"{label}.volume_id")
        if mode != "copy" and not volumes_service.live_mounts:
            raise Unavailable(
                f"{label}.mode: live mounts are unavailable on this node (its volumes "
                "directory could not be mounted nosymfollow); use mode copy"
            )
        tree = volumes_service.tree(volume_id)
        if sub != "/":
            st = await asyncio.to_thread(tree.stat, sub)
            if st is None or not st.is_dir:
                raise InvalidInput(
                    f"{label}.subpath", f"no directory {sub} in volume '{volume_id}'"
                )
        out.append(Attachment(volume_id, target, mode, sub.lstrip("/"), Path(tree.host(sub))))
    return out


def attachment_mounts(atts: Sequence[Attachment]) -> list[Mount]:
    """Bind mounts for the live attachments (`copy` ones are not mounts)."""
    return [
        Mount(
            a.mount_path,
            str(a.host_path),
            "bind",
            ["bind", "ro" if a.mode == "mount-ro" else "rw", "nosuid", "nodev"],
        )
        for a in atts
        if a.live
    ]


async def record_attachments(
    volumes_service: VolumeService, sandbox_id: str, atts: Sequence[Attachment]
) -> None:
    """Remember what the sandbox attached: `commit` finds the path there, and a volume a
    sandbox mounts live cannot be deleted under it."""
    rows = [AttachmentRow(sandbox_id, a.volume_id, a.mount_path, a.mode, a.subpath) for a in atts]
    await asyncio.to_thread(volumes_service.store.record_attachments, sandbox_id, rows)


async def copy_into_sandbox(client: EnvdClient, att: Attachment, user: str) -> None:
    """Materialise a `copy` attachment: the volume's files under `att.mount_path`, owned by
    `user`. Missing directories are made by root; the mount path itself is given to the
    user when it is new or empty, so the user's `tar` can write into it."""
    where = shlex.quote(att.mount_path)
    prepare = f"mkdir -p -- {where}"
    if user != "root":
        who = shlex.quote(user)
        prepare += f' && if [ -z "$(ls -A -- {where})" ]; then chown -- {who}: {where}; fi'
    done = await client.run(prepare, user="root", timeout=_PREPARE_TIMEOUT_S)
    if done.exit_code != 0:
        raise Internal(
            f"volume {att.volume_id}: cannot prepare {att.mount_path} in the sandbox: "
            f"{done.stderr.decode(errors='replace').strip()}"
        )
    tree = VolumeTree(att.host_path, att.host_path.parent / "staging", None)
    pid = await client.start(f"tar -x -o -f - -C {where}", user=user, keep_stdin=True)
    try:
        async for chunk in archives.tar_chunks(tree, compress=False):
            for at in range(0, len(chunk), CHUNK):
                await client.send_stdin(pid, chunk[at : at + CHUNK])
    except EnvdError:
        pass  # tar stopped reading (it failed): its exit status and stderr say why
    except BaseException:
        await client.signal(pid, 9)
        raise
    with contextlib.suppress(EnvdError):  # only when a tar that exited closed it already
        await client.close_stdin(pid)
    result = await client.wait(pid)
    if result.exit_code != 0:
        raise Internal(
            f"volume {att.volume_id}: copying into {att.mount_path} failed: "
            f"{result.stderr.decode(errors='replace').strip()[:2000]}"
        )
