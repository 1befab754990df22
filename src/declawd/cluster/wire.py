"""The internal APIs' JSON: domain errors both ways, and a create request (pure).

A node answers a domain error as `{"message", "code", "error": <class name>}`; the
control plane raises the same `declawd.errors` class with the same message, so a route
answers exactly what it would in the single-process server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from declawd import errors
from declawd.egress.policy import EgressPolicy
from declawd.inspect.model import VaultBinding
from declawd.node.create import CreateRequest

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
    }


def policy_from_wire(raw: Mapping[str, Any] | None) -> EgressPolicy | None:
    return EgressPolicy.from_wire(dict(raw)) if raw is not None else None


def vault_from_wire(raw: list[Mapping[str, Any]]) -> tuple[VaultBinding, ...]:
    return tuple(VaultBinding.from_wire(b) for b in raw)
