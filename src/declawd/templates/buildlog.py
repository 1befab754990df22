"""A bounded build log: the last lines of a build, as the status route returns them.

Invariant: `lines()` is the whole log while it fits; once lines were dropped its first
line is exactly `TRUNCATED_LINE` (the SDK finds new lines by position, declaw-api.md §11.1).
"""

from __future__ import annotations

from collections import deque

TRUNCATED_LINE = "... [earlier build output truncated]"
MAX_LINES = 2000
MAX_LINE_CHARS = 4096


class BuildLog:
    def __init__(self, max_lines: int = MAX_LINES, lines: list[str] | None = None) -> None:
        if max_lines < 2:
            raise ValueError("max_lines: must be at least 2")
        self._lines: deque[str] = deque(maxlen=max_lines)
        self.truncated = False
        self.version = 0  # bumped on every append, so writers can tell when to persist
        for line in lines or []:
            if line == TRUNCATED_LINE and not self._lines:
                self.truncated = True
                self._lines.append(line)  # holds the marker's slot, hidden by lines()
            else:
                self.append(line)

    def append(self, text: str) -> None:
        for line in text.replace("\r\n", "\n").split("\n"):
            line = line.rstrip("\r")
            if "\r" in line:  # progress bars redraw with CR: keep the final state
                line = line.rsplit("\r", 1)[-1]
            if len(line) > MAX_LINE_CHARS:
                line = line[:MAX_LINE_CHARS] + " ..."
            if len(self._lines) == self._lines.maxlen:
                self.truncated = True
            self._lines.append(line)
            self.version += 1

    def __call__(self, text: str) -> None:
        self.append(text)

    def lines(self) -> list[str]:
        out = list(self._lines)
        # once trimmed, the marker takes the oldest kept line's slot: never more than max
        return [TRUNCATED_LINE, *out[1:]] if self.truncated else out

    def tail(self, n: int) -> list[str]:
        return list(self._lines)[-n:]
