"""A node's vault broker: its gateway's secret values, from the control plane, in memory.

In cluster mode the vault master key stays with the control plane (docs/cluster.md). The
node agent serves its gateway daemon a unix socket (`vault_socket_path`, 0600 in the 0700
`<state_dir>/cluster/`; the daemon runs in its own netns but reaches the socket through the
filesystem). Each lookup there asks the control plane's `vault/secret` route over mTLS with
the version the broker holds: `unchanged` answers from memory, a new version replaces it, a
404 (deleted, unbound, or not this node's) drops it. So a rotation is seen on the next
lookup and a delete on the next one too, as with `vault.reader.VaultReader`; a control plane
that cannot be reached answers "no value" (the request then carries the placeholder), never
a value that may be stale. Values are never written to disk here.

Socket protocol: one JSON object per line each way. `{"secret_id": ID}` →
`{"version": N, "value": V}` or `{"version": null}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from declawd.cluster.ca import Identity
from declawd.config import Settings

log = logging.getLogger(__name__)

API = "/internal/v1"
REQUEST_MAX_BYTES = 4096  # a secret id is a few dozen bytes
CALL_TIMEOUT_S = 5.0

Lookup = Callable[[str], Awaitable[tuple[int, str] | None]]


def vault_socket_path(settings: Settings) -> Path:
    """Where a node's gateway asks for vault values (inside the 0700 node TLS directory)."""
    return settings.node_tls_dir / "vault.sock"


class SecretBroker:
    """secret id → (version, value), kept current by asking the control plane per lookup."""

    def __init__(self, control_plane: str, identity: Identity) -> None:
        self._url = f"{control_plane.rstrip('/')}{API}/vault/secret"
        self._identity = identity
        self._client: httpx.AsyncClient | None = None
        self._cache: dict[str, tuple[int, str]] = {}

    def __repr__(self) -> str:
        return f"SecretBroker({self._url}, cached={len(self._cache)})"

    async def lookup(self, secret_id: str) -> tuple[int, str] | None:
        """The secret's current (version, value) for this node, or None."""
        held = self._cache.get(secret_id)
        try:
            resp = await self._http().post(
                self._url, json={"secret_id": secret_id, "version": held[0] if held else None}
            )
        except httpx.HTTPError as exc:
            log.warning("vault lookup of %s: control plane unreachable: %s", secret_id, exc)
            self._cache.pop(secret_id, None)
            return None
        if resp.status_code != 200:
            if resp.status_code != 404:
                log.warning("vault lookup of %s: HTTP %d", secret_id, resp.status_code)
            self._cache.pop(secret_id, None)
            return None
        answer = resp.json()
        version = int(answer["version"])
        if answer.get("unchanged") and held is not None and held[0] == version:
            return held
        value = answer.get("value")
        if not isinstance(value, str):
            self._cache.pop(secret_id, None)
            return None
        self._cache[secret_id] = (version, value)
        return version, value

    def _http(self) -> httpx.AsyncClient:
        # One client (keep-alive: a lookup is one request on an open TLS connection).
        if self._client is None:
            self._client = httpx.AsyncClient(
                verify=self._identity.client_context(), timeout=CALL_TIMEOUT_S
            )
        return self._client

    async def renewed(self) -> None:
        """The node's certificate changed: new connections present the new one."""
        await self._close_client()

    async def close(self) -> None:
        self._cache.clear()
        await self._close_client()

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


async def serve_secrets(lookup: Lookup, path: Path) -> asyncio.Server:
    """Answer lookups on the unix socket at `path` (0600, replaced if stale)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line or not line.endswith(b"\n"):
                    return
                try:
                    secret_id = str(json.loads(line)["secret_id"])
                except (ValueError, KeyError, TypeError):
                    return  # not our client: drop the connection
                found = await lookup(secret_id)
                answer: dict[str, int | str | None] = (
                    {"version": None} if found is None else {"version": found[0], "value": found[1]}
                )
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            return
        finally:
            writer.close()

    # Its directory is 0700 (it holds the node's key), so nobody else reaches the socket
    # in the instant before the chmod.
    server = await asyncio.start_unix_server(serve, str(path), limit=REQUEST_MAX_BYTES)
    os.chmod(path, 0o600)
    return server
