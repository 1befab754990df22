"""The gateway's `SecretSource` in cluster mode: values from the node agent's vault socket.

A cluster node has no master key and no secret rows it could decrypt; its agent answers
lookups on a unix socket (`cluster/secrets.py`), each checked with the control plane. This
source asks that socket. Where it is called from matters: the proxy calls `value()` while
it builds an inspected request, on one of its worker threads (the first request of a
connection, a request whose body is scanned) or on the event loop (a later request on a
kept-alive connection with nothing to scan). A lookup is a round trip to the control plane
(about a millisecond on one machine, more across a network), which must not stall every
connection on the loop, so:

- off the loop (a worker thread) a lookup is made there and then: a rotation or a delete is
  seen by that very request;
- on the loop a value already known is answered from memory and re-checked in the
  background, so the next request sees a rotation or a delete; only the first lookup of a
  secret this gateway has never seen waits for the round trip (bounded by the timeout).

A failed lookup (no agent, no control plane, a timeout) drops the entry and answers None:
the request goes out with the placeholder, never a stale or wrong value. Values live in
this process's memory only.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger(__name__)

TIMEOUT_S = 3.0
ANSWER_MAX_BYTES = 1 << 18  # a value is at most 64 KiB (JSON-escaped: a few times that)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class NodeSecretSource:
    def __init__(self, socket_path: Path, *, timeout: float = TIMEOUT_S) -> None:
        self._path = str(socket_path)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[int, str]] = {}
        self._pending: set[str] = set()
        self._local = threading.local()
        self._conns: list[tuple[socket.socket, io.BufferedReader]] = []
        self._refresher = ThreadPoolExecutor(2, thread_name_prefix="vault-refresh")
        self._closed = False

    def __repr__(self) -> str:
        return f"NodeSecretSource({self._path}, cached={len(self._cache)})"

    def value(self, secret_id: str) -> str | None:
        if _on_event_loop():
            with self._lock:
                hit = self._cache.get(secret_id)
            if hit is not None:
                self._refresh_soon(secret_id)
                return hit[1]
        return self._fetch(secret_id)

    def forget(self) -> None:
        """Drop every cached value; the next calls ask the agent again."""
        with self._lock:
            self._cache.clear()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._cache.clear()
            conns, self._conns = self._conns, []
        self._refresher.shutdown(wait=False, cancel_futures=True)
        for conn in conns:
            _close(conn)

    # Internals -------------------------------------------------------------------------
    def _refresh_soon(self, secret_id: str) -> None:
        with self._lock:
            if self._closed or secret_id in self._pending:
                return  # one re-check in flight is as fresh as two
            self._pending.add(secret_id)
        self._refresher.submit(self._refresh, secret_id)

    def _refresh(self, secret_id: str) -> None:
        try:
            self._fetch(secret_id)
        finally:
            with self._lock:
                self._pending.discard(secret_id)

    def _fetch(self, secret_id: str) -> str | None:
        found: tuple[int, str] | None = None
        for attempt in (1, 2):
            # A kept connection may have been closed by a restarted agent: one retry on a
            # new one; a new connection that fails is the answer.
            reused = getattr(self._local, "conn", None) is not None
            try:
                found = self._ask(secret_id)
                break
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self._drop_socket()
                if attempt == 2 or not reused or not isinstance(exc, ConnectionError):
                    log.warning("vault lookup of %s failed: %s", secret_id, exc)
                    break
        with self._lock:
            if found is None:
                self._cache.pop(secret_id, None)
                return None
            current = self._cache.get(secret_id)
            if current is None or current[0] <= found[0]:
                self._cache[secret_id] = found
        return found[1]

    def _ask(self, secret_id: str) -> tuple[int, str] | None:
        sock, stream = self._connection()
        sock.sendall(json.dumps({"secret_id": secret_id}).encode() + b"\n")
        line = stream.readline(ANSWER_MAX_BYTES)
        if not line.endswith(b"\n"):
            raise ConnectionError("the vault socket closed mid-answer")
        answer = json.loads(line)
        if answer["version"] is None:
            return None
        return int(answer["version"]), str(answer["value"])

    def _connection(self) -> tuple[socket.socket, io.BufferedReader]:
        # One connection per thread (the loop, each proxy worker, each refresher), kept.
        conn: tuple[socket.socket, io.BufferedReader] | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        conn = (sock, sock.makefile("rb"))
        with self._lock:
            self._conns.append(conn)
        self._local.conn = conn
        return conn

    def _drop_socket(self) -> None:
        conn: tuple[socket.socket, io.BufferedReader] | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._lock:
                if conn in self._conns:
                    self._conns.remove(conn)
            _close(conn)


def _close(conn: tuple[socket.socket, io.BufferedReader]) -> None:
    conn[1].close()
    conn[0].close()
