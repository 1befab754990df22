"""The lab DNS query log: one JSON object per query in `lab/query.log`.

It is the witness that a name never left the node: every query the lab's authoritative
server receives is appended (and flushed) before the answer is sent, so a reader that sees
no entry for a name after a probe knows the query never reached the lab.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO

from declawd.config import Settings


def query_log_path(settings: Settings) -> Path:
    return settings.lab_dir / "query.log"


class QueryLog:
    """Append-only writer; the entry is on disk before the DNS answer leaves."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = path.open("a", encoding="utf-8")

    def record(self, *, client: str, name: str, qtype: str, transport: str, rcode: str) -> None:
        if self._file is None:
            return
        entry = {
            "time": time.time(),
            "client": client,
            "name": name,
            "type": qtype,
            "transport": transport,
            "rcode": rcode,
        }
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read(settings: Settings, since: float | None = None) -> list[dict]:
    """Entries (oldest first), optionally only those logged at or after `since` (epoch s)."""
    return read_jsonl(query_log_path(settings), since)


def read_jsonl(path: Path, since: float | None = None) -> list[dict]:
    """The JSON lines of a lab log (this one, the request logs) logged at or after `since`;
    a missing file is empty."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    entries = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written right now
        if since is None or entry.get("time", 0) >= since:
            entries.append(entry)
    return entries


def names_queried(settings: Settings, since: float | None = None) -> set[str]:
    """Lowercase names (no trailing dot) the lab was asked about."""
    return {e["name"] for e in read(settings, since)}
