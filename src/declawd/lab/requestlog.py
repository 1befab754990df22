"""The lab request log: what every lab host received, one JSON line per request.

It is the witness of what left the node, as the DNS query log is for names: each request a
host receives is appended (and flushed) to `lab/requests/<host>.log` before its response is
written, so a reader that finds no entry after a probe knows the request never arrived.
Bounded: a file past `MAX_LOG_BYTES` becomes `<host>.log.1` (replacing the older one).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from declawd.config import Settings
from declawd.lab.config import normalize_name
from declawd.lab.querylog import read_jsonl

MAX_LOG_BYTES = 4 * 1024 * 1024
_SUFFIX = ".log"


def request_log_dir(settings: Settings) -> Path:
    return settings.lab_dir / "requests"


class RequestLog:
    """Append-only per-host writer; an entry is on disk before the host answers."""

    def __init__(self, directory: Path, max_bytes: int = MAX_LOG_BYTES) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.max_bytes = max_bytes
        self._files: dict[str, tuple[IO[str], int]] = {}  # host -> (file, bytes written)
        self._closed = False

    def record(self, host: str, entry: dict[str, Any]) -> None:
        if self._closed:
            return
        line = json.dumps(entry) + "\n"
        file, size = self._files.get(host) or self._open(host)
        if size and size + len(line) > self.max_bytes:
            file.close()
            path = self.directory / f"{host}{_SUFFIX}"
            os.replace(path, path.with_name(path.name + ".1"))
            file, size = self._open(host)
        file.write(line)
        file.flush()
        self._files[host] = (file, size + len(line))

    def _open(self, host: str) -> tuple[IO[str], int]:
        path = self.directory / f"{host}{_SUFFIX}"
        file = path.open("a", encoding="utf-8")
        return file, file.tell()

    def close(self) -> None:
        self._closed = True
        for file, _ in self._files.values():
            file.close()
        self._files.clear()


def read_requests(
    settings: Settings, host: str | None = None, since: float | None = None
) -> list[dict[str, Any]]:
    """Entries oldest first: of the lab host configured as `host` (its name in the lab config,
    e.g. `example.com` also for requests to `www.example.com`), or of every host; only those
    logged at or after `since` (epoch seconds) when given."""
    directory = request_log_dir(settings)
    if host is not None:
        name = normalize_name(host, "host", wildcard=True)
        hosts = [name]
    else:
        try:
            files = [p.name for p in directory.iterdir()]
        except FileNotFoundError:
            return []
        hosts = sorted({f.removesuffix(".1").removesuffix(_SUFFIX) for f in files if _is_log(f)})
    entries: list[dict[str, Any]] = []
    for name in hosts:
        for path in (directory / f"{name}{_SUFFIX}.1", directory / f"{name}{_SUFFIX}"):
            entries += read_jsonl(path, since)
    entries.sort(key=lambda e: float(e.get("time", 0)))
    return entries


def _is_log(filename: str) -> bool:
    return filename.endswith((_SUFFIX, _SUFFIX + ".1")) and not filename.startswith(".")
