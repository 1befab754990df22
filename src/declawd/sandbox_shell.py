"""`declawd sandbox shell`: this terminal attached to a PTY in a sandbox, through the SDK's pty.

Output is read by one thread from the PTY's stream; the main thread forwards keystrokes
(`send_stdin`) and window size changes (SIGWINCH → `resize`). Invariant: the local terminal
is put back in the mode it was found in on every way out (remote exit, error, signal), and a
PTY this session started is killed unless its shell has already exited.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import select
import signal
import sys
import termios
import threading
import tty
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, Protocol

from declaw import PtySize
from declaw.exceptions import SandboxError

READ_SIZE = 4096


class PtySession(Protocol):
    """What the session needs of the SDK's `PtyHandle`."""

    @property
    def exit_code(self) -> int | None: ...

    def __iter__(self) -> Iterator[bytes]: ...

    def send_stdin(self, data: bytes | str) -> None: ...

    def resize(self, size: PtySize) -> None: ...

    def kill(self) -> bool: ...


class KeystrokeText:
    """Turns raw bytes read from a terminal into the UTF-8 text `send_stdin` carries, holding
    back a character cut between two reads instead of replacing it (pure)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


def terminal_size(fd: int) -> PtySize:
    """The terminal's size, or 80x24 when `fd` is not a terminal."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return PtySize()
    return PtySize(cols=max(size.columns, 1), rows=max(size.lines, 1))


def exit_status(code: int | None) -> int:
    """A remote exit code as a local exit status (pure): as is, 128+N for signal N (a
    negative code), 255 when unknown."""
    if code is None:
        return 255
    return min(128 - code, 255) if code < 0 else min(code, 255)


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """The terminal on `fd` in raw mode (nothing when it is not a terminal), restored after."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _signals(on_winch: Callable[[], None]) -> Iterator[None]:
    """SIGWINCH calls `on_winch`; SIGTERM and SIGHUP end the session through its cleanup."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous: dict[signal.Signals, Any] = {}
    handlers: dict[signal.Signals, Any] = {
        signal.SIGWINCH: lambda s, f: on_winch(),
        signal.SIGTERM: stop,
        signal.SIGHUP: stop,
    }
    try:
        for signum, handler in handlers.items():
            previous[signum] = signal.signal(signum, handler)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _wakeup_fd(fd: int) -> Iterator[None]:
    """A signal wakes the select loop even when the kernel delivers it to another thread
    (the output reader): the handler only runs in the main thread, and only once that
    thread runs again, so without this a resize could wait for the next keystroke."""
    previous = signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)


def attach(
    session: PtySession,
    stdin_fd: int | None = None,
    stdout_fd: int | None = None,
) -> int:
    """Run the session until the remote shell exits; its exit status.

    Keystrokes go to the PTY as they are typed (Ctrl-C included: in raw mode it is a key);
    end of input on a non-terminal stdin stops sending and waits for the shell to exit.
    """
    stdin_fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
    stdout_fd = sys.stdout.fileno() if stdout_fd is None else stdout_fd
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)  # also the signal wakeup fd, which must not block
    finished = threading.Event()
    failure: list[BaseException] = []

    def pump_output() -> None:
        try:
            for chunk in session:
                _write_all(stdout_fd, chunk)
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)
        finally:
            finished.set()
            with contextlib.suppress(OSError):
                os.write(wake_w, b"x")

    resized = threading.Event()

    def on_winch() -> None:
        resized.set()
        with contextlib.suppress(OSError):
            os.write(wake_w, b"w")

    reader = threading.Thread(target=pump_output, name="pty-output", daemon=True)
    text = KeystrokeText()
    reading = True
    try:
        with _signals(on_winch), _wakeup_fd(wake_w), raw_terminal(stdin_fd):
            reader.start()
            while not finished.is_set():
                watched = [wake_r, stdin_fd] if reading else [wake_r]
                try:
                    ready, _, _ = select.select(watched, [], [])
                except InterruptedError:
                    continue
                if wake_r in ready:
                    os.read(wake_r, 64)
                if resized.is_set():
                    resized.clear()
                    session.resize(terminal_size(stdin_fd))
                if reading and stdin_fd in ready:
                    data = os.read(stdin_fd, READ_SIZE)
                    keys = text.feed(data) if data else text.flush()
                    if keys:
                        session.send_stdin(keys)
                    reading = bool(data)
        if failure:
            raise failure[0]
        return exit_status(session.exit_code)
    finally:
        if not finished.is_set():
            # left early (error, signal): the shell would otherwise outlive the session
            with contextlib.suppress(SandboxError, OSError):
                session.kill()
        os.close(wake_r)
        os.close(wake_w)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[written:]
