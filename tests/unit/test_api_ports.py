"""The ports route against a fake node and store, with real servers behind it on loopback:
what is forwarded and what is not (credentials), who may pass (key, token, another team),
Host masking, URL and header rewriting, HTTP/SSE/WebSocket relaying, and the 4xx/5xx."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Request,
    TextMessage,
)

from declawd.api import ports
from declawd.api.sandboxes import parse_create_network, parse_policy
from declawd.api.views import sandbox_view
from declawd.errors import InvalidInput, NotFound
from declawd.node.node import Node
from declawd.ports import headers as h
from declawd.ports.upstream import connect_in_netns
from declawd.store import SandboxRecord, SandboxState, Store, TrafficAccess

PREFIX = "/sandboxes/sbx-1/ports/8000"
TOKEN = "tok-" + "a" * 40
FWD = h.Forwarding(
    prefix=PREFIX,
    scheme="https",
    host="api.example:8443",
    client="198.51.100.7",
    upstream_host="api.example:8443",
    strip_authorization=True,
)


# --- pure: what goes to the sandbox ------------------------------------------------------


def names(headers: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    return [n for n, _ in headers]


def test_request_headers_drop_our_credentials_and_hop_by_hop_and_say_where_we_publish() -> None:
    sent = [
        (b"host", b"api.example:8443"),
        (b"x-api-key", b"dcw_secret"),
        (b"authorization", b"Bearer dcw_secret"),
        (b"x-declaw-traffic-token", TOKEN.encode()),
        (b"cookie", b"declawd_session=s3cret; theme=dark; DECLAWD_CSRF=x"),
        (b"connection", b"keep-alive, x-hop"),
        (b"x-hop", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"content-length", b"12"),
        (b"expect", b"100-continue"),
        (b"x-forwarded-prefix", b"/spoofed"),
        (b"x-forwarded-for", b"203.0.113.1"),
        (b"accept", b"text/html"),
    ]
    out = h.request_headers(sent, FWD)
    assert dict(out)[b"cookie"] == b"theme=dark"
    assert out[0] == (b"host", b"api.example:8443")
    assert dict(out)[b"x-forwarded-prefix"] == PREFIX.encode()
    assert dict(out)[b"x-forwarded-proto"] == b"https"
    assert dict(out)[b"x-forwarded-host"] == b"api.example:8443"
    assert dict(out)[b"x-forwarded-for"] == b"203.0.113.1, 198.51.100.7"
    assert dict(out)[b"accept"] == b"text/html"
    for gone in (
        b"x-api-key",
        b"authorization",
        b"x-declaw-traffic-token",
        b"connection",
        b"x-hop",
        b"keep-alive",
        b"transfer-encoding",
        b"content-length",
        b"expect",
    ):
        assert gone not in names(out), gone
    assert names(out).count(b"x-forwarded-prefix") == 1


def test_an_authorization_that_is_not_our_key_is_the_apps_and_is_forwarded() -> None:
    fwd = h.Forwarding(PREFIX, "http", "h", None, "h", strip_authorization=False)
    out = h.request_headers(
        [(b"authorization", b"Basic dTpw"), (b"cookie", b"declawd_session=1")], fwd
    )
    assert out == [
        (b"host", b"h"),
        (b"authorization", b"Basic dTpw"),
        (b"x-forwarded-prefix", PREFIX.encode()),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"h"),
    ]


def test_websocket_handshake_headers_are_left_to_wsproto() -> None:
    sent = [
        (b"host", b"h"),
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-key", b"k"),
        (b"sec-websocket-version", b"13"),
        (b"sec-websocket-protocol", b"chat"),
        (b"origin", b"https://api.example"),
    ]
    out = h.request_headers(sent, FWD, websocket=True)
    assert names(out) == [
        b"origin",
        b"x-forwarded-prefix",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-for",
    ]


@pytest.mark.parametrize(
    ("raw_path", "query", "target"),
    [
        (b"/sandboxes/sbx-1/ports/8000", b"", b"/"),
        (b"/sandboxes/sbx-1/ports/8000/", b"", b"/"),
        (b"/sandboxes/sbx-1/ports/8000/a%2Fb/c%20d", b"x=1", b"/a%2Fb/c%20d?x=1"),
        (b"/sandboxes/sbx-1/ports/8000/mcp", b"token=abc", b"/mcp"),
        (
            b"/sandboxes/sbx-1/ports/8000/q",
            b"a=1&token=abc&b=%20&tok%65n=z&tokens=2",
            b"/q?a=1&b=%20&tokens=2",
        ),
    ],
)
def test_upstream_target_keeps_the_clients_encoding_and_drops_the_token(
    raw_path: bytes, query: bytes, target: bytes
) -> None:
    assert h.upstream_target(raw_path, query) == target


@pytest.mark.parametrize("raw", ["0", "65536", "abc", "-1", "+80", "\uff18\uff10", "0x50", ""])
def test_a_bad_port_is_400_naming_port(raw: str) -> None:
    with pytest.raises(InvalidInput) as err:
        h.parse_port(raw)
    assert err.value.field == "port"


def test_ports_at_both_ends_are_fine() -> None:
    assert (h.parse_port("1"), h.parse_port("65535"), h.parse_port("50005")) == (1, 65535, 50005)


@pytest.mark.parametrize(
    "mask",
    ["localhost:${PORT}", "${PORT}-sbx.example.com", "example.com", "10.0.0.1:80", "[::1]:${PORT}"],
)
def test_valid_host_masks(mask: str) -> None:
    assert h.validate_mask(mask, "network.mask_request_host") == mask


@pytest.mark.parametrize(
    "mask",
    [
        "",
        "a b",
        "evil.com\r\nX-Injected: 1",
        "user@host",
        "host/path",
        "host:99999",
        "-bad-.com",
        5,
    ],
)
def test_invalid_host_masks_name_the_field(mask: Any) -> None:
    with pytest.raises(InvalidInput) as err:
        h.validate_mask(mask, "network.mask_request_host")
    assert err.value.field == "network.mask_request_host"


def test_masked_host_substitutes_every_port_placeholder() -> None:
    assert h.masked_host("${PORT}.local:${PORT}", 3000) == "3000.local:3000"


# --- pure: what comes back ---------------------------------------------------------------


def test_responses_always_carry_the_sandbox_csp_even_next_to_the_apps_own() -> None:
    out = h.response_headers([(b"content-security-policy", b"default-src 'self'")], FWD)
    assert out == [
        (b"content-security-policy", b"default-src 'self'"),
        (b"content-security-policy", h.CSP),
    ]
    assert h.CSP == b"sandbox allow-scripts allow-forms allow-popups"


def test_response_headers_that_would_act_on_our_origin_are_dropped() -> None:
    out = h.response_headers(
        [
            (b"clear-site-data", b'"cookies"'),
            (b"strict-transport-security", b"max-age=1"),
            (b"connection", b"close"),
            (b"transfer-encoding", b"chunked"),
            (b"date", b"Mon"),
            (b"content-type", b"text/plain"),
            (b"content-length", b"3"),
        ],
        FWD,
    )
    assert names(out) == [b"content-type", b"content-length", b"content-security-policy"]


@pytest.mark.parametrize(
    ("cookie", "scoped"),
    [
        (b"sid=1; Path=/; HttpOnly", f"sid=1; Path={PREFIX}/; HttpOnly".encode()),
        (b"sid=1", f"sid=1; Path={PREFIX}/".encode()),
        (b"sid=1; Domain=api.example; Path=/app", f"sid=1; Path={PREFIX}/app".encode()),
        (f"sid=1; Path={PREFIX}/x".encode(), f"sid=1; Path={PREFIX}/x".encode()),
        (b"declawd_session=evil; Path=/", None),
        (b"DeclawD_csrf=evil", None),
        (b"__Host-id=1; Path=/; Secure", None),
    ],
)
def test_set_cookie_is_confined_to_the_port(cookie: bytes, scoped: bytes | None) -> None:
    assert h.scoped_cookie(cookie, PREFIX) == scoped


@pytest.mark.parametrize(
    ("location", "rewritten"),
    [
        ("/login", f"{PREFIX}/login"),
        (f"{PREFIX}/login", f"{PREFIX}/login"),
        ("login", "login"),
        ("//evil.example/x", "//evil.example/x"),
        ("http://api.example:8443/a?b=1", f"https://api.example:8443{PREFIX}/a?b=1"),
        ("https://elsewhere.example/a", "https://elsewhere.example/a"),
    ],
)
def test_redirects_stay_under_the_prefix(location: str, rewritten: str) -> None:
    assert h.rewrite_location(location, FWD) == rewritten


def test_a_redirect_to_the_masked_host_comes_back_to_ours() -> None:
    fwd = h.Forwarding(PREFIX, "http", "localhost:8080", None, "localhost:3000", False)
    assert h.rewrite_location("http://localhost:3000/x", fwd) == f"http://localhost:8080{PREFIX}/x"


# --- create options and views ------------------------------------------------------------


def test_create_takes_the_ports_options_and_the_egress_policy_from_one_section() -> None:
    policy, _, traffic = parse_create_network(
        {
            "network": {
                "deny_out": ["10.0.0.0/8"],
                "allow_public_traffic": False,
                "mask_request_host": "localhost:${PORT}",
            }
        }
    )
    assert policy.to_wire() == {"allow_out": [], "deny_out": ["10.0.0.0/8"]}
    assert (traffic.allow_public_traffic, traffic.mask_request_host) == (
        False,
        "localhost:${PORT}",
    )
    _, _, default = parse_create_network({})
    assert (default.allow_public_traffic, default.mask_request_host) == (True, None)
    assert parse_policy({"network": {"mask_request_host": "x"}})[0].to_wire()["deny_out"] == []


@pytest.mark.parametrize(
    ("network", "message"),
    [
        ({"mask_request_host": "a b"}, "network.mask_request_host: must be a host[:port]"),
        ({"mask_request_host": 3}, "network.mask_request_host: must be a string"),
        ({"allow_public_traffic": "no"}, "network.allow_public_traffic: must be"),
    ],
)
def test_bad_ports_options_at_create_name_the_field(network: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_create_network({"network": network})
    assert err.value.message.startswith(message)


def test_a_live_policy_change_validates_the_ports_options_and_keeps_them_out_of_egress() -> None:
    from declawd.api.sandboxes import policy_from

    assert policy_from({"mask_request_host": "app.local:${PORT}"}, "").to_wire() == {
        "allow_out": [],
        "deny_out": [],
    }
    with pytest.raises(InvalidInput) as err:
        policy_from({"mask_request_host": "a b"}, "")
    assert err.value.message.startswith("mask_request_host: must be a host[:port]")


def test_live_changes_of_the_ports_options_keep_drop_and_renew_the_token(
    db_target: Path | str,
) -> None:
    store = Store(db_target)
    first = store.set_traffic("sbx-1")
    kept = store.change_traffic("sbx-1", mask_request_host="app.local")
    assert (kept.token, kept.mask_request_host) == (first.token, "app.local")
    off = store.change_traffic("sbx-1", allow_public_traffic=False)
    assert (off.token, off.allow_public_traffic, off.mask_request_host) == (
        None,
        False,
        "app.local",
    )
    on = store.change_traffic("sbx-1", allow_public_traffic=True, clear_mask=True)
    assert on.token and on.token != first.token and on.mask_request_host is None
    assert store.get_traffic("sbx-1") == on


def record(sandbox_id: str = "sbx-1", team_id: str = "team-1", **fields: Any) -> SandboxRecord:
    return SandboxRecord(
        sandbox_id=sandbox_id,
        team_id=team_id,
        state=SandboxState.RUNNING,
        template_id="tpl-1",
        template_alias="base",
        runtime="runc",
        created_at=1.0,
        timeout=300,
        slot=3,
        network={"allow_out": [], "deny_out": []},
        **fields,
    )


def test_create_and_connect_views_carry_the_token_and_lists_do_not() -> None:
    access = TrafficAccess("sbx-1", TOKEN, True, "localhost:${PORT}")
    view = sandbox_view(record(), access, with_token=True)
    assert view["traffic_access_token"] == TOKEN
    assert view["network"]["mask_request_host"] == "localhost:${PORT}"
    assert "allow_public_traffic" not in view["network"]  # the default is left out, as the SDK does
    assert "traffic_access_token" not in sandbox_view(record(), access)
    closed = sandbox_view(record(), TrafficAccess("sbx-1", None, False), with_token=True)
    assert closed["traffic_access_token"] is None
    assert closed["network"]["allow_public_traffic"] is False


# --- store ------------------------------------------------------------------------------


def test_the_store_keeps_the_token_re_returnable_and_none_when_public_traffic_is_off(
    db_target: Any,
) -> None:
    with Store(db_target) as store:
        made = store.set_traffic("sbx-a", mask_request_host="h:${PORT}")
        assert made.token is not None and len(made.token) >= 43  # 32 bytes, urlsafe
        assert store.get_traffic("sbx-a") == made
        off = store.set_traffic("sbx-b", allow_public_traffic=False)
        assert off.token is None and store.get_traffic("sbx-b") == off
        assert store.get_traffic("sbx-old") is None
        first = store.ensure_traffic("sbx-old")  # a sandbox from before schema v5
        assert first.allow_public_traffic and first.token
        assert store.ensure_traffic("sbx-old") == first
        assert set(store.traffic_of(["sbx-a", "sbx-b", "sbx-none"])) == {"sbx-a", "sbx-b"}
        assert store.delete_traffic("sbx-a") and store.get_traffic("sbx-a") is None
        assert len({made.token, first.token}) == 2


# --- the route, with real servers behind it -------------------------------------------------


class Echo(BaseHTTPRequestHandler):
    """What the sandbox's server saw, as JSON; a few paths do other things."""

    protocol_version = "HTTP/1.1"
    sse_gate: threading.Event

    def log_message(self, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunk = self.rfile.read(size + 2)[:size]
                if size == 0:
                    self.rfile.readline() if chunk else None
                    return out
                out += chunk
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _answer(self) -> None:
        body = self._body()
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/login")
            self.send_header("Set-Cookie", "sid=1; Path=/")
            self.send_header("Set-Cookie", "declawd_session=evil; Path=/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/sse":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"data: one\n\n")
            self.wfile.flush()
            # The second event only once the client has seen the first: through a proxy
            # that buffered the stream the client sees "one" only with "late", 5 s on.
            seen = self.server.sse_gate.wait(5)  # type: ignore[attr-defined]
            self.wfile.write(b"data: two\n\n" if seen else b"data: late\n\n")
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path == "/forever":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for n in range(2000):  # 100 s at most
                    self.wfile.write(f"data: {n}\n\n".encode())
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                self.server.forever_ended.set()  # type: ignore[attr-defined]
            self.close_connection = True
            return
        if self.path.startswith("/big/"):
            size = int(self.path.removeprefix("/big/"))
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            block = bytes(range(256)) * 256
            for start in range(0, size, len(block)):
                self.wfile.write(block[: size - start])
            return
        payload = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "headers": [[k.lower(), v] for k, v in self.headers.items()],
                "sha256": hashlib.sha256(body).hexdigest(),
                "length": len(body),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _answer


def ws_echo(listener: socket.socket) -> None:
    """A WebSocket server that echoes each message, choosing the first subprotocol."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_ws_session, args=(conn,), daemon=True).start()


def _ws_session(conn: socket.socket) -> None:
    ws = WSConnection(ConnectionType.SERVER)
    text, data_in = "", b""
    with conn:
        while True:
            data = conn.recv(65536)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, Request):
                    headers = [(b"x-seen-host", event.host.encode())]
                    sub = event.subprotocols[0] if event.subprotocols else None
                    conn.sendall(ws.send(AcceptConnection(subprotocol=sub, extra_headers=headers)))
                elif isinstance(event, TextMessage):
                    text += event.data
                    if event.message_finished:
                        conn.sendall(ws.send(TextMessage(data="echo:" + text)))
                        text = ""
                elif isinstance(event, BytesMessage):
                    data_in += event.data
                    if event.message_finished:
                        conn.sendall(ws.send(BytesMessage(data=data_in[::-1])))
                        data_in = b""
                elif isinstance(event, CloseConnection):
                    conn.sendall(ws.send(event.response()))
                    return
            if not data:
                return


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeStore:
    def __init__(self) -> None:
        self.traffic = {
            "sbx-1": TrafficAccess("sbx-1", TOKEN, True, None),
            "sbx-closed": TrafficAccess("sbx-closed", None, False, None),
            "sbx-mask": TrafficAccess("sbx-mask", "mask-token", True, "localhost:${PORT}"),
        }
        self.records = {
            "sbx-1": record(),
            "sbx-closed": record("sbx-closed"),
            "sbx-mask": record("sbx-mask"),
            "sbx-other": record("sbx-other", team_id="team-2"),
        }

    def authenticate(self, key: str) -> dict[str, str] | None:
        teams = {"key-1": "team-1", "key-2": "team-2"}
        return {"team_id": teams[key], "key_id": key} if key in teams else None

    def get_traffic(self, sandbox_id: str) -> TrafficAccess | None:
        return self.traffic.get(sandbox_id)

    def get_sandbox(self, sandbox_id: str, team_id: str | None = None) -> SandboxRecord | None:
        return self.records.get(sandbox_id)


class FakeNode:
    def __init__(self, store: FakeStore) -> None:
        self.store = store

    async def lookup(self, team_id: str, sandbox_id: str, need: Any = None) -> SandboxRecord:
        rec = self.store.records.get(sandbox_id)
        if rec is None or rec.team_id != team_id:
            raise NotFound(f"sandbox '{sandbox_id}' not found")
        return rec

    def netns_of(self, rec: SandboxRecord) -> str:
        return f"/var/run/netns/{rec.sandbox_id}"

    connect_port = Node.connect_port  # the real one, on this fake's netns_of


def here(netns: str, families: Sequence[int]) -> list[socket.socket | None]:
    """Sockets in this process's own namespace (the real route makes them in the sandbox's)."""
    return [socket.socket(f, socket.SOCK_STREAM) for f in families]


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Any]]:
    http = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    http.daemon_threads = True
    http.sse_gate = threading.Event()  # type: ignore[attr-defined]
    http.forever_ended = threading.Event()  # type: ignore[attr-defined]
    threading.Thread(target=http.serve_forever, daemon=True).start()
    ws = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=ws_echo, args=(ws,), daemon=True).start()
    try:
        yield {
            "http": http,
            # route port → where the test's server really listens
            "map": {8000: http.server_port, 8100: ws.getsockname()[1]},
            "closed": free_port(),  # nothing listens there
        }
    finally:
        http.shutdown()
        ws.close()


def ports_app(servers: dict[str, Any], seen: list[tuple[str, int]]) -> FastAPI:
    """The route over a fake node and store; its connections go to the test's servers."""

    async def connect(
        netns: str, port: int, addresses: Sequence[tuple[int, str]], *, what: str
    ) -> socket.socket:
        seen.append((netns, port))
        real = servers["map"].get(port, port)
        return await connect_in_netns(netns, real, addresses, what=what, make=here)

    app = FastAPI()
    store = FakeStore()
    app.state.services = SimpleNamespace(store=store, node=FakeNode(store))
    app.include_router(ports.ports_router(connect))
    return app


@pytest.fixture
def client(servers: dict[str, Any]) -> Iterator[TestClient]:
    seen: list[tuple[str, int]] = []
    with TestClient(ports_app(servers, seen), base_url="http://api.example:8443") as c:
        c.seen = seen  # type: ignore[attr-defined]
        yield c


@pytest.fixture(scope="module")
def live(servers: dict[str, Any]) -> Iterator[str]:
    """The route served by uvicorn (TestClient buffers whole responses: no streaming)."""
    port = free_port()
    config = uvicorn.Config(
        ports_app(servers, []), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


KEY = {"X-API-Key": "key-1"}


def echoed(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    data = resp.json()
    data["headers"] = dict(data["headers"])
    return data


def test_get_with_the_api_key_reaches_the_server_without_our_credentials(
    client: TestClient,
) -> None:
    resp = client.get(
        f"{PREFIX}/some/path?x=1&token={TOKEN}",
        headers={
            **KEY,
            "Authorization": "Bearer key-1",
            "X-Declaw-Traffic-Token": TOKEN,
            "Cookie": "declawd_session=s3cret; app=1",
        },
    )
    seen = echoed(resp)
    assert seen["path"] == "/some/path?x=1"
    assert "x-api-key" not in seen["headers"] and "authorization" not in seen["headers"]
    assert "x-declaw-traffic-token" not in seen["headers"]
    assert seen["headers"]["cookie"] == "app=1"
    assert seen["headers"]["x-forwarded-prefix"] == PREFIX
    assert seen["headers"]["x-forwarded-proto"] == "http"
    assert seen["headers"]["x-forwarded-for"] == "testclient"
    assert seen["headers"]["host"] == "api.example:8443"
    assert TOKEN not in json.dumps(seen) and "key-1" not in json.dumps(seen)
    assert resp.headers["content-security-policy"] == h.CSP.decode()
    assert client.seen == [("/var/run/netns/sbx-1", 8000)]  # type: ignore[attr-defined]


def test_the_route_without_a_trailing_path_is_the_servers_root(client: TestClient) -> None:
    assert echoed(client.get(PREFIX, headers=KEY))["path"] == "/"
    assert echoed(client.get(PREFIX + "/", headers=KEY))["path"] == "/"


def test_the_token_opens_the_route_in_a_header_or_the_query(client: TestClient) -> None:
    assert echoed(client.get(f"{PREFIX}/a", headers={"X-Declaw-Traffic-Token": TOKEN}))
    assert echoed(client.get(f"{PREFIX}/a", params={"token": TOKEN}))["path"] == "/a"


def test_with_a_token_the_apps_own_authorization_passes_through(client: TestClient) -> None:
    seen = echoed(
        client.get(f"{PREFIX}/a", params={"token": TOKEN}, headers={"Authorization": "Bearer app"})
    )
    assert seen["headers"]["authorization"] == "Bearer app"


@pytest.mark.parametrize(
    ("path", "headers", "params", "status", "message"),
    [
        (PREFIX, {}, {}, 401, ports.MISSING_CREDENTIALS),
        (PREFIX, {"X-API-Key": "wrong"}, {"token": TOKEN}, 401, "invalid or revoked API key"),
        (PREFIX, {"Authorization": "Bearer app"}, {}, 401, "invalid or revoked API key"),
        (PREFIX, {"X-Declaw-Traffic-Token": "nope"}, {}, 401, "traffic access token not valid"),
        (PREFIX, {}, {"token": "mask-token"}, 401, "traffic access token not valid"),
        ("/sandboxes/sbx-closed/ports/8000", {}, {"token": TOKEN}, 401, "traffic access token"),
        ("/sandboxes/sbx-none/ports/8000", {}, {"token": TOKEN}, 401, "traffic access token"),
        ("/sandboxes/sbx-other/ports/8000", KEY, {}, 404, "sandbox 'sbx-other' not found"),
        ("/sandboxes/sbx-1/ports/8000", {"X-API-Key": "key-2"}, {}, 404, "sandbox 'sbx-1'"),
        ("/sandboxes/sbx-1/ports/0", KEY, {}, 400, "port: must be an integer from 1 to 65535"),
        ("/sandboxes/sbx-1/ports/http", KEY, {}, 400, "port: must be an integer"),
    ],
)
def test_who_may_not_pass_and_why(
    client: TestClient,
    path: str,
    headers: dict[str, str],
    params: dict[str, str],
    status: int,
    message: str,
) -> None:
    resp = client.get(path, headers=headers, params=params)
    assert resp.status_code == status, resp.text
    assert resp.json()["message"].startswith(message)
    assert client.seen == []  # type: ignore[attr-defined]


def test_a_port_nothing_listens_on_is_502_naming_port_and_sandbox(
    client: TestClient, servers: dict[str, Any]
) -> None:
    closed = servers["closed"]
    resp = client.get(f"/sandboxes/sbx-1/ports/{closed}/x", headers=KEY)
    assert (resp.status_code, resp.json()) == (
        502,
        {"message": f"nothing listens on port {closed} in sandbox sbx-1"},
    )


def test_the_api_key_opens_a_sandbox_whose_token_is_off(client: TestClient) -> None:
    assert echoed(client.get("/sandboxes/sbx-closed/ports/8000/x", headers=KEY))["path"] == "/x"


def test_mask_request_host_replaces_the_host_header_with_the_port_substituted(
    client: TestClient,
) -> None:
    seen = echoed(client.get("/sandboxes/sbx-mask/ports/8000/", params={"token": "mask-token"}))
    assert seen["headers"]["host"] == "localhost:8000"
    assert seen["headers"]["x-forwarded-host"] == "api.example:8443"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_bodies_reach_the_server_intact(client: TestClient, method: str) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    seen = echoed(client.request(method, f"{PREFIX}/up", content=body, headers=KEY))
    assert (seen["method"], seen["length"]) == (method, len(body))
    assert seen["sha256"] == hashlib.sha256(body).hexdigest()


def test_a_chunked_request_body_is_sent_chunked(client: TestClient) -> None:
    parts = [b"a" * 70000, b"b" * 3, b"c" * 100000]
    seen = echoed(client.post(f"{PREFIX}/up", content=iter(parts), headers=KEY))
    assert seen["headers"].get("transfer-encoding") == "chunked"
    assert seen["sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()


def test_redirects_and_cookies_come_back_confined_to_the_port(client: TestClient) -> None:
    resp = client.get(f"{PREFIX}/redirect", headers=KEY, follow_redirects=False)
    assert resp.status_code == 302
    assert resp.headers["location"] == f"{PREFIX}/login"
    assert resp.headers.get_list("set-cookie") == [f"sid=1; Path={PREFIX}/"]


def test_server_sent_events_stream_as_they_are_written(live: str, servers: dict[str, Any]) -> None:
    gate: threading.Event = servers["http"].sse_gate
    gate.clear()
    with httpx.stream("GET", f"{live}{PREFIX}/sse", headers=KEY, timeout=20) as resp:
        assert resp.headers["content-type"] == "text/event-stream"
        lines = resp.iter_lines()
        started = time.monotonic()
        assert next(lines) == "data: one"
        assert time.monotonic() - started < 4
        gate.set()  # only now does the server write the second event
        rest = [line for line in lines if line]
    assert rest == ["data: two"]


def test_a_client_that_goes_away_ends_the_sandbox_side_too(
    live: str, servers: dict[str, Any]
) -> None:
    ended: threading.Event = servers["http"].forever_ended
    ended.clear()
    with httpx.stream("GET", f"{live}{PREFIX}/forever", headers=KEY, timeout=20) as resp:
        lines = resp.iter_lines()
        assert next(lines) == "data: 0"
    # The proxy noticed the disconnect and closed its connection: the server's writes fail.
    assert ended.wait(10)


def test_large_bodies_stream_both_ways(live: str) -> None:
    size = 24 * 2**20
    block = bytes(range(256)) * 256

    def upload() -> Iterator[bytes]:
        for start in range(0, size, len(block)):
            yield block[: size - start]

    sent = hashlib.sha256(b"".join(upload())).hexdigest()
    with httpx.Client(base_url=live, headers=KEY, timeout=60) as http:
        seen = echoed(http.post(f"{PREFIX}/up", content=upload()))
        assert (seen["length"], seen["sha256"]) == (size, sent)
        digest, got = hashlib.sha256(), 0
        with http.stream("GET", f"{PREFIX}/big/{size}") as resp:
            assert resp.headers["content-length"] == str(size)
            for chunk in resp.iter_raw():
                digest.update(chunk)
                got += len(chunk)
        assert (got, digest.hexdigest()) == (size, sent)


def test_websockets_through_uvicorn(live: str) -> None:
    """The real server's WebSocket side (wsproto in uvicorn), denial response included."""
    from wsproto.events import RejectConnection, RejectData

    def handshake(path: str) -> tuple[socket.socket, WSConnection, list[Any]]:
        sock = socket.create_connection(("127.0.0.1", int(live.rsplit(":", 1)[1])))
        ws = WSConnection(ConnectionType.CLIENT)
        sock.sendall(ws.send(Request(host="api.example", target=path, subprotocols=["chat"])))
        events: list[Any] = []
        while not any(isinstance(e, AcceptConnection | RejectData) for e in events):
            ws.receive_data(sock.recv(65536) or None)
            events += list(ws.events())
        return sock, ws, events

    sock, ws, events = handshake("/sandboxes/sbx-mask/ports/8100/ws?token=mask-token")
    with sock:
        assert events[0].subprotocol == "chat"
        sock.sendall(ws.send(TextMessage(data="hello")))
        got: list[Any] = []
        while not got:
            ws.receive_data(sock.recv(65536))
            got = [e for e in ws.events() if isinstance(e, TextMessage)]
        assert got[0].data == "echo:hello"
        sock.sendall(ws.send(CloseConnection(code=1000)))
    sock, ws, events = handshake("/sandboxes/sbx-1/ports/8100/ws")
    with sock:
        assert isinstance(events[0], RejectConnection) and events[0].status_code == 401
        body = b"".join(bytes(e.data) for e in events if isinstance(e, RejectData))
        assert json.loads(body)["message"] == ports.MISSING_CREDENTIALS


def test_a_server_that_does_not_speak_http_is_502(
    client: TestClient, servers: dict[str, Any]
) -> None:
    junk = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = junk.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"SSH-2.0-OpenSSH\r\n")

    threading.Thread(target=answer, daemon=True).start()
    servers["map"][8200] = junk.getsockname()[1]
    try:
        resp = client.get("/sandboxes/sbx-1/ports/8200/", headers=KEY)
    finally:
        junk.close()
    assert resp.status_code == 502
    assert resp.json()["message"].startswith(
        "the server on port 8200 in sandbox sbx-1 did not answer in HTTP/1.1"
    )


def test_websocket_messages_relay_both_ways_with_the_chosen_subprotocol(
    client: TestClient,
) -> None:
    url = "/sandboxes/sbx-mask/ports/8100/ws?token=mask-token"
    with client.websocket_connect(url, subprotocols=["chat", "other"]) as ws:
        assert ws.accepted_subprotocol == "chat"
        assert (b"x-seen-host", b"localhost:8100") in (ws.extra_headers or [])
        ws.send_text("hi")
        assert ws.receive_text() == "echo:hi"
        ws.send_bytes(b"\x00\x01\x02")
        assert ws.receive_bytes() == b"\x02\x01\x00"
        big = "x" * 300_000
        ws.send_text(big)
        assert ws.receive_text() == "echo:" + big


def test_a_websocket_is_refused_with_the_same_statuses(
    client: TestClient, servers: dict[str, Any]
) -> None:
    for url, status in [
        ("/sandboxes/sbx-1/ports/8100/ws", 401),
        ("/sandboxes/sbx-other/ports/8100/ws?token=" + TOKEN, 401),
        (f"/sandboxes/sbx-1/ports/{servers['closed']}/ws?token={TOKEN}", 502),
    ]:
        with pytest.raises(WebSocketDenialResponse) as err, client.websocket_connect(url):
            pass
        assert err.value.status_code == status, url
        assert "message" in err.value.json()


def test_a_websocket_to_a_plain_http_server_gets_its_refusal(client: TestClient) -> None:
    with (
        pytest.raises(WebSocketDenialResponse) as err,
        client.websocket_connect(f"{PREFIX}/ws?token={TOKEN}"),
    ):
        pass
    # http.server answers an upgrade like any GET: a 200 is not an upgrade (502, saying so).
    assert err.value.status_code == 502
    assert err.value.json()["message"] == (
        "the server on port 8000 in sandbox sbx-1 answered the WebSocket upgrade with HTTP 200"
    )
