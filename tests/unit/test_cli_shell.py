"""`declawd sandbox shell`'s session with a fake PTY on a real local pseudo-terminal: keys go
out as typed, output comes back, SIGWINCH resizes, the remote exit status is the command's, and
the terminal's mode is put back on every way out."""

from __future__ import annotations

import fcntl
import os
import queue
import signal
import struct
import termios
import threading
from collections.abc import Iterator

import pytest
from declaw import PtySize

from declawd.sandbox_shell import KeystrokeText, attach, exit_status


class FakePty:
    """A remote shell: echoes what it is sent, exits with 7 on `exit\\r`, and reports its
    size on a resize. `fail_on` makes send_stdin raise, as a dropped connection would."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.out: queue.Queue[bytes | None] = queue.Queue()
        self.sent: list[str] = []
        self.sizes: list[PtySize] = []
        self.killed = False
        self.fail_on = fail_on
        self._exit: int | None = None
        self.out.put(b"$ ")

    @property
    def exit_code(self) -> int | None:
        return self._exit

    def __iter__(self) -> Iterator[bytes]:
        while (chunk := self.out.get(timeout=10)) is not None:
            yield chunk

    def send_stdin(self, data: bytes | str) -> None:
        assert isinstance(data, str)
        if self.fail_on and self.fail_on in data:
            raise OSError("connection dropped")
        self.sent.append(data)
        self.out.put(data.encode())
        if "".join(self.sent).endswith("exit\r"):
            self._exit = 7
            self.out.put(None)

    def resize(self, size: PtySize) -> None:
        self.sizes.append(size)
        self.out.put(f"[{size.cols}x{size.rows}]".encode())

    def kill(self) -> bool:
        self.killed = True
        self.out.put(None)
        return True


@pytest.fixture
def terminal() -> Iterator[tuple[int, int]]:
    """(controller, terminal) ends of a local pseudo-terminal."""
    controller, term = os.openpty()
    yield controller, term
    os.close(controller)
    os.close(term)


def _read_until(fd: int, marker: bytes, limit: float = 5.0) -> bytes:
    seen = b""
    import select

    while marker not in seen:
        ready, _, _ = select.select([fd], [], [], limit)
        assert ready, f"no {marker!r} in {seen!r}"
        seen += os.read(fd, 4096)
    return seen


def test_keys_out_output_back_resize_and_exit_status(terminal: tuple[int, int]) -> None:
    controller, term = terminal
    fcntl.ioctl(term, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    before = termios.tcgetattr(term)
    out_r, out_w = os.pipe()
    pty = FakePty()
    result: list[int] = []

    def user() -> None:
        _read_until(out_r, b"$ ")
        os.write(controller, "héllo ".encode())
        _read_until(out_r, "héllo".encode())
        # Delivered to this thread, not the main one (the kernel may pick any thread):
        # the session must still see it at once, not at the next keystroke.
        signal.pthread_kill(threading.get_ident(), signal.SIGWINCH)
        _read_until(out_r, b"[100x40]")
        os.write(controller, b"exit\r")

    typist = threading.Thread(target=user)
    typist.start()
    result.append(attach(pty, stdin_fd=term, stdout_fd=out_w))
    typist.join(10)
    os.close(out_r)
    os.close(out_w)
    assert result == [7]
    assert "".join(pty.sent) == "héllo exit\r"  # raw mode: \r is not turned into \n
    assert pty.sizes == [PtySize(cols=100, rows=40)]
    assert not pty.killed  # the shell exited by itself
    assert termios.tcgetattr(term) == before


def test_an_error_mid_session_restores_the_terminal_and_kills_the_pty(
    terminal: tuple[int, int],
) -> None:
    controller, term = terminal
    before = termios.tcgetattr(term)
    out_r, out_w = os.pipe()
    pty = FakePty(fail_on="x")
    os.write(controller, b"x")
    with pytest.raises(OSError, match="connection dropped"):
        attach(pty, stdin_fd=term, stdout_fd=out_w)
    os.close(out_r)
    os.close(out_w)
    assert pty.killed
    assert termios.tcgetattr(term) == before
    assert signal.getsignal(signal.SIGWINCH) in (signal.SIG_DFL, None)


def test_a_pipe_for_stdin_sends_it_and_waits_for_the_shell() -> None:
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.write(in_w, b"exit\r")
    os.close(in_w)
    pty = FakePty()
    assert attach(pty, stdin_fd=in_r, stdout_fd=out_w) == 7
    os.close(out_w)
    assert _read_until(out_r, b"exit").startswith(b"$ ")
    os.close(in_r)
    os.close(out_r)


def test_a_character_cut_between_reads_is_sent_whole() -> None:
    text = KeystrokeText()
    encoded = "é€".encode()
    parts = [text.feed(encoded[:1]), text.feed(encoded[1:3]), text.feed(encoded[3:])]
    assert "".join(parts) == "é€" and parts[0] == ""
    assert text.feed(b"\xff") == "\ufffd"


def test_exit_status() -> None:
    assert [exit_status(c) for c in (0, 7, None, -15, 999)] == [0, 7, 255, 143, 255]
