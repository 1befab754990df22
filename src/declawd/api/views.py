"""How a sandbox record looks on the wire (declaw-api.md §2.3, plus the fields peers show).

Pure functions of a `SandboxRecord` (and its `TrafficAccess`, the ports options). The state
is always one the SDK's `SandboxState` parses; environment values whose names match the
sandbox's `env_security.mask_patterns` (the SDK's defaults when it sent none) read `***`,
as `SecureEnvVar.to_safe_dict` does. `traffic_access_token` is in the answers of create and
connect only (the SDK reads it there), never in a list.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from declawd.errors import DeclawdError
from declawd.inspect.model import DEFAULT_MASK_PATTERNS
from declawd.inspect.policy import parse_security
from declawd.store import SandboxRecord, TrafficAccess

MASK = "***"


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat()


def mask_patterns(security: Mapping[str, Any] | None) -> Sequence[str]:
    env_security = (security or {}).get("env_security")
    if isinstance(env_security, Mapping):
        patterns = env_security.get("mask_patterns")
        if isinstance(patterns, list) and all(isinstance(p, str) for p in patterns):
            return patterns
    return DEFAULT_MASK_PATTERNS


def is_sensitive(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(name.upper(), p) for p in patterns)


def masked_envs(envs: Mapping[str, str], security: Mapping[str, Any] | None) -> dict[str, str]:
    patterns = mask_patterns(security)
    return {k: MASK if is_sensitive(k, patterns) else v for k, v in envs.items()}


def sandbox_view(
    rec: SandboxRecord, traffic: TrafficAccess | None = None, *, with_token: bool = False
) -> dict[str, Any]:
    """`with_token`: the answer of create or connect, which carries the traffic access
    token (null for a sandbox created with allow_public_traffic=false)."""
    view = {
        "sandbox_id": rec.sandbox_id,
        "template_id": rec.template_id,
        "name": rec.template_alias,
        "alias": rec.template_alias,
        "metadata": dict(rec.metadata),
        "started_at": iso(rec.started_at or rec.created_at),
        "end_at": iso(rec.end_at),
        "timeout": rec.timeout,
        "state": rec.state.value,
        "cpu_count": rec.cpu_count,
        "memory_mb": rec.memory_mb,
        "runtime": rec.runtime,
        "envs": masked_envs(rec.envs, rec.security),
        "network": {**rec.network, **(traffic.network_view() if traffic else {})},
        "security": security_view(rec) if rec.security is not None else None,
    }
    if with_token:
        view["traffic_access_token"] = traffic.token if traffic else None
    return view


def security_view(rec: SandboxRecord) -> dict[str, Any]:
    """The record's policy as `SecurityPolicy.to_dict()` would write it (pure)."""
    stored = {k: v for k, v in (rec.security or {}).items() if k != "network"}
    try:
        policy = parse_security(stored).to_dict()
    except DeclawdError:
        # A record from before this policy was validated on create: shown as it was sent.
        policy = stored
    # The SDK's NetworkPolicy.to_dict(): empty lists left out, no key for an open policy.
    network = {k: list(v) for k, v in rec.network.items() if v}
    if network:
        policy["network"] = network
    return policy
