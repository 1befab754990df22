"""Port tunnels (cluster/tunnel.py) over real mutual TLS on loopback, to a real TCP server."""

from __future__ import annotations

import asyncio
import datetime
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from declawd.cluster import ca as cca
from declawd.cluster.tunnel import (
    EnvdTunnels,
    open_tunnel,
    parse_hello,
    serve_tunnels,
)
from declawd.errors import Forbidden, InvalidInput, NotFound, Unreachable
from declawd.node.envd_client import BackendTransport

HOURS = datetime.timedelta(hours=1)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, cca.Identity]:
    ca = cca.new_ca()
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    names = ["127.0.0.1", "localhost"]
    return {
        "node": cca.issue_to_files(ca, tmp_path, "node", "node-1", names, HOURS),
        "cp": cca.issue_to_files(ca, tmp_path, "cp", cca.CONTROL_PLANE, [], HOURS),
        "other": cca.issue_to_files(ca, tmp_path, "other", "node-2", names, HOURS),
    }


@pytest.fixture
async def upstream() -> AsyncIterator[int]:
    """A server in the 'sandbox': echoes upper-cased until EOF, then says bye and closes."""

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            w.write(data.upper())
            await w.drain()
        w.write(b"BYE")
        await w.drain()
        w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def _tunnels(  # type: ignore[no-untyped-def]
    pki: dict[str, cca.Identity],
    upstream: int,
    seen: list[tuple[str, int | None]],
    envd: Path | None = None,
):
    async def open_port(sandbox_id: str, port: int | None) -> socket.socket:
        seen.append((sandbox_id, port))
        if sandbox_id != "sbx-aaaaaaaaaaaa":
            raise NotFound(f"sandbox '{sandbox_id}' not found")
        if port is None:
            assert envd is not None
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(envd))
        else:
            sock = socket.create_connection(("127.0.0.1", upstream))
        sock.setblocking(False)
        return sock

    ctx = pki["node"].server_context(require_client=True)
    return await serve_tunnels(open_port, ctx, "127.0.0.1", 0)


async def _recv_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    out = b""
    while chunk := await loop.sock_recv(sock, 65536):
        out += chunk
    return out


async def test_bytes_flow_both_ways_and_end_when_the_server_closes(
    pki: dict[str, cca.Identity], upstream: int
) -> None:
    seen: list[tuple[str, int | None]] = []
    server = await _tunnels(pki, upstream, seen)
    port = server.sockets[0].getsockname()[1]
    ctx = pki["cp"].client_context()
    sock = await open_tunnel("127.0.0.1", port, ctx, "sbx-aaaaaaaaaaaa", 8000)
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    payload = b"hello through the tunnel " * 20000  # 500 kB: many TLS records
    await loop.sock_sendall(sock, payload)
    sock.shutdown(socket.SHUT_WR)  # our EOF reaches the server, which then says bye
    got = await asyncio.wait_for(_recv_all(sock), 10)
    assert got == payload.upper() + b"BYE"
    assert seen == [("sbx-aaaaaaaaaaaa", 8000)]
    sock.close()
    server.close()


async def test_the_nodes_domain_error_comes_back_as_the_same_error(
    pki: dict[str, cca.Identity], upstream: int
) -> None:
    server = await _tunnels(pki, upstream, [])
    port = server.sockets[0].getsockname()[1]
    with pytest.raises(NotFound, match=r"^sandbox 'sbx-bbbbbbbbbbbb' not found$"):
        await open_tunnel("127.0.0.1", port, pki["cp"].client_context(), "sbx-bbbbbbbbbbbb", 80)
    server.close()


async def test_only_the_control_plane_may_open_a_tunnel(
    pki: dict[str, cca.Identity], upstream: int
) -> None:
    seen: list[tuple[str, int | None]] = []
    server = await _tunnels(pki, upstream, seen)
    port = server.sockets[0].getsockname()[1]
    with pytest.raises(Forbidden, match="control plane only"):
        await open_tunnel(
            "127.0.0.1", port, pki["other"].client_context(), "sbx-aaaaaaaaaaaa", 8000
        )
    assert seen == []  # refused before the node looked anything up
    server.close()


async def test_a_node_that_does_not_answer_is_unreachable(pki: dict[str, cca.Identity]) -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(Unreachable, match=f"node tunnel 127.0.0.1:{port} did not answer"):
        await open_tunnel("127.0.0.1", port, pki["cp"].client_context(), "sbx-aaaaaaaaaaaa", 1)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"not json\n", "hello"),
        (b"[1]\n", "hello"),
        (b'{"port": 80}\n', "sandbox_id"),
        (b'{"sandbox_id": "sbx-a", "port": 0}\n', "port"),
        (b'{"sandbox_id": "sbx-a", "port": true}\n', "port"),
        (b'{"sandbox_id": "sbx-a", "port": 65536}\n', "port"),
    ],
)
def test_bad_hellos_name_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_hello(raw)
    assert err.value.message.startswith(f"{field}:")


def test_a_good_hello() -> None:
    assert parse_hello(b'{"sandbox_id": "sbx-a", "port": 8080}\n') == ("sbx-a", 8080)
    assert parse_hello(b'{"sandbox_id": "sbx-a", "envd": true}\n') == ("sbx-a", None)


async def test_envd_http_through_the_tunnel_keeps_its_connection(
    pki: dict[str, cca.Identity], upstream: int, tmp_path: Path
) -> None:
    """httpx over `BackendTransport` to an HTTP server on a unix socket (envd's place):
    requests with bodies both ways, a streamed answer, and one tunnel for all of them."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse({"path": request.url.path, "length": len(body)})

    async def stream(request: Request) -> StreamingResponse:
        async def parts():  # type: ignore[no-untyped-def]
            for i in range(3):
                yield f"part {i}\n".encode() * 10000

        return StreamingResponse(parts())

    app = Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/stream", stream)])
    sock_path = tmp_path / "envd.sock"
    server = uvicorn.Server(uvicorn.Config(app, uds=str(sock_path), log_level="warning"))
    serving = asyncio.ensure_future(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    seen: list[tuple[str, int | None]] = []
    tunnels = await _tunnels(pki, upstream, seen, envd=sock_path)
    port = tunnels.sockets[0].getsockname()[1]
    backend = EnvdTunnels("127.0.0.1", port, pki["cp"].client_context(), "sbx-aaaaaaaaaaaa")
    try:
        async with httpx.AsyncClient(
            transport=BackendTransport(backend), base_url="http://envd"
        ) as client:
            for size in (0, 300_000):
                r = await client.post("/echo", content=b"x" * size)
                assert r.json() == {"path": "/echo", "length": size}
            r = await client.get("/stream")
            assert r.content == b"".join(f"part {i}\n".encode() * 10000 for i in range(3))
        assert seen == [("sbx-aaaaaaaaaaaa", None)]  # one tunnel, kept alive between them
        missing = EnvdTunnels("127.0.0.1", port, pki["cp"].client_context(), "sbx-cccccccccccc")
        async with httpx.AsyncClient(
            transport=BackendTransport(missing), base_url="http://envd"
        ) as client:
            with pytest.raises(httpx.ConnectError, match="sandbox 'sbx-cccccccccccc' not found"):
                await client.get("/stream")
    finally:
        tunnels.close()
        server.should_exit = True
        await serving
