"""Run a host command: `run` (async) and its blocking twin `run_sync`, one error `CommandFailed`.

Every `ip`, `nft`, `mount`, `losetup`, `mkfs`, runtime and compiler call of declawd goes
through here, so a failure always reads the same way: the argv, the exit status, stderr.
`netns=` runs the command inside a network namespace with `nsenter --net` (unlike
`ip netns exec` it keeps the host's /sys and resolv.conf). Invariant: with `check=True` (the
default) a command that exits non-zero, or runs past its `timeout`, never passes silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from declawd.errors import Internal
from declawd.host import netns as _netns

_STDERR_IN_MESSAGE = 2000  # mkfs and go build can write pages; the message keeps the start
_CHUNK_BYTES = 64 * 1024


class CommandFailed(Internal):
    """A host command exited non-zero (or was killed at its timeout: `returncode` < 0)."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        detail = stderr.strip()[:_STDERR_IN_MESSAGE] or "no output on stderr"
        super().__init__(f"{' '.join(argv)} exited {returncode}: {detail}")
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr


@dataclass(frozen=True)
class Completed:
    """A command that ran to its end; `argv` as executed (with the nsenter prefix, if any)."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def check(self) -> Completed:
        """Self when the command succeeded, else CommandFailed."""
        if self.returncode != 0:
            raise CommandFailed(self.argv, self.returncode, self.stderr)
        return self


def in_netns(argv: Sequence[str], netns: str) -> list[str]:
    """`argv` prefixed to run inside `netns`: a name in /var/run/netns, or a path to an nsfs
    file such as /proc/PID/ns/net."""
    return ["nsenter", f"--net={_netns.netns_path(netns)}", *argv]


def _argv(argv: Sequence[str], netns: str | None) -> tuple[str, ...]:
    if not argv:
        raise ValueError("argv: a command is needed")
    return tuple(argv if netns is None else in_netns(argv, netns))


async def run(
    *argv: str,
    netns: str | None = None,
    stdin: str | None = None,
    check: bool = True,
    timeout: float | None = None,
) -> Completed:
    """Run `argv` to its end with stdout and stderr captured (text, undecodable bytes replaced).

    At `timeout` seconds the command is killed and, with `check`, CommandFailed is raised; a
    cancelled caller kills it too, so no command outlives the coroutine that ran it.
    """
    full = _argv(argv, netns)
    proc = await asyncio.create_subprocess_exec(
        *full,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    timed_out = False
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    except TimeoutError:
        timed_out = True
        out, err = await _kill(proc)
    except BaseException:
        await asyncio.shield(_kill(proc))
        raise
    returncode = proc.returncode if proc.returncode is not None else -signal.SIGKILL
    stderr = err.decode(errors="replace")
    if timed_out:
        stderr = f"killed after {timeout}s. {stderr}"
        returncode = -signal.SIGKILL
    done = Completed(full, returncode, out.decode(errors="replace"), stderr)
    return done.check() if check else done


async def _kill(proc: asyncio.subprocess.Process) -> tuple[bytes, bytes]:
    with contextlib.suppress(ProcessLookupError):  # it ended on its own meanwhile
        proc.kill()
    return await proc.communicate()


async def stream(
    *argv: str,
    on_line: Callable[[str], None],
    netns: str | None = None,
    stop: Callable[[], Awaitable[object]] | None = None,
) -> int:
    """Run `argv` to its end, its stdout and stderr fed to `on_line` line by line; its exit
    status (no check: the caller judges it).

    However it ends (done, failed, the caller cancelled), `stop()` runs when given (say, a
    runtime deleting the container the command started, which then lets the command exit);
    without it an unfinished command is killed. Either way it is reaped before this returns.
    """
    proc = await asyncio.create_subprocess_exec(
        *_argv(argv, netns),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        await feed_lines(proc.stdout, on_line)
        return await proc.wait()
    finally:
        await asyncio.shield(_end(proc, stop))


async def _end(
    proc: asyncio.subprocess.Process, stop: Callable[[], Awaitable[object]] | None
) -> None:
    if stop is not None:
        await stop()
    elif proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    await proc.communicate()  # drains the pipe, so a writer blocked on it can exit


async def feed_lines(output: asyncio.StreamReader, on_line: Callable[[str], None]) -> None:
    """Feed a process's output to `on_line` line by line until it ends; an overlong line (a
    progress bar without newlines) comes in 64 KiB pieces instead of failing the read."""
    pending = b""
    while chunk := await output.read(_CHUNK_BYTES):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if len(pending) > _CHUNK_BYTES:
            lines.append(pending)
            pending = b""
        for line in lines:
            on_line(line.decode(errors="replace").rstrip("\r"))
    if pending:
        on_line(pending.decode(errors="replace").rstrip("\r"))


def run_sync(
    *argv: str,
    netns: str | None = None,
    stdin: str | None = None,
    check: bool = True,
    timeout: float | None = None,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Completed:
    """The blocking twin of `run`, for code with no event loop; `cwd` and `env` (the whole
    environment, not additions) are for builds."""
    full = _argv(argv, netns)
    try:
        proc = subprocess.run(
            full,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        # subprocess.run has killed and reaped it; keep what it wrote before that.
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        done = Completed(full, -signal.SIGKILL, "", f"killed after {timeout}s. {err}")
    else:
        done = Completed(full, proc.returncode, proc.stdout, proc.stderr)
    return done.check() if check else done
