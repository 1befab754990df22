"""Typed client for declawd's own extension routes (declaw-api.md §11.4); the official `declaw`
SDK covers everything else (sandboxes, commands, files, templates build).

Connection settings follow the SDK exactly (env DECLAW_API_KEY / DECLAW_DOMAIN, http unless the
port is 443) so one environment drives both. Every non-2xx answer becomes a `DeclawdError`
subclass chosen by status; paged and streamed routes are exposed as plain iterators.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TypedDict

import httpx
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AsyncDeclawdClient",
    "AuditEvent",
    "BadRequest",
    "Conflict",
    "DeclawdClient",
    "DeclawdError",
    "FilesystemEvent",
    "NetworkPolicyModel",
    "NotFound",
    "NotImplementedYet",
    "PayloadTooLarge",
    "ServerError",
    "SseDecoder",
    "SupportsToDict",
    "TemplateInfo",
    "TransportError",
    "Unauthorized",
    "base_url",
]

DEFAULT_DOMAIN = "api.declaw.ai"
DEFAULT_TIMEOUT = 30.0


# --- errors -------------------------------------------------------------------------------


class DeclawdError(Exception):
    """Any failed call. `status` is the HTTP status (0 when no response arrived), `message`
    the server's `message`, `code` its machine-readable `code` ("" when absent).

    Subclasses by status: 400/422 BadRequest, 401/403 Unauthorized, 404 NotFound,
    409 Conflict, 413 PayloadTooLarge, 501 NotImplementedYet, other 5xx ServerError;
    transport failures (refused, timeout) TransportError.
    """

    def __init__(self, status: int, message: str, code: str = "") -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message
        self.code = code


class BadRequest(DeclawdError):
    pass


class Unauthorized(DeclawdError):
    pass


class NotFound(DeclawdError):
    pass


class Conflict(DeclawdError):
    pass


class PayloadTooLarge(DeclawdError):
    pass


class NotImplementedYet(DeclawdError):
    pass


class ServerError(DeclawdError):
    pass


class TransportError(DeclawdError):
    pass


_BY_STATUS: dict[int, type[DeclawdError]] = {
    400: BadRequest,
    422: BadRequest,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    501: NotImplementedYet,
}


def error_for(status: int, body: bytes) -> DeclawdError:
    """The exception for a non-2xx answer (pure: status + raw body)."""
    message, code = body.decode(errors="replace"), ""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        message = str(parsed.get("message") or parsed.get("error") or message)
        code = parsed["code"] if isinstance(parsed.get("code"), str) else ""
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else DeclawdError)
    return cls(status, message, code)


# --- models -------------------------------------------------------------------------------


class NetworkPolicyModel(BaseModel):
    allow_out: list[str] = Field(default_factory=list)
    deny_out: list[str] = Field(default_factory=list)


class AuditEvent(BaseModel):
    """One audit event. `http` events (an inspected request) also carry the SDK's
    `AuditEntry` fields (`timestamp` ... `direction`) and ours (`vault_injections`,
    `bytes_out`, `bytes_in`); other kinds leave them None."""

    model_config = ConfigDict(extra="allow")

    time: datetime
    sandbox_id: str
    kind: Literal["dns", "connection", "http", "command", "file"] | str
    verdict: Literal["allow", "deny"] | str
    reason: str | None = None
    name: str | None = None
    address: str | None = None
    port: int | None = None
    protocol: str | None = None
    timestamp: datetime | None = None
    method: str | None = None
    url: str | None = None
    status_code: int | None = None
    direction: str | None = None
    pii_redactions: int | None = None
    injection_blocks: int | None = None
    transformations_applied: int | None = None
    vault_injections: int | None = None
    bytes_out: int | None = None
    bytes_in: int | None = None


class SupportsToDict(Protocol):
    """The SDK's `SecurityPolicy` (anything with its `to_dict()`)."""

    def to_dict(self) -> dict[str, Any]: ...


class TemplateInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    template_id: str
    alias: str | None = None
    state: str
    builtin: bool = False
    size_bytes: int = 0
    build_seconds: float | None = None


class FilesystemEvent(TypedDict):
    type: str
    path: str
    timestamp: Any


# --- pure helpers -------------------------------------------------------------------------


def base_url(domain: str) -> str:
    """The SDK's base-URL rule (declaw-api.md §1.1): split a port off at the last colon,
    https only when the port is 443, and the port always written."""
    port = 443
    head, sep, tail = domain.rpartition(":")
    if sep and tail.isdigit():
        domain, port = head, int(tail)
    scheme = "https" if port == 443 else "http"
    return f"{scheme}://{domain}:{port}"


class SseDecoder:
    """Server-sent events, line by line: `feed(line)` returns (event, data) when a blank
    line completes an event that carried data, else None."""

    def __init__(self) -> None:
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> tuple[str | None, str] | None:
        line = line.rstrip("\r\n")
        if not line:
            out = (self._event, "\n".join(self._data)) if self._data else None
            self._event, self._data = None, []
            return out
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        return None


def tar_gz_directory(directory: Path) -> bytes:
    """A build context: the directory's contents (not the directory itself) as tar.gz."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for child in sorted(directory.iterdir()):
            tar.add(child, arcname=child.name)
    return buf.getvalue()


def _audit_params(
    since: datetime | float | str | None,
    until: datetime | float | str | None,
    verdict: str | None,
    kind: str | None,
    limit: int | None,
) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, value in (("since", since), ("until", until)):
        if isinstance(value, datetime):
            params[key] = value.isoformat()
        elif value is not None:
            params[key] = str(value)
    if verdict:
        params["verdict"] = verdict
    if kind:
        params["kind"] = kind
    if limit:
        params["limit"] = str(limit)
    return params


def _policy_body(policy: Mapping[str, Any] | SupportsToDict) -> dict[str, Any]:
    """A PUT /security body: a SecurityPolicy's `to_dict()`, or the dict itself."""
    if isinstance(policy, Mapping):
        return dict(policy)
    return dict(policy.to_dict())


def _context_body(context: bytes | str | Path) -> bytes:
    if isinstance(context, bytes):
        return context
    path = Path(context)
    if not path.is_dir():
        raise ValueError(f"build context must be tar.gz bytes or a directory: {path}")
    return tar_gz_directory(path)


class _Config:
    def __init__(
        self, api_key: str | None, domain: str | None, api_url: str | None, timeout: float
    ) -> None:
        self.api_key = api_key or os.environ.get("DECLAW_API_KEY", "")
        self.base_url = api_url or base_url(
            domain or os.environ.get("DECLAW_DOMAIN", "") or DEFAULT_DOMAIN
        )
        self.timeout = timeout

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def _check(resp: httpx.Response) -> httpx.Response:
    if resp.status_code >= 300:
        raise error_for(resp.status_code, resp.read())
    return resp


# No read timeout on streams: they are quiet until something happens.
_STREAM_TIMEOUT = httpx.Timeout(DEFAULT_TIMEOUT, read=None)


# --- sync client --------------------------------------------------------------------------


class DeclawdClient:
    """Synchronous client. Use as a context manager or call `close()`."""

    def __init__(
        self,
        api_key: str | None = None,
        domain: str | None = None,
        *,
        api_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._cfg = _Config(api_key, domain, api_url, timeout)
        self._http = httpx.Client(
            base_url=self._cfg.base_url, headers=self._cfg.headers(), timeout=timeout
        )

    @property
    def base_url(self) -> str:
        return self._cfg.base_url

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DeclawdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise TransportError(0, f"{type(exc).__name__}: {exc}") from exc
        return _check(resp).json()

    def _sse(self, path: str, params: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
        decoder = SseDecoder()
        try:
            with self._http.stream("GET", path, params=params, timeout=_STREAM_TIMEOUT) as resp:
                _check(resp)
                for line in resp.iter_lines():
                    item = decoder.feed(line)
                    if item is not None:
                        yield json.loads(item[1])
        except httpx.TransportError as exc:
            raise TransportError(0, f"{type(exc).__name__}: {exc}") from exc

    # network policy
    def get_network(self, sandbox_id: str) -> NetworkPolicyModel:
        return NetworkPolicyModel.model_validate(
            self._call("GET", f"/sandboxes/{sandbox_id}/network")
        )

    def set_network(
        self, sandbox_id: str, allow_out: list[str], deny_out: list[str]
    ) -> NetworkPolicyModel:
        body = {"allow_out": list(allow_out), "deny_out": list(deny_out)}
        return NetworkPolicyModel.model_validate(
            self._call("PUT", f"/sandboxes/{sandbox_id}/network", json=body)
        )

    # security policy
    def get_security(self, sandbox_id: str) -> dict[str, Any]:
        """The sandbox's SecurityPolicy as `SecurityPolicy.to_dict()` JSON (defaults
        filled, `network` = the egress policy in force)."""
        return dict(self._call("GET", f"/sandboxes/{sandbox_id}/security"))

    def set_security(
        self, sandbox_id: str, policy: Mapping[str, Any] | SupportsToDict
    ) -> dict[str, Any]:
        """Replace the sections `policy` carries (a `SecurityPolicy` or its dict), live; a
        policy without `network` leaves the egress policy as it is. Returns the new one."""
        body = _policy_body(policy)
        return dict(self._call("PUT", f"/sandboxes/{sandbox_id}/security", json=body))

    # audit
    def audit(
        self,
        sandbox_id: str,
        *,
        since: datetime | float | str | None = None,
        until: datetime | float | str | None = None,
        verdict: str | None = None,
        kind: str | None = None,
        limit: int | None = None,
    ) -> Iterator[AuditEvent]:
        """Every matching event, oldest first, following `next_token` across pages
        (`limit` is the page size)."""
        params = _audit_params(since, until, verdict, kind, limit)
        while True:
            page = self._call("GET", f"/sandboxes/{sandbox_id}/audit", params=params)
            for event in page["events"]:
                yield AuditEvent.model_validate(event)
            token = page.get("next_token")
            if not token:
                return
            params = {**params, "next_token": token}

    def audit_stream(self, sandbox_id: str, *, from_start: bool = False) -> Iterator[AuditEvent]:
        """Live events until the sandbox ends (or the caller stops iterating)."""
        params = {"from_start": "true"} if from_start else None
        for data in self._sse(f"/sandboxes/{sandbox_id}/audit/stream", params):
            yield AuditEvent.model_validate(data)

    # templates
    def list_templates(self) -> list[TemplateInfo]:
        return [
            TemplateInfo.model_validate(t) for t in self._call("GET", "/templates")["templates"]
        ]

    def get_template(self, template_id: str) -> TemplateInfo:
        return TemplateInfo.model_validate(self._call("GET", f"/templates/{template_id}"))

    def delete_template(self, template_id: str) -> None:
        self._call("DELETE", f"/templates/{template_id}")

    def upload_context(self, context: bytes | str | Path) -> str:
        """Upload a build context (tar.gz bytes, or a directory packed here) -> context_id."""
        body = _context_body(context)
        headers = {"Content-Type": "application/gzip"}
        return str(
            self._call("PUT", "/templates/contexts", content=body, headers=headers)["context_id"]
        )

    # filesystem watch
    def watch(self, sandbox_id: str, path: str, recursive: bool = False) -> str:
        body = {"path": path, "recursive": recursive}
        return str(
            self._call("POST", f"/sandboxes/{sandbox_id}/files/watch", json=body)["watch_id"]
        )

    def watch_events(self, sandbox_id: str, watch_id: str) -> Iterator[FilesystemEvent]:
        for data in self._sse(f"/sandboxes/{sandbox_id}/files/watch/{watch_id}/events"):
            yield FilesystemEvent(**data)  # type: ignore[typeddict-item]

    def unwatch(self, sandbox_id: str, watch_id: str) -> None:
        self._call("DELETE", f"/sandboxes/{sandbox_id}/files/watch/{watch_id}")

    # operations
    def health(self) -> dict[str, Any]:
        return dict(self._call("GET", "/health"))


# --- async client -------------------------------------------------------------------------


class AsyncDeclawdClient:
    """The asyncio twin of `DeclawdClient`: same methods, awaitable or async-iterable."""

    def __init__(
        self,
        api_key: str | None = None,
        domain: str | None = None,
        *,
        api_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._cfg = _Config(api_key, domain, api_url, timeout)
        self._http = httpx.AsyncClient(
            base_url=self._cfg.base_url, headers=self._cfg.headers(), timeout=timeout
        )

    @property
    def base_url(self) -> str:
        return self._cfg.base_url

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncDeclawdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = await self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise TransportError(0, f"{type(exc).__name__}: {exc}") from exc
        if resp.status_code >= 300:
            raise error_for(resp.status_code, resp.content)
        return resp.json()

    async def _sse(
        self, path: str, params: dict[str, str] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        decoder = SseDecoder()
        try:
            async with self._http.stream(
                "GET", path, params=params, timeout=_STREAM_TIMEOUT
            ) as resp:
                if resp.status_code >= 300:
                    raise error_for(resp.status_code, await resp.aread())
                async for line in resp.aiter_lines():
                    item = decoder.feed(line)
                    if item is not None:
                        yield json.loads(item[1])
        except httpx.TransportError as exc:
            raise TransportError(0, f"{type(exc).__name__}: {exc}") from exc

    async def get_network(self, sandbox_id: str) -> NetworkPolicyModel:
        return NetworkPolicyModel.model_validate(
            await self._call("GET", f"/sandboxes/{sandbox_id}/network")
        )

    async def set_network(
        self, sandbox_id: str, allow_out: list[str], deny_out: list[str]
    ) -> NetworkPolicyModel:
        body = {"allow_out": list(allow_out), "deny_out": list(deny_out)}
        return NetworkPolicyModel.model_validate(
            await self._call("PUT", f"/sandboxes/{sandbox_id}/network", json=body)
        )

    async def get_security(self, sandbox_id: str) -> dict[str, Any]:
        return dict(await self._call("GET", f"/sandboxes/{sandbox_id}/security"))

    async def set_security(
        self, sandbox_id: str, policy: Mapping[str, Any] | SupportsToDict
    ) -> dict[str, Any]:
        body = _policy_body(policy)
        return dict(await self._call("PUT", f"/sandboxes/{sandbox_id}/security", json=body))

    async def audit(
        self,
        sandbox_id: str,
        *,
        since: datetime | float | str | None = None,
        until: datetime | float | str | None = None,
        verdict: str | None = None,
        kind: str | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[AuditEvent]:
        params = _audit_params(since, until, verdict, kind, limit)
        while True:
            page = await self._call("GET", f"/sandboxes/{sandbox_id}/audit", params=params)
            for event in page["events"]:
                yield AuditEvent.model_validate(event)
            token = page.get("next_token")
            if not token:
                return
            params = {**params, "next_token": token}

    async def audit_stream(
        self, sandbox_id: str, *, from_start: bool = False
    ) -> AsyncIterator[AuditEvent]:
        params = {"from_start": "true"} if from_start else None
        async for data in self._sse(f"/sandboxes/{sandbox_id}/audit/stream", params):
            yield AuditEvent.model_validate(data)

    async def list_templates(self) -> list[TemplateInfo]:
        page = await self._call("GET", "/templates")
        return [TemplateInfo.model_validate(t) for t in page["templates"]]

    async def get_template(self, template_id: str) -> TemplateInfo:
        return TemplateInfo.model_validate(await self._call("GET", f"/templates/{template_id}"))

    async def delete_template(self, template_id: str) -> None:
        await self._call("DELETE", f"/templates/{template_id}")

    async def upload_context(self, context: bytes | str | Path) -> str:
        body = _context_body(context)
        headers = {"Content-Type": "application/gzip"}
        answer = await self._call("PUT", "/templates/contexts", content=body, headers=headers)
        return str(answer["context_id"])

    async def watch(self, sandbox_id: str, path: str, recursive: bool = False) -> str:
        body = {"path": path, "recursive": recursive}
        answer = await self._call("POST", f"/sandboxes/{sandbox_id}/files/watch", json=body)
        return str(answer["watch_id"])

    async def watch_events(self, sandbox_id: str, watch_id: str) -> AsyncIterator[FilesystemEvent]:
        async for data in self._sse(f"/sandboxes/{sandbox_id}/files/watch/{watch_id}/events"):
            yield FilesystemEvent(**data)  # type: ignore[typeddict-item]

    async def unwatch(self, sandbox_id: str, watch_id: str) -> None:
        await self._call("DELETE", f"/sandboxes/{sandbox_id}/files/watch/{watch_id}")

    async def health(self) -> dict[str, Any]:
        return dict(await self._call("GET", "/health"))
