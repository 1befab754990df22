"""Attaching volumes at create: validation of the `volumes` list, mounts, attachment rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from declawd.config import Settings
from declawd.errors import InvalidInput, NotFound, Unavailable
from declawd.store import SandboxRecord, SandboxState, Store
from declawd.volumes import attachment_mounts, record_attachments, resolve_attachments
from declawd.volumes.service import VolumeService


def insert_sandbox(store: Store, sandbox_id: str, team_id: str) -> None:
    store.insert_sandbox(
        SandboxRecord(
            sandbox_id=sandbox_id,
            team_id=team_id,
            state=SandboxState.RUNNING,
            template_id="tpl-base",
            template_alias="base",
            runtime="runc",
            created_at=1.0,
            timeout=300,
        )
    )


@pytest.fixture
def store(db_target: Path | str) -> Iterator[Store]:
    with Store(db_target) as s:
        yield s


@pytest.fixture
async def svc(tmp_path: Path, store: Store) -> VolumeService:
    s = VolumeService(Settings(state_dir=tmp_path / "state"), store, owner=None, guard=False)
    await s.start()
    s.live_mounts = True  # as on a node whose volumes dir is guarded
    return s


async def _vid(svc: VolumeService, team: str = "team-a") -> str:
    rec, _ = await svc.create(team, "v", None)
    (Path(svc.tree(rec.volume_id).host("/")) / "sub" / "dir").mkdir(parents=True)
    (Path(svc.tree(rec.volume_id).host("/")) / "file").write_text("x")
    return rec.volume_id


async def _resolve(svc: VolumeService, *items: dict[str, Any]) -> Any:
    return await resolve_attachments(svc, "team-a", list(items))


async def test_modes_subpath_and_host_paths(svc: VolumeService) -> None:
    vid = await _vid(svc)
    atts = await _resolve(
        svc,
        {"volume_id": vid, "mount_path": "/data/"},
        {"volume_id": vid, "mount_path": "/mnt/rw", "mode": "mount", "subpath": "sub/dir"},
        {"volume_id": vid, "mount_path": "/mnt/ro", "mode": "mount-ro"},
    )
    tree = Path(svc.tree(vid).host("/"))
    assert [(a.mount_path, a.mode, a.subpath, a.host_path) for a in atts] == [
        ("/data", "copy", "", tree),
        ("/mnt/rw", "mount", "sub/dir", tree / "sub" / "dir"),
        ("/mnt/ro", "mount-ro", "", tree),
    ]
    mounts = attachment_mounts(atts)
    assert [(m.destination, m.source, m.type, m.options) for m in mounts] == [
        ("/mnt/rw", str(tree / "sub" / "dir"), "bind", ["bind", "rw", "nosuid", "nodev"]),
        ("/mnt/ro", str(tree), "bind", ["bind", "ro", "nosuid", "nodev"]),
    ]


@pytest.mark.parametrize(
    ("item", "field", "reason"),
    [
        ({"mount_path": "/proc/x"}, "volumes[0].mount_path", "under /proc"),
        ({"mount_path": "/sys"}, "volumes[0].mount_path", "under /sys"),
        ({"mount_path": "/dev/shm/v"}, "volumes[0].mount_path", "under /dev"),
        ({"mount_path": "/"}, "volumes[0].mount_path", "system directory"),
        ({"mount_path": "/etc"}, "volumes[0].mount_path", "system directory"),
        ({"mount_path": "data"}, "volumes[0].mount_path", "must be an absolute path"),
        ({"mount_path": "/data/../proc"}, "volumes[0].mount_path", "'..'"),
        ({"mount_path": "/opt"}, "volumes[0].mount_path", "/opt/declawd"),
        ({"mount_path": "/run/declawd/x"}, "volumes[0].mount_path", "platform mounts"),
        ({"mount_path": None}, "volumes[0].mount_path", "is required"),
        ({"mode": "rw"}, "volumes[0].mode", "must be one of"),
        ({"subpath": "sub"}, "volumes[0].subpath", "live mounts only"),
        ({"mode": "mount", "subpath": "../x"}, "volumes[0].subpath", "'..'"),
        ({"mode": "mount", "subpath": "nope"}, "volumes[0].subpath", "no directory /nope"),
        ({"mode": "mount", "subpath": "file"}, "volumes[0].subpath", "no directory /file"),
        ({"volume_id": ""}, "volumes[0].volume_id", "is required"),
    ],
)
async def test_bad_attachments_name_the_field(
    svc: VolumeService, item: dict[str, Any], field: str, reason: str
) -> None:
    vid = await _vid(svc)
    body = {"volume_id": vid, "mount_path": "/data", **item}
    with pytest.raises(InvalidInput) as exc:
        await _resolve(svc, body)
    assert exc.value.field == field
    assert reason in exc.value.reason


async def test_overlapping_mount_paths_are_refused(svc: VolumeService) -> None:
    vid = await _vid(svc)
    with pytest.raises(InvalidInput) as exc:
        await _resolve(
            svc,
            {"volume_id": vid, "mount_path": "/data"},
            {"volume_id": vid, "mount_path": "/data/inner", "mode": "mount"},
        )
    assert exc.value.field == "volumes[1].mount_path"


async def test_unknown_or_other_teams_volume_is_not_found(svc: VolumeService) -> None:
    theirs = await _vid(svc, "team-b")
    with pytest.raises(NotFound, match=rf"volumes\[0\].volume_id: volume '{theirs}' not found"):
        await _resolve(svc, {"volume_id": theirs, "mount_path": "/data"})
    with pytest.raises(NotFound, match="vol-000000000000"):
        await _resolve(svc, {"volume_id": "vol-000000000000", "mount_path": "/data"})


async def test_shapes(svc: VolumeService) -> None:
    assert await resolve_attachments(svc, "team-a", None) == []
    with pytest.raises(InvalidInput, match="volumes: must be an array"):
        await resolve_attachments(svc, "team-a", {"volume_id": "x"})
    with pytest.raises(InvalidInput, match=r"volumes\[0\]: must be an object"):
        await resolve_attachments(svc, "team-a", ["vol-1"])


async def test_live_mounts_need_the_guard(svc: VolumeService) -> None:
    vid = await _vid(svc)
    svc.live_mounts = False
    with pytest.raises(Unavailable, match="live mounts are unavailable"):
        await _resolve(svc, {"volume_id": vid, "mount_path": "/data", "mode": "mount"})
    assert len(await _resolve(svc, {"volume_id": vid, "mount_path": "/data"})) == 1


async def test_recorded_attachments_feed_commit_and_the_delete_guard(
    svc: VolumeService, store: Store
) -> None:
    vid = await _vid(svc)
    insert_sandbox(store, "sbx-000000000002", "team-a")
    atts = await _resolve(
        svc,
        {"volume_id": vid, "mount_path": "/copy"},
        {"volume_id": vid, "mount_path": "/live", "mode": "mount", "subpath": "sub"},
    )
    await record_attachments(svc, "sbx-000000000002", atts)
    assert [
        (a.mount_path, a.mode, a.subpath) for a in store.attachments_of("sbx-000000000002")
    ] == [
        ("/copy", "copy", ""),
        ("/live", "mount", "sub"),
    ]
    assert [a.mount_path for a in store.live_mounts_of(vid)] == ["/live"]
    assert store.rw_mounted_volumes("team-a") == {vid}
    assert store.rw_mounted_volumes("team-b") == set()
