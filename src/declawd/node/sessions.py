"""Per-sandbox session state held in memory: envd clients, PTY subscribers, CPU samples,
the last disk-use walk.

None of it is persistent: after a restart a client is opened again on first use, and a
sandbox's state is dropped as soon as a kill is accepted, so nothing reaches a sandbox
that users were told is gone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from declawd.host.unixsock import NoFollowUnixBackend
from declawd.node.envd_client import BackendTransport, EnvdClient

log = logging.getLogger(__name__)


class Sessions:
    def __init__(
        self,
        socket_of: Callable[[str], Path],
        *,
        connect: Callable[[str], EnvdClient] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._socket_of = socket_of
        self._connect = connect or _envd_client
        self._clock = clock
        self._clients: dict[str, EnvdClient] = {}
        self._pty_subscribed: dict[str, set[int]] = {}
        self._cpu_prev: dict[str, tuple[float, int]] = {}
        self._disk_seen: dict[str, tuple[float, int]] = {}

    def client(self, sandbox_id: str) -> EnvdClient:
        c = self._clients.get(sandbox_id)
        if c is None:
            c = self._clients[sandbox_id] = self._connect(str(self._socket_of(sandbox_id)))
        return c

    def pty_since(self, sandbox_id: str, pid: int) -> int:
        """Where a PTY stream subscriber starts: the first one from the beginning (it sees the
        prompt printed before it connected), later ones from now (-1)."""
        attached = self._pty_subscribed.setdefault(sandbox_id, set())
        since = -1 if pid in attached else 0
        attached.add(pid)
        return since

    def cpu_percent(self, sandbox_id: str, cpu_usage_ns: int, cpu_count: float) -> float:
        """CPU use since the previous sample of this sandbox, as % of its CPU allowance."""
        now = self._clock()
        prev = self._cpu_prev.get(sandbox_id)
        self._cpu_prev[sandbox_id] = (now, cpu_usage_ns)
        if prev is None or now <= prev[0]:
            return 0.0
        pct = (cpu_usage_ns - prev[1]) / ((now - prev[0]) * 1e9) * 100 / max(cpu_count, 0.01)
        return round(max(0.0, pct), 2)

    def disk_bytes(self, sandbox_id: str, walk: Callable[[], int], max_age_s: float) -> int:
        """The sandbox's disk use: `walk()` (a walk of its upper dir), or the last walk's
        figure while it is younger than `max_age_s` (0: always walk)."""
        now = self._clock()
        seen = self._disk_seen.get(sandbox_id)
        if seen is not None and max_age_s > 0 and now - seen[0] < max_age_s:
            return seen[1]
        size = walk()
        self._disk_seen[sandbox_id] = (now, size)
        return size

    async def drop(self, sandbox_id: str) -> None:
        self._pty_subscribed.pop(sandbox_id, None)
        self._cpu_prev.pop(sandbox_id, None)
        self._disk_seen.pop(sandbox_id, None)
        c = self._clients.pop(sandbox_id, None)
        if c is not None:
            await _close(c, sandbox_id)

    async def close(self) -> None:
        for sandbox_id in list(self._clients):
            await self.drop(sandbox_id)

    def __contains__(self, sandbox_id: str) -> bool:
        return (
            sandbox_id in self._clients
            or sandbox_id in self._pty_subscribed
            or sandbox_id in self._cpu_prev
            or sandbox_id in self._disk_seen
        )


async def _close(client: EnvdClient, sandbox_id: str) -> None:
    try:
        await client.aclose()
    except (httpx.HTTPError, OSError, RuntimeError) as exc:
        # Closing a pool whose socket is already gone (the sandbox died first) is harmless.
        log.debug("closing envd client of %s: %s", sandbox_id, exc)


def _envd_client(socket_path: str) -> EnvdClient:
    transport = BackendTransport(NoFollowUnixBackend(), uds=socket_path)
    return EnvdClient(socket_path, transport=transport)
