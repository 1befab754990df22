"""Domain errors cross the internal API as the same class, message and code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from declawd import errors
from declawd.cluster.wire import (
    create_to_wire,
    error_body,
    error_from_body,
    sandbox_id_from_wire,
    volume_copies_from_wire,
    volume_mounts_from_wire,
)
from declawd.node.create import CreateRequest
from declawd.runtime import Mount
from declawd.templates.model import Template
from declawd.volumes.attach import Attachment, VolumeMountSpec, bind_mount


def test_errors_round_trip() -> None:
    for exc in (
        errors.NotFound("sandbox 'x' not found"),
        errors.Conflict("paused", code="sandbox_paused"),
        errors.Busy("later", retry_after=3.0),
        errors.InvalidInput("timeout", "must be positive"),
    ):
        back = error_from_body(409, error_body(exc))
        assert type(back) is type(exc)
        assert (back.message, back.code) == (exc.message, exc.code)
    assert error_from_body(409, error_body(errors.Busy("b", retry_after=3.0))).retry_after == 3.0  # type: ignore[attr-defined]
    unknown = error_from_body(500, {"message": "boom", "error": "Nope"})
    assert type(unknown) is errors.Internal and unknown.message == "boom"


# A create's live volumes: data, never a host path -----------------------------------------
VID = "vol-0123456789ab"


def _request(mounts: list[Mount]) -> CreateRequest:
    tpl = Template(
        template_id="tpl-000000000001",
        team_id="",
        alias="base",
        state="ready",
        layer_keys=[],
        layer_paths=[],
    )
    return CreateRequest(
        team_id="team-a", template=tpl, timeout=60, mounts=mounts, sandbox_id="sbx-00000000000a"
    )


def test_live_volumes_travel_as_volume_ids_and_come_back_checked() -> None:
    mounts = [
        bind_mount(VID, "sub/dir", "/mnt/rw", "/cp/blobs/volumes/x/tree/sub/dir", read_only=False),
        bind_mount(VID, "", "/mnt/ro", "/cp/blobs/volumes/x/tree", read_only=True),
    ]
    body = create_to_wire(_request(mounts))
    assert body["sandbox_id"] == "sbx-00000000000a"
    assert body["volumes"] == [
        {"volume_id": VID, "subpath": "sub/dir", "target": "/mnt/rw", "read_only": False},
        {"volume_id": VID, "subpath": "", "target": "/mnt/ro", "read_only": True},
    ]
    assert "/cp/" not in json.dumps(body)  # the API server's paths mean nothing on a node
    assert volume_mounts_from_wire(json.loads(json.dumps(body["volumes"]))) == [
        VolumeMountSpec(VID, "sub/dir", "/mnt/rw", False),
        VolumeMountSpec(VID, "", "/mnt/ro", True),
    ]
    assert sandbox_id_from_wire(body["sandbox_id"]) == "sbx-00000000000a"
    assert sandbox_id_from_wire(None) is None
    assert volume_mounts_from_wire(None) == []


def test_a_mount_that_is_not_a_volume_cannot_be_sent() -> None:
    with pytest.raises(errors.NotSupported, match="only a volume"):
        create_to_wire(_request([Mount("/data", "/srv/host/data")]))


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"volume_id": "../etc"}, "volumes[0].volume_id"),
        ({"volume_id": "sbx-0123456789ab"}, "volumes[0].volume_id"),
        ({"subpath": "../other-volume"}, "volumes[0].subpath"),
        ({"subpath": "/abs"}, "volumes[0].subpath"),
        ({"subpath": "a//b"}, "volumes[0].subpath"),
        ({"target": "/proc/x"}, "volumes[0].target"),
        ({"target": "/data/../etc"}, "volumes[0].target"),
        ({"target": "relative"}, "volumes[0].target"),
        ({"read_only": "yes"}, "volumes[0].read_only"),
    ],
)
def test_a_node_refuses_volumes_it_must_not_mount(item: dict[str, Any], field: str) -> None:
    good = {"volume_id": VID, "subpath": "", "target": "/data", "read_only": False}
    with pytest.raises(errors.InvalidInput) as exc:
        volume_mounts_from_wire([{**good, **item}])
    assert exc.value.field == field


def test_copied_volumes_travel_as_volume_ids_too() -> None:
    """A copy is made by the node that runs the sandbox (before its start command), from its
    own blob store: only the volume and the target cross."""
    req = _request([])
    req.copies = [Attachment(VID, "/home/user/data", "copy", "", Path("/cp/blobs/x/tree"))]
    body = create_to_wire(req)
    assert body["copies"] == [{"volume_id": VID, "target": "/home/user/data"}]
    assert "/cp/" not in json.dumps(body)
    assert volume_copies_from_wire(json.loads(json.dumps(body["copies"]))) == [
        VolumeMountSpec(VID, "", "/home/user/data", False)
    ]
    assert volume_copies_from_wire(None) == []
    for item, field in (
        ({"volume_id": "../etc"}, "copies[0].volume_id"),
        ({"target": "/sys/x"}, "copies[0].target"),
        ({"target": "a/b"}, "copies[0].target"),
    ):
        with pytest.raises(errors.InvalidInput) as exc:
            volume_copies_from_wire([{"volume_id": VID, "target": "/data", **item}])
        assert exc.value.field == field
    with pytest.raises(errors.InvalidInput) as exc:
        volume_copies_from_wire({"volume_id": VID})
    assert exc.value.field == "copies"


@pytest.mark.parametrize("raw", ["sbx-1", "../x", 5, "vol-0123456789ab"])
def test_a_chosen_sandbox_id_has_the_record_shape(raw: object) -> None:
    with pytest.raises(errors.InvalidInput):
        sandbox_id_from_wire(raw)
