"""The internal APIs' JSON: domain errors both ways, and a create request (pure).

A node answers a domain error as `{"message", "code", "error": <class name>}`; the
control plane raises the same `declawd.errors` class with the same message, so a route
answers exactly what it would in the single-process server.

A create's live volumes travel as data, never as a host path (the shared blob store may be
mounted at another path on each host): `"volumes": [{"volume_id", "subpath", "target",
"read_only"}]`, and the node resolves each in its own blob store (volumes/attach.py). With
live volumes the control plane chooses the id (`"sandbox_id"`, else null) so their
attachments are recorded before the node mounts them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from declawd import errors
from declawd.egress.policy import EgressPolicy
from declawd.inspect.model import VaultBinding
from declawd.node.create import CreateRequest
from declawd.runtime import Mount
from declawd.volumes.attach import MAX_ATTACHMENTS, VolumeMount, VolumeMountSpec
from declawd.volumes.paths import mount_path, volume_path

# The record id shape (store/records.py `new_id`).
_SANDBOX_ID = re.compile(r"sbx-[0-9a-f]{12}")
_VOLUME_ID = re.compile(r"vol-[0-9a-f]{12}")

_ERRORS: dict[str, type[errors.DeclawdError]] = {
    cls.__name__: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.DeclawdError)
}


def error_body(exc: errors.DeclawdError) -> dict[str, Any]:
    body: dict[str, Any] = {"message": exc.message, "code": exc.code, "error": type(exc).__name__}
    if isinstance(exc, errors.Busy):
        body["retry_after"] = exc.retry_after
    return body


def error_from_body(status: int, body: Mapping[str, Any]) -> errors.DeclawdError:
    cls = _ERRORS.get(str(body.get("error") or ""), errors.Internal)
    message = str(body.get("message") or f"node answered HTTP {status}")
    # Built through the base initializer: subclasses' own signatures differ (InvalidInput).
    exc = cls.__new__(cls)
    errors.DeclawdError.__init__(exc, message, code=str(body.get("code") or ""))
    if isinstance(exc, errors.Busy):
        exc.retry_after = float(body.get("retry_after") or 1.0)
    return exc


def create_to_wire(req: CreateRequest) -> dict[str, Any]:
    """What a node needs to make the sandbox `req` asks for (the template by id)."""
    return {
        "team_id": req.team_id,
        "template_id": req.template.template_id,
        "timeout": req.timeout,
        "metadata": dict(req.metadata),
        "envs": dict(req.envs),
        "network": req.policy.to_wire() if req.policy is not None else None,
        "security": dict(req.security) if req.security is not None else None,
        "runtime": req.runtime,
        "lifecycle": dict(req.lifecycle),
        "vault": [b.to_wire() for b in req.vault],
        "sandbox_id": req.sandbox_id,
        "volumes": volume_mounts_to_wire(req.mounts),
        "copies": [{"volume_id": a.volume_id, "target": a.mount_path} for a in req.copies],
    }


def volume_mounts_to_wire(mounts: Sequence[Mount]) -> list[dict[str, Any]]:
    """A create's live volumes as data; any other mount (a host path) cannot be sent."""
    out: list[dict[str, Any]] = []
    for m in mounts:
        if not isinstance(m, VolumeMount) or not m.volume_id:
            raise errors.NotSupported(
                f"mount {m.destination}: only a volume can be mounted on another node"
            )
        out.append(
            {
                "volume_id": m.volume_id,
                "subpath": m.subpath,
                "target": m.destination,
                "read_only": m.read_only,
            }
        )
    return out


def _volume_items(raw: object, name: str) -> list[tuple[str, dict[str, Any], str, str]]:
    """A list of volume attachments as a node receives it, each item's common fields
    checked (InvalidInput naming `<name>[i].<field>`): (label, item, volume id, target)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise errors.InvalidInput(name, "must be an array")
    if len(raw) > MAX_ATTACHMENTS:
        raise errors.InvalidInput(name, f"at most {MAX_ATTACHMENTS} attachments")
    out: list[tuple[str, dict[str, Any], str, str]] = []
    for i, item in enumerate(raw):
        label = f"{name}[{i}]"
        if not isinstance(item, dict):
            raise errors.InvalidInput(label, "must be an object")
        volume_id = item.get("volume_id")
        if not isinstance(volume_id, str) or not _VOLUME_ID.fullmatch(volume_id):
            raise errors.InvalidInput(f"{label}.volume_id", "must be a volume id")
        target = item.get("target")
        if mount_path(target, f"{label}.target") != target:
            raise errors.InvalidInput(f"{label}.target", f"not a canonical path: {target!r}")
        out.append((label, item, volume_id, str(target)))
    return out


def volume_mounts_from_wire(raw: object) -> list[VolumeMountSpec]:
    """The node's side, checked whole (InvalidInput naming `volumes[i].<field>`): ids of
    the record shape, a subpath that stays inside its volume, a mount path a sandbox may
    have (volumes/paths.py), a boolean `read_only`."""
    out: list[VolumeMountSpec] = []
    for label, item, volume_id, target in _volume_items(raw, "volumes"):
        sub = item.get("subpath") or ""
        if not isinstance(sub, str):
            raise errors.InvalidInput(f"{label}.subpath", "must be a string")
        if sub and volume_path(sub, f"{label}.subpath") != "/" + sub:
            raise errors.InvalidInput(f"{label}.subpath", f"not a canonical relative path: {sub!r}")
        read_only = item.get("read_only")
        if not isinstance(read_only, bool):
            raise errors.InvalidInput(f"{label}.read_only", "must be a boolean")
        out.append(VolumeMountSpec(volume_id, sub, target, read_only))
    return out


def volume_copies_from_wire(raw: object) -> list[VolumeMountSpec]:
    """The volumes a create copies in (mode `copy`: the whole volume, no subpath), checked
    as mounts are (InvalidInput naming `copies[i].<field>`); read-only does not apply."""
    return [
        VolumeMountSpec(volume_id, "", target, False)
        for _, _, volume_id, target in _volume_items(raw, "copies")
    ]


def sandbox_id_from_wire(raw: object) -> str | None:
    """A sandbox id chosen by the control plane, or None (the node chooses)."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not _SANDBOX_ID.fullmatch(raw):
        raise errors.InvalidInput("sandbox_id", "must be a sandbox id")
    return raw


def policy_from_wire(raw: Mapping[str, Any] | None) -> EgressPolicy | None:
    return EgressPolicy.from_wire(dict(raw)) if raw is not None else None


def vault_from_wire(raw: list[Mapping[str, Any]]) -> tuple[VaultBinding, ...]:
    return tuple(VaultBinding.from_wire(b) for b in raw)
