"""Connecting to envd's socket never follows a symlink planted in its dir (host/unixsock)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpcore
import httpx
import pytest

from declawd.host.unixsock import NoFollowUnixBackend, NotASocket, pinned
from declawd.node.sessions import _envd_client


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    path = tmp_path / "real.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(8)
    s.setblocking(False)
    yield path, s
    s.close()


def test_pinned_reaches_the_socket_itself(listener: tuple[Path, socket.socket]) -> None:
    path, srv = listener
    with pinned(path) as via, socket.socket(socket.AF_UNIX) as c:
        assert via.startswith("/proc/self/fd/")
        c.connect(via)
        conn, _ = srv.accept()
        conn.close()


def test_a_symlink_a_dir_or_a_file_is_refused(
    tmp_path: Path, listener: tuple[Path, socket.socket]
) -> None:
    target, srv = listener
    link = tmp_path / "envd.sock"
    link.symlink_to(target)
    with pytest.raises(NotASocket, match="a symlink, not a socket"), pinned(link):
        pass
    (tmp_path / "d").mkdir()
    with pytest.raises(NotASocket, match="a dir"), pinned(tmp_path / "d"):
        pass
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotASocket, match="a file"), pinned(tmp_path / "f"):
        pass
    with pytest.raises(FileNotFoundError, match="missing"), pinned(tmp_path / "missing"):
        pass
    with pytest.raises(BlockingIOError):
        srv.accept()  # the target never saw a connection


def test_no_fd_is_left_open(tmp_path: Path, listener: tuple[Path, socket.socket]) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pinned(listener[0]):
            pass
        with pytest.raises(NotASocket), pinned(tmp_path):
            pass
    assert len(os.listdir("/proc/self/fd")) == before


async def _serve(path: Path, seen: list[bytes]) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(handle, path=str(path))


def test_envd_client_talks_to_the_socket_and_never_through_a_link(tmp_path: Path) -> None:
    async def main() -> None:
        envd, trap = tmp_path / "envd.sock", tmp_path / "host-daemon.sock"
        got_envd: list[bytes] = []
        got_trap: list[bytes] = []
        s1, s2 = await _serve(envd, got_envd), await _serve(trap, got_trap)
        try:
            client = _envd_client(str(envd))
            resp = await client._http.get("/health")
            assert resp.text == "ok" and len(got_envd) == 1
            envd.unlink()
            envd.symlink_to(trap)  # what root in the sandbox can do in /run/declawd
            with pytest.raises(httpx.ConnectError, match="a symlink, not a socket"):
                await client._http.get("/health")
            await client.aclose()
            assert got_trap == []
        finally:
            s1.close()
            s2.close()

    asyncio.run(main())


def test_the_backend_has_no_tcp() -> None:
    async def main() -> None:
        with pytest.raises(httpcore.ConnectError):
            await NoFollowUnixBackend().connect_tcp("127.0.0.1", 1)

    asyncio.run(main())
