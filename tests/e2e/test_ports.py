"""Ports into real sandboxes, on both runtimes: HTTP both ways (50 MiB streamed each way),
SSE as it is written, WebSocket echo, a server bound to the sandbox's loopback, the
credentials the sandbox's server never sees, the CSP, the traffic token (header, query,
wrong, disabled), another team's sandbox, a closed port, and mask_request_host.

The server inside is tests/e2e/ports_server.py (stdlib only), started in the background.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from declaw import Sandbox
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    RejectConnection,
    Request,
    TextMessage,
)

from tests.e2e.conftest import RUNTIMES, new_team_key

pytestmark = pytest.mark.e2e

SERVER = (Path(__file__).parent / "ports_server.py").read_text()
CSP = "sandbox allow-scripts allow-forms allow-popups"
BIG = 50 * 2**20
BLOCK = bytes(range(256)) * 256


def start_servers(sbx: Sandbox, *binds: tuple[int, str]) -> None:
    sbx.files.write("/tmp/ports_server.py", SERVER)
    for port, address in binds:
        sbx.commands.run(
            f"python3 /tmp/ports_server.py {port} {address}", background=True, timeout=None
        )
    key = {"X-API-Key": sbx.connection_config.api_key}
    for port, _ in binds:
        deadline = time.monotonic() + 30
        while True:
            resp = httpx.get(sbx.get_host(port) + "/echo", headers=key, timeout=10)
            if resp.status_code == 200:
                break
            assert resp.status_code == 502 and time.monotonic() < deadline, resp.text
            time.sleep(0.2)


@pytest.fixture(scope="module", params=RUNTIMES)
def sbx(server: dict[str, str], request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    box = Sandbox.create(template="python", timeout=900, metadata={"declaw.runtime": request.param})
    try:
        # 8000 on every address; 8001 only on the sandbox's own loopback.
        start_servers(box, (8000, "0.0.0.0"), (8001, "127.0.0.1"))
        yield box
    finally:
        box.kill()


@pytest.fixture(scope="module")
def key(server: dict[str, str]) -> dict[str, str]:
    return {"X-API-Key": server["key"]}


def seen(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    data = resp.json()
    data["headers"] = dict(data["headers"])
    return data


def test_get_and_post_reach_the_server_and_carry_the_csp(sbx: Sandbox, key: dict[str, str]) -> None:
    resp = httpx.get(sbx.get_host(8000) + "/echo/a%20b?x=1", headers=key)
    got = seen(resp)
    assert (got["method"], got["path"]) == ("GET", "/echo/a%20b?x=1")
    assert resp.headers["content-security-policy"] == CSP
    posted = httpx.post(sbx.get_host(8000) + "/up", content=b"hello", headers=key).json()
    assert posted == {"length": 5, "sha256": hashlib.sha256(b"hello").hexdigest()}
    assert seen(httpx.get(sbx.get_host(8000), headers=key))["path"] == "/"


def test_the_sandbox_never_sees_our_credentials(sbx: Sandbox, server: dict[str, str]) -> None:
    token = sbx.traffic_access_token
    assert token
    got = seen(
        httpx.get(
            sbx.get_host(8000) + f"/echo?token={token}&keep=1",
            headers={
                "X-API-Key": server["key"],
                "Authorization": f"Bearer {server['key']}",
                "X-Declaw-Traffic-Token": token,
                "Cookie": "declawd_session=s3cret; app=1",
            },
        )
    )
    text = json.dumps(got)
    assert server["key"] not in text and token not in text and "s3cret" not in text
    assert got["path"] == "/echo?keep=1"
    assert got["headers"]["cookie"] == "app=1"
    assert got["headers"]["x-forwarded-prefix"] == f"/sandboxes/{sbx.sandbox_id}/ports/8000"
    assert got["headers"]["x-forwarded-proto"] == "http"
    assert got["headers"]["x-forwarded-for"] in ("127.0.0.1", "::1")
    assert got["headers"]["host"] == urlsplit(sbx.get_host(8000)).netloc


def test_a_server_bound_to_the_sandboxs_loopback_is_reachable(
    sbx: Sandbox, key: dict[str, str]
) -> None:
    assert seen(httpx.get(sbx.get_host(8001) + "/echo", headers=key))["method"] == "GET"


def test_50_mib_stream_each_way_intact(sbx: Sandbox, key: dict[str, str]) -> None:
    def upload() -> Iterator[bytes]:
        for start in range(0, BIG, len(BLOCK)):
            yield BLOCK[: BIG - start]

    expected = hashlib.sha256(b"".join(upload())).hexdigest()
    with httpx.Client(headers=key, timeout=300) as http:
        posted = http.post(sbx.get_host(8000) + "/up", content=upload()).json()
        assert posted == {"length": BIG, "sha256": expected}
        digest, size = hashlib.sha256(), 0
        with http.stream("GET", sbx.get_host(8000) + f"/big/{BIG}") as resp:
            assert resp.status_code == 200
            for chunk in resp.iter_raw():
                digest.update(chunk)
                size += len(chunk)
    assert (size, digest.hexdigest()) == (BIG, expected)


def test_server_sent_events_arrive_as_they_are_written(sbx: Sandbox, key: dict[str, str]) -> None:
    arrivals: list[tuple[float, float]] = []
    with httpx.stream("GET", sbx.get_host(8000) + "/sse", headers=key, timeout=30) as resp:
        assert resp.headers["content-type"] == "text/event-stream"
        for line in resp.iter_lines():
            if line.startswith("data: "):
                arrivals.append((time.time(), float(line.split()[2])))
    assert len(arrivals) == 3
    # Each event is here well before the next one is even written (1 s later).
    for got, written in arrivals:
        assert got - written < 0.8, arrivals


def ws_connect(url: str, headers: dict[str, str]) -> tuple[socket.socket, WSConnection, Any]:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=30)
    ws = WSConnection(ConnectionType.CLIENT)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    extra = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    sock.sendall(ws.send(Request(host=parts.netloc, target=target, extra_headers=extra)))
    while True:
        ws.receive_data(sock.recv(65536) or None)
        for event in ws.events():
            if isinstance(event, AcceptConnection | RejectConnection):
                return sock, ws, event


def ws_receive(sock: socket.socket, ws: WSConnection) -> Any:
    parts: list[Any] = []
    while True:
        for event in ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                parts.append(event.data)
                if event.message_finished:
                    return "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)
        ws.receive_data(sock.recv(65536) or None)


def test_websocket_echo_both_ways(sbx: Sandbox) -> None:
    url = sbx.get_host(8000) + f"/ws?token={sbx.traffic_access_token}"
    sock, ws, answer = ws_connect(url, {})
    with sock:
        assert isinstance(answer, AcceptConnection)
        sock.sendall(ws.send(TextMessage(data="hello")))
        assert ws_receive(sock, ws) == "echo:hello"
        payload = bytes(range(256)) * 1000
        sock.sendall(ws.send(BytesMessage(data=payload)))
        assert ws_receive(sock, ws) == payload[::-1]
        sock.sendall(ws.send(CloseConnection(code=1000)))


def test_a_websocket_needs_credentials_too(sbx: Sandbox) -> None:
    sock, _, answer = ws_connect(sbx.get_host(8000) + "/ws", {})
    sock.close()
    assert isinstance(answer, RejectConnection) and answer.status_code == 401


def test_a_closed_port_is_502_naming_it(sbx: Sandbox, key: dict[str, str]) -> None:
    resp = httpx.get(sbx.get_host(8765) + "/", headers=key)
    assert (resp.status_code, resp.json()) == (
        502,
        {"message": f"nothing listens on port 8765 in sandbox {sbx.sandbox_id}"},
    )


def test_the_traffic_token_in_a_header_or_the_query_and_a_wrong_one(sbx: Sandbox) -> None:
    token = sbx.traffic_access_token
    assert token and Sandbox.connect(sbx.sandbox_id).traffic_access_token == token
    url = sbx.get_host(8000) + "/echo"
    assert seen(httpx.get(url, headers={"X-Declaw-Traffic-Token": token}))
    assert seen(httpx.get(url, params={"token": token}))
    for bad in ({"headers": {"X-Declaw-Traffic-Token": token[:-2] + "xx"}}, {}):
        resp = httpx.get(url, **bad)  # type: ignore[arg-type]
        assert resp.status_code == 401, resp.text
    # The token opens the ports route only, not the rest of the API.
    assert httpx.get(sbx.envd_api_url, params={"token": token}).status_code == 401


def test_another_teams_key_sees_no_such_sandbox(sbx: Sandbox) -> None:
    other = new_team_key("ports-other")
    resp = httpx.get(sbx.get_host(8000) + "/echo", headers={"X-API-Key": other})
    assert resp.status_code == 404, resp.text


def test_no_public_traffic_and_a_masked_host(server: dict[str, str], sbx: Sandbox) -> None:
    box = Sandbox.create(
        template="python",
        timeout=300,
        network={"allow_public_traffic": False, "mask_request_host": "localhost:${PORT}"},
    )
    try:
        assert box.traffic_access_token is None
        assert Sandbox.connect(box.sandbox_id).traffic_access_token is None
        start_servers(box, (8000, "0.0.0.0"))
        url = box.get_host(8000) + "/echo"
        # Another sandbox's valid token, or any token: refused; the API key passes.
        for token in (sbx.traffic_access_token, "x" * 43):
            assert httpx.get(url, params={"token": token}).status_code == 401
        got = seen(httpx.get(url, headers={"X-API-Key": server["key"]}))
        assert got["headers"]["host"] == "localhost:8000"
        assert got["headers"]["x-forwarded-host"] == urlsplit(url).netloc
        info = httpx.get(box.envd_api_url, headers={"X-API-Key": server["key"]}).json()
        assert info["network"]["allow_public_traffic"] is False
        assert info["network"]["mask_request_host"] == "localhost:${PORT}"
    finally:
        box.kill()


def test_a_bad_mask_or_port_is_400_naming_the_field(server: dict[str, str], sbx: Sandbox) -> None:
    with httpx.Client(base_url=server["url"], headers={"X-API-Key": server["key"]}) as api:
        resp = api.post("/sandboxes", json={"network": {"mask_request_host": "a b"}})
        assert resp.status_code == 400
        assert resp.json()["message"].startswith("network.mask_request_host: must be")
        resp = api.get(f"/sandboxes/{sbx.sandbox_id}/ports/70000/")
        assert resp.status_code == 400 and resp.json()["message"].startswith("port: ")
