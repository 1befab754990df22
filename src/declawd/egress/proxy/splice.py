"""The passthrough pump: moves the bytes of directions whose verdict is final between two
sockets off the event loop. One thread, one epoll (level-triggered, one-shot), non-blocking
`os.splice` through a pipe per direction (zero copy), or `readv`/`write` through a
preallocated buffer (`mode="copy"`, the measured alternative). It counts what it delivered,
passes a direction's EOF on (shutdown SHUT_WR) after its last byte, and reports EOFs and
socket errors through a callback called on its own thread.

Invariant: bytes leave in the order they came, and once `Link.release()` has returned the pump
never touches that link's sockets again (the caller may then reset or close them).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Literal

log = logging.getLogger(__name__)

Mode = Literal["splice", "copy"]
Side = Literal["up", "down"]  # up: sandbox -> upstream, down: upstream -> sandbox
# What ended a direction: its source's EOF (passed on), its source failing (a reset), or
# the destination refusing bytes (a reset, a broken pipe).
Outcome = Literal["eof", "src_reset", "dst_reset"]
Report = Callable[[Side, Outcome], None]

# The default pipe-max-size; a third less proxy CPU per GiB than 256 KiB (bench_proxy_splice).
PIPE_SIZE = 1024 * 1024
# A connection is handed over once the loop moved this much of it: handshakes and short
# exchanges are served faster where they are (bench/bench_proxy_splice.py).
SPLICE_AFTER = 64 * 1024
# Moves per direction per wake-up: a fast direction does not starve the others.
ROUNDS = 8
_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_IN, _OUT, _ONESHOT = select.EPOLLIN, select.EPOLLOUT, select.EPOLLONESHOT
_HUP, _ERR = select.EPOLLHUP, select.EPOLLERR
_KEYS: dict[Side, str] = {"up": "bytes_up", "down": "bytes_down"}


class _Flow:
    """One direction: its two sockets, its pipe or buffer, and what is in it."""

    __slots__ = ("buf", "count", "done", "dst", "eof", "offset", "pending", "pipe", "side", "src")

    def __init__(self, side: Side, src: int, dst: int) -> None:
        self.side = side
        self.src = src
        self.dst = dst
        self.pipe: tuple[int, int] | None = None  # (read end, write end), splice mode
        self.buf: memoryview | None = None  # copy mode
        self.offset = 0  # copy mode: where `pending` bytes start in `buf`
        self.pending = 0  # read from src, not yet written to dst
        self.count = 0  # written to dst
        self.eof = False
        self.done = False

    def interest(self, fd: int) -> int:
        if self.done:
            return 0
        mask = 0
        if fd == self.src and not self.pending and not self.eof:
            mask |= _IN
        if fd == self.dst and self.pending:
            mask |= _OUT
        return mask


class Link:
    """The spliced directions of one connection. `release()` (any thread, idempotent) takes
    them back: afterwards the pump no longer reads, writes or watches the sockets."""

    def __init__(self, pump: Pump, flows: list[_Flow], report: Report) -> None:
        self.pump = pump
        self.flows = flows
        self.report = report
        self.lock = threading.Lock()  # the pump holds it while it moves this link's bytes
        self.closed = False
        self.armed: dict[int, int] = {}  # fd -> events it is armed for (0: disarmed)

    @property
    def counts(self) -> dict[str, int]:
        return {_KEYS[f.side]: f.count for f in self.flows}

    def release(self) -> None:
        with self.lock:
            self.pump._drop(self, reuse=False)


class Pump:
    """The thread and its epoll; started at the first `splice`, ended by `stop`."""

    def __init__(self, mode: Mode = "splice", pipe_size: int = PIPE_SIZE) -> None:
        self.mode = mode
        self.pipe_size = pipe_size
        # Written only by the pump thread; read by stats() (whole ints, never torn).
        self.totals = {"bytes_up": 0, "bytes_down": 0}
        self._lock = threading.Lock()  # _by_fd, _spare, start/stop
        self._by_fd: dict[int, Link] = {}
        self._spare: list[tuple[int, int]] = []  # empty pipes of ended links, reused
        self._epoll: select.epoll | None = None
        self._wake: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def links(self) -> int:
        with self._lock:
            return len(set(self._by_fd.values()))

    def splice(self, flows: Sequence[tuple[Side, int, int]], report: Report) -> Link:
        """Move `(side, src_fd, dst_fd)` directions from now on. The sockets must be
        non-blocking, with nothing queued for them elsewhere. Raises OSError (no pipe left)
        with nothing registered."""
        self._start()
        assert self._epoll is not None
        link = Link(self, [_Flow(side, src, dst) for side, src, dst in flows], report)
        try:
            for flow in link.flows:
                if self.mode == "splice":
                    flow.pipe = self._pipe()
                else:
                    flow.buf = memoryview(bytearray(self.pipe_size))
        except OSError:
            self._free(link, reuse=True)
            raise
        fds = {fd for flow in link.flows for fd in (flow.src, flow.dst)}
        with link.lock:
            with self._lock:
                for fd in fds:
                    self._by_fd[fd] = link
            for fd in fds:
                want = _interest(link, fd)
                link.armed[fd] = want
                self._epoll.register(fd, want | _ONESHOT)
        return link

    def stop(self) -> None:
        """End the thread, drop what is left and close every fd of the pump. Idempotent."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stopping = True
            links = set(self._by_fd.values())
        if thread is not None:
            assert self._wake is not None
            with contextlib.suppress(OSError):
                os.write(self._wake[1], b"x")
            thread.join(5)
        for link in links:
            link.release()
        with self._lock:
            spare, self._spare = self._spare, []
            epoll, self._epoll = self._epoll, None
            wake, self._wake = self._wake, None
        for fd in [fd for pipe in spare for fd in pipe] + list(wake or ()):
            os.close(fd)
        if epoll is not None:
            epoll.close()
        with self._lock:
            self._stopping = False  # a proxy started again gets a new thread

    # The thread ---------------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._stopping:
                raise OSError(errno.ESHUTDOWN, "splice pump stopped")
            if self._thread is not None:
                return
            self._epoll = select.epoll()
            self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._epoll.register(self._wake[0], _IN)
            self._thread = threading.Thread(target=self._run, name="splice", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        epoll, wake = self._epoll, self._wake
        assert epoll is not None and wake is not None
        while not self._stopping:
            try:
                events = epoll.poll(-1, 256)
            except InterruptedError:
                continue
            except (OSError, ValueError):  # closed by a stop that gave up waiting
                return
            for fd, mask in events:
                if fd == wake[0]:
                    with contextlib.suppress(OSError):
                        os.read(wake[0], 64)
                    continue
                with self._lock:
                    link = self._by_fd.get(fd)
                if link is not None:
                    self._service(link, fd, mask)

    def _service(self, link: Link, fired: int, mask: int) -> None:
        reports: list[tuple[Side, Outcome]] = []
        readable = mask & (_IN | _HUP | _ERR)
        writable = mask & (_OUT | _HUP | _ERR)
        with link.lock:
            if link.closed:
                return
            link.armed[fired] = 0  # one-shot: it fired, it is disarmed
            for flow in link.flows:
                if flow.done:
                    continue
                if (readable and fired == flow.src) or (writable and fired == flow.dst):
                    outcome = self._move(flow)
                    if outcome is not None:
                        reports.append((flow.side, outcome))
                        if outcome != "eof":
                            break
            if any(o != "eof" for _, o in reports):
                self._drop(link, reuse=False)  # a failed link: the loop resets it
            elif all(f.done for f in link.flows):
                self._drop(link, reuse=True)
            else:
                self._rearm(link)
        for side, outcome in reports:
            try:
                link.report(side, outcome)
            except Exception:  # a closed loop at shutdown, a failing callback
                log.exception("splice report %s %s failed", side, outcome)

    def _move(self, flow: _Flow) -> Outcome | None:
        """Move what can be moved now; the outcome once the direction ended."""
        copy = self.mode == "copy"
        for _ in range(ROUNDS):
            if flow.pending:
                try:
                    if copy:
                        assert flow.buf is not None
                        chunk = flow.buf[flow.offset : flow.offset + flow.pending]
                        n = os.write(flow.dst, chunk)
                        flow.offset += n
                    else:
                        assert flow.pipe is not None
                        n = os.splice(flow.pipe[0], flow.dst, flow.pending, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    return None
                except OSError:
                    return "dst_reset"
                flow.pending -= n
                flow.count += n
                self.totals[_KEYS[flow.side]] += n
                continue
            if flow.eof:
                with contextlib.suppress(OSError):  # already shut, or the peer is gone
                    _shut_wr(flow.dst)
                flow.done = True
                return "eof"
            try:
                if copy:
                    assert flow.buf is not None
                    n = os.readv(flow.src, [flow.buf])
                    flow.offset = 0
                else:
                    assert flow.pipe is not None
                    n = os.splice(flow.src, flow.pipe[1], self.pipe_size, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                return None
            except OSError:
                return "src_reset"
            if n == 0:
                flow.eof = True
            flow.pending = n
        return None

    def _rearm(self, link: Link) -> None:
        assert self._epoll is not None
        for fd, armed in link.armed.items():
            want = _interest(link, fd)
            if want and want != armed:
                self._epoll.modify(fd, want | _ONESHOT)
                link.armed[fd] = want

    # Resources ----------------------------------------------------------------------

    def _pipe(self) -> tuple[int, int]:
        with self._lock:
            if self._spare:
                return self._spare.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # above pipe-max-size: the default size works too
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, self.pipe_size)
        return r, w

    def _drop(self, link: Link, reuse: bool) -> None:
        """Forget the link (its lock held): unwatch its sockets, give back its pipes."""
        if link.closed:
            return
        link.closed = True
        with self._lock:
            for fd in link.armed:
                if self._by_fd.get(fd) is link:
                    del self._by_fd[fd]
        if self._epoll is not None:
            for fd in link.armed:
                with contextlib.suppress(OSError):  # closed epoll or fd: nothing to unwatch
                    self._epoll.unregister(fd)
        self._free(link, reuse)

    def _free(self, link: Link, reuse: bool) -> None:
        for flow in link.flows:
            pipe, flow.pipe, flow.buf = flow.pipe, None, None
            if pipe is None:
                continue
            # Only a pipe known to be empty is reused: the next link must not get old bytes.
            if reuse and flow.pending == 0 and not self._stopping:
                with self._lock:
                    if len(self._spare) < 64:
                        self._spare.append(pipe)
                        continue
            os.close(pipe[0])
            os.close(pipe[1])


def _interest(link: Link, fd: int) -> int:
    mask = 0
    for flow in link.flows:
        mask |= flow.interest(fd)
    return mask


def _shut_wr(fd: int) -> None:
    """Half-close a socket known only by its fd (the transport owns the socket object)."""
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(socket.SHUT_WR)
    finally:
        sock.detach()
