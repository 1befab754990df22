"""Volumes attached at sandbox create: validated up front, then bind-mounted or copied in.

`resolve_attachments` checks the whole list before anything is allocated (400 naming
`volumes[i].<field>`, 404 for a volume the team lacks). Live modes are bind mounts (`mount-ro`
read-only even for root: no CAP_SYS_ADMIN to remount); `copy` streams a tar through envd into
`tar` run as the sandbox user, so no sandbox path is ever resolved on the host.

In cluster mode the API server's host paths mean nothing on a node (the shared blob store may
be mounted elsewhere there): a live mount travels as its volume (`VolumeMount` →
`VolumeMountSpec`, cluster/wire.py) and the node builds the bind mount from its own blob
store and its own nosymfollow guard (`mounts_on_node`); a copied volume travels the same way
and the node copies it in from its own blob store (`copies_on_node`) before the template's
start command, as the single-process server does.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from declawd.blobs import BlobStore
from declawd.config import Settings
from declawd.errors import Internal, InvalidInput, NotFound, Unavailable
from declawd.node.envd_client import EnvdClient, EnvdError
from declawd.runtime import Mount
from declawd.store import Store
from declawd.store.volumes import AttachmentRow
from declawd.volumes import archives, host
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


@dataclass(frozen=True)
class VolumeMount(Mount):
    """A live attachment's bind mount that knows its volume, so cluster mode can send a
    node the volume instead of this host's path."""

    volume_id: str = ""
    subpath: str = ""  # relative to the volume's root; "" for all of it

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


@dataclass(frozen=True)
class VolumeMountSpec:
    """A live attachment as a node receives it: which volume, where, how (no host path)."""

    volume_id: str
    subpath: str  # relative to the volume's root; "" for all of it
    target: str  # canonical mount path inside the sandbox
    read_only: bool


def bind_mount(
    volume_id: str, subpath: str, target: str, source: str, *, read_only: bool
) -> VolumeMount:
    return VolumeMount(
        target,
        source,
        "bind",
        ["bind", "ro" if read_only else "rw", "nosuid", "nodev"],
        volume_id=volume_id,
        subpath=subpath,
    )


def attachment_mounts(atts: Sequence[Attachment]) -> list[Mount]:
    """Bind mounts for the live attachments (`copy` ones are not mounts)."""
    return [
        bind_mount(
            a.volume_id, a.subpath, a.mount_path, str(a.host_path), read_only=a.mode == "mount-ro"
        )
        for a in atts
        if a.live
    ]


VOLUMES = "volumes"


def tree_key(volume_id: str) -> str:
    """The blob-store key of a volume's live tree (VolumeService's `<volumes_dir>/<id>/tree`)."""
    return f"{VOLUMES}/{volume_id}/tree"


def mounts_on_node(
    settings: Settings,
    store: Store,
    blobs: BlobStore,
    team_id: str,
    specs: Sequence[VolumeMountSpec],
) -> list[Mount]:
    """This host's bind mounts for live attachments sent by the control plane (blocking).

    Each source is resolved in this host's blob store, under its volumes directory guarded
    `nosymfollow` on this host (a mount option is per host: the API server's guard does not
    cover the node's runc resolving the source). The volume must be the team's and the
    subpath a directory, checked again here: the node never mounts on the caller's word alone.
    """
    if not specs:
        return []
    try:
        host.protect(blobs.tree(VOLUMES))
    except Exception as exc:
        raise Unavailable(
            f"live mounts are unavailable on node {settings.node_name or settings.node_id}: "
            f"its volumes directory could not be mounted nosymfollow ({exc}); use mode copy"
        ) from exc
    out: list[Mount] = []
    for spec in specs:
        if store.get_volume(spec.volume_id, team_id) is None:
            raise NotFound(f"volume '{spec.volume_id}' not found")
        root = blobs.tree(tree_key(spec.volume_id))
        tree = VolumeTree(root, root.parent / "staging", None)
        sub = "/" + spec.subpath if spec.subpath else "/"
        st = tree.stat(sub)
        if st is None or not st.is_dir:
            raise NotFound(f"volume '{spec.volume_id}' has no directory {sub}")
        out.append(
            bind_mount(
                spec.volume_id, spec.subpath, spec.target, tree.host(sub), read_only=spec.read_only
            )
        )
    return out


def copies_on_node(
    store: Store, blobs: BlobStore, team_id: str, specs: Sequence[VolumeMountSpec]
) -> list[Attachment]:
    """This host's copy attachments for those sent by the control plane (blocking): each
    volume's tree in this host's blob store, the volume checked to be the team's here too.
    The copy itself streams through envd (`copy_into_sandbox`), so no guard is needed."""
    out: list[Attachment] = []
    for spec in specs:
        if store.get_volume(spec.volume_id, team_id) is None:
            raise NotFound(f"volume '{spec.volume_id}' not found")
        root = blobs.tree(tree_key(spec.volume_id))
        out.append(Attachment(spec.volume_id, spec.target, "copy", "", root))
    return out


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
