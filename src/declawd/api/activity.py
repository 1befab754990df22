"""What the API does inside a sandbox, gated and audited: commands checked against the
sandbox's custom policy before they spawn, and command and file events in the audit log.

The gate runs before envd is asked for anything, so a denied command never exists (403,
the message lists every deny message). Audit events (kind `command`, `file`) go to the same
table as the gateway's network and request events, only while the sandbox's
`audit.enabled` holds; a command line has the values of sensitive envs masked
(`env_security.mask_patterns`). Invariant: an audit write that fails is logged, never
fails the call it records; a gate that cannot decide follows `default_deny`, audited.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import Request

from declawd import metrics
from declawd.api.app import services
from declawd.errors import Forbidden
from declawd.guard.cmdgate import check_argv, check_command
from declawd.guard.custom import CustomPolicy, Verdict, parse_custom_policy
from declawd.inspect.model import DEFAULT_MASK_PATTERNS, PLACEHOLDER
from declawd.inspect.policy import is_sensitive
from declawd.store import SandboxRecord

log = logging.getLogger(__name__)
MASK = "***"
CMD_PACKAGE = "declaw.platform.cmd"
MAX_LINE = 4096  # characters of a command line kept in its audit event


def _section(rec: SandboxRecord, name: str) -> Mapping[str, Any]:
    sec = (rec.security or {}).get(name)
    return sec if isinstance(sec, Mapping) else {}


def audit_enabled(rec: SandboxRecord) -> bool:
    return _section(rec, "audit").get("enabled", True) is not False


@functools.lru_cache(maxsize=256)
def _policy(raw: str) -> CustomPolicy | None:
    # Stored policies were validated (and compiled) when they were set: this does not fail.
    return parse_custom_policy(json.loads(raw), "security.custom_policy")[1]


def custom_policy(rec: SandboxRecord) -> CustomPolicy | None:
    sec = _section(rec, "custom_policy")
    if not sec.get("enabled"):
        return None
    return _policy(json.dumps(sec, sort_keys=True))


def masker(rec: SandboxRecord, envs: Mapping[str, str]) -> Sequence[str]:
    """Values to mask in what the audit records: sensitive envs', longest first."""
    env_sec = _section(rec, "env_security")
    if env_sec.get("auto_mask_in_audit") is False:
        return ()
    patterns = env_sec.get("mask_patterns") or list(DEFAULT_MASK_PATTERNS)
    values = {v for k, v in envs.items() if v and v != PLACEHOLDER and is_sensitive(k, patterns)}
    return sorted(values, key=lambda v: (-len(v), v))


def mask(text: str, values: Sequence[str]) -> str:
    for v in values:
        text = text.replace(v, MASK)
    return text


def _sandbox_input(rec: SandboxRecord) -> dict[str, Any]:
    return {
        "id": rec.sandbox_id,
        "template": rec.template_alias or rec.template_id,
        "metadata": dict(rec.metadata),
    }


class CommandGate:
    """One spawn's check and its audit record. `check` raises Forbidden on a deny (after
    recording it); `done(exit_code)` records an allowed command's end."""

    def __init__(
        self,
        request: Request,
        rec: SandboxRecord,
        *,
        line: str | None = None,
        argv: Sequence[str] | None = None,
        user: str,
        envs: Mapping[str, str],
        kind: str,
    ) -> None:
        self._request, self._rec = request, rec
        self._line, self._argv = line, argv
        self._user, self._kind = user, kind
        self._masked = masker(rec, envs)
        self.verdict: Verdict | None = None

    @property
    def shown(self) -> str:
        text = self._line if self._line is not None else " ".join(self._argv or ())
        return mask(text, self._masked)[:MAX_LINE]

    async def check(self) -> None:
        self.verdict = verdict = await self._judge()
        denied = verdict is not None and verdict.denied
        # Counted at the decision (once per spawn asked for), not at the end: a streamed
        # command ends whenever it ends, or never for a client that leaves.
        metrics.command_run(self._kind, "deny" if denied else "allow")
        if verdict is not None and verdict.denied:
            await self._record("deny", reason="custom_policy", exit_code=None)
            raise Forbidden(
                "command denied by custom_policy: " + "; ".join(verdict.messages),
                code="policy_denied",
            )

    async def _judge(self) -> Verdict | None:
        """The custom policy's verdict on this command; None when no policy gates commands."""
        policy = custom_policy(self._rec)
        if policy is None or not policy.has(CMD_PACKAGE):
            return None
        sandbox = _sandbox_input(self._rec)
        if self._line is not None:
            run = functools.partial(
                check_command, policy, self._line, sandbox=sandbox, user=self._user
            )
        else:
            run = functools.partial(
                check_argv, policy, list(self._argv or ()), sandbox=sandbox, user=self._user
            )
        return await asyncio.to_thread(run)

    async def done(self, exit_code: int | None, **extra: Any) -> None:
        await self._record("allow", reason=None, exit_code=exit_code, **extra)

    async def _record(
        self, verdict: str, *, reason: str | None, exit_code: int | None, **extra: Any
    ) -> None:
        detail: dict[str, Any] = {
            "command_line": self.shown,
            "user": self._user,
            "type": self._kind,
            **extra,
        }
        if exit_code is not None:
            detail["exit_code"] = exit_code
        v = self.verdict
        if v is not None:
            detail["policy"] = {
                "verdict": "denied" if v.denied else "allowed",
                "messages": list(v.messages),
                **({"error": v.error} if v.error else {}),
            }
        await record(self._request, self._rec, "command", verdict, reason, detail)


async def record(
    request: Request,
    rec: SandboxRecord,
    kind: str,
    verdict: str,
    reason: str | None,
    detail: Mapping[str, Any],
) -> None:
    """One audit event of the sandbox, when its audit is on; never raises."""
    if not audit_enabled(rec):
        return
    event = {
        "sandbox_id": rec.sandbox_id,
        "kind": kind,
        "verdict": verdict,
        "reason": reason,
        "detail": dict(detail),
    }
    store = services(request).store
    try:
        await asyncio.to_thread(store.insert_audit_events, [event])
    except Exception:  # the call it records went through: losing the event is logged
        log.exception("audit event of %s (%s) not recorded", rec.sandbox_id, kind)


async def file_event(
    request: Request, rec: SandboxRecord, op: str, path: str, size: int | None = None, **extra: Any
) -> None:
    detail: dict[str, Any] = {"operation": op, "path": path, **extra}
    if size is not None:
        detail["bytes"] = size
    await record(request, rec, "file", "allow", None, detail)
