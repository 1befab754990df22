"""Lab hosts over loopback sockets: HTTP/1.1 (h11) and HTTP/2 (h2, by ALPN) with the lab's
TLS contexts, streamed pieces, the request log, and the bad-certificate hosts.

Servers run in the test's loop on 127.0.0.1 with the handler and TLS contexts `LabServer`
binds on the host addresses; clients pick the host by SNI and Host, as through the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from declawd.config import Settings
from declawd.lab import http1, http2
from declawd.lab.ca import ca_cert_path, ensure_ca
from declawd.lab.config import load_config
from declawd.lab.httpapi import HttpService, Pace
from declawd.lab.requestlog import RequestLog, read_requests, request_log_dir
from declawd.lab.servers import http_handler, tls_contexts

CONFIG = load_config()
H2_HOST, H1_HOST = "example.com", "api.openai.com"


@dataclass
class Lab:
    settings: Settings
    contexts: dict[str, ssl.SSLContext]
    cafile: str

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.cafile)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    settings = Settings(state_dir=tmp_path_factory.mktemp("lab"))
    ca = ensure_ca(settings)
    return Lab(settings, tls_contexts(ca, CONFIG), str(ca_cert_path(settings)))


@dataclass
class Served:
    port: int
    connections: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


@contextlib.asynccontextmanager
async def serve(
    lab: Lab,
    name: str,
    *,
    tls: bool = True,
    log: RequestLog | None = None,
    pace: Pace = asyncio.sleep,
) -> AsyncIterator[Served]:
    handler = http_handler(HttpService(CONFIG.host(name), log, pace))
    served = Served(port=0)

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.connections += 1
        task = asyncio.current_task()
        assert task is not None
        served.tasks.add(task)
        try:
            await handler(reader, writer)
        finally:
            served.tasks.discard(task)

    context = lab.contexts[name] if tls else None
    server = await asyncio.start_server(tracked, "127.0.0.1", 0, ssl=context)
    served.port = server.sockets[0].getsockname()[1]
    try:
        yield served
    finally:
        server.close()
        # clients have closed by now, so handlers end on EOF; cancel only stragglers
        if served.tasks:
            _, pending = await asyncio.wait(set(served.tasks), timeout=5)
            for task in pending:
                task.cancel()
        await server.wait_closed()


class Gate:
    """A `pace` that holds each streamed piece until the test lets it go."""

    def __init__(self) -> None:
        self._tokens: asyncio.Queue[None] = asyncio.Queue()

    async def __call__(self, _seconds: float) -> None:
        await self._tokens.get()

    def open(self) -> None:
        self._tokens.put_nowait(None)


def _client(lab: Lab) -> httpx.AsyncClient:
    return httpx.AsyncClient(http2=True, verify=lab.client_context(), timeout=10)


async def _get(
    c: httpx.AsyncClient,
    served: Served,
    name: str,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    **kw: object,
) -> httpx.Response:
    return await c.request(
        method,
        f"https://127.0.0.1:{served.port}{path}",
        headers={"Host": name, **(headers or {})},
        extensions={"sni_hostname": name},
        **kw,  # type: ignore[arg-type]
    )


async def test_h2_host_serves_every_endpoint_over_http2(lab: Lab) -> None:
    async with serve(lab, H2_HOST) as served, _client(lab) as c:
        info = await _get(c, served, H2_HOST, "/hello")
        assert info.http_version == "HTTP/2"
        assert info.json() == {
            "host": H2_HOST,
            "server": H2_HOST,
            "path": "/hello",
            "method": "GET",
            "tls": True,
            "client": "127.0.0.1",
        }
        doc = (await _get(c, served, H2_HOST, "/anything?k=v", "POST", json={"a": 1})).json()
        assert (doc["http_version"], doc["host"], doc["json"]) == ("HTTP/2", H2_HOST, {"a": 1})
        assert doc["query"] == {"k": ["v"]} and "host" not in doc["headers"]
        upload = bytes(range(256)) * 1200  # 300 KiB: more than one flow-control window
        assert (await _get(c, served, H2_HOST, "/echo", "POST", content=upload)).content == upload
        big = await _get(c, served, H2_HOST, "/bytes/5000000")
        assert big.headers["content-length"] == "5000000"
        assert big.content == bytes(5_000_000)
        for flag in ("gzip", "br"):
            r = await _get(c, served, H2_HOST, f"/anything?{flag}=1")
            assert r.headers["content-encoding"] == flag and r.json()["path"] == "/anything"
        chat = await _get(
            c,
            served,
            H2_HOST,
            "/v1/chat/completions",
            "POST",
            json={"model": "m", "messages": [{"role": "user", "content": "hi there"}]},
        )
        assert chat.json()["choices"][0]["message"]["content"] == "hi there"
        head = await _get(c, served, H2_HOST, "/bytes/10", "HEAD")
        assert head.headers["content-length"] == "10" and head.content == b""
    assert served.connections == 1


async def test_h1_only_host_answers_http1_to_a_client_offering_h2(lab: Lab) -> None:
    async with serve(lab, H1_HOST) as served, _client(lab) as c:
        r = await _get(c, served, H1_HOST, "/anything")
        assert r.http_version == "HTTP/1.1"
        assert r.json()["http_version"] == "HTTP/1.1"
        assert r.json()["headers"]["host"] == H1_HOST
        big = await _get(c, served, H1_HOST, "/bytes/3000000")
        assert big.content == bytes(3_000_000)


async def _read_pieces(
    chunks: AsyncIterator[bytes], gate: Gate, pieces: list[bytes]
) -> list[bytes]:
    """Each piece must arrive whole and alone while the server holds the next one back."""
    got = []
    for i, piece in enumerate(pieces):
        if i:
            gate.open()
        buf = b""
        while len(buf) < len(piece):
            buf += await anext(chunks)
        got.append(buf)
    return got


STREAMS = [
    ("/stream/3?text=abc", [b'{"id": %d, "text": "abc"}\n' % i for i in range(3)]),
    (
        "/sse/2",
        [
            b'id: %d\nevent: message\ndata: {"id": %d, "text": "lab sse piece"}\n\n' % (i, i)
            for i in range(2)
        ],
    ),
]


@pytest.mark.parametrize("name", [H1_HOST, H2_HOST])
@pytest.mark.parametrize(("path", "pieces"), STREAMS)
async def test_streams_arrive_piece_by_piece(
    lab: Lab, name: str, path: str, pieces: list[bytes]
) -> None:
    gate = Gate()
    async with serve(lab, name, pace=gate) as served, _client(lab) as c:
        url = f"https://127.0.0.1:{served.port}{path}"
        ext = {"sni_hostname": name}
        async with c.stream("GET", url, headers={"Host": name}, extensions=ext) as r:
            assert "content-length" not in r.headers
            if name == H1_HOST:
                assert r.headers["transfer-encoding"] == "chunked"
            chunks = r.aiter_raw()
            assert await _read_pieces(chunks, gate, pieces) == pieces
            assert [c async for c in chunks] == []  # nothing after the last piece


async def test_chat_stream_events_arrive_one_by_one(lab: Lab) -> None:
    gate = Gate()
    body = {"model": "m", "messages": [{"role": "user", "content": "abcdefgh"}], "stream": True}
    async with serve(lab, H1_HOST, pace=gate) as served, _client(lab) as c:
        url = f"https://127.0.0.1:{served.port}/v1/chat/completions"
        async with c.stream(
            "POST", url, json=body, headers={"Host": H1_HOST}, extensions={"sni_hostname": H1_HOST}
        ) as r:
            assert r.headers["content-type"] == "text/event-stream"
            chunks = r.aiter_raw()
            events: list[bytes] = []
            while not events or events[-1] != b"data: [DONE]\n\n":
                if events:
                    gate.open()
                buf = b""
                while not buf.endswith(b"\n\n"):
                    buf += await anext(chunks)
                assert buf.count(b"\n\n") == 1  # one event per piece
                events.append(buf)
    contents = [json.loads(e[6:])["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert contents == ["", "abc", "def", "gh", None]


async def test_h2_streams_interleave_on_one_connection(lab: Lab) -> None:
    gate = Gate()
    async with serve(lab, H2_HOST, pace=gate) as served, _client(lab) as c:
        url = f"https://127.0.0.1:{served.port}/sse/2"
        ext = {"sni_hostname": H2_HOST}
        async with c.stream("GET", url, headers={"Host": H2_HOST}, extensions=ext) as r:
            chunks = r.aiter_raw()
            assert (await anext(chunks)).startswith(b"id: 0\n")
            # the SSE stream is held; another request on the connection still completes
            other = await _get(c, served, H2_HOST, "/anything")
            assert other.status_code == 200 and other.http_version == "HTTP/2"
            gate.open()
            assert b"".join([c async for c in chunks]).startswith(b"id: 1\n")
    assert served.connections == 1


async def _raw(port: int, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def _response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head, await reader.readexactly(length)


async def test_plain_http_keeps_alive_and_honours_100_continue(lab: Lab) -> None:
    async with serve(lab, H1_HOST, tls=False) as served:
        reader, writer = await _raw(
            served.port,
            b"GET /a HTTP/1.1\r\nHost: api.openai.com\r\n\r\n"
            b"GET /b HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",
        )
        for path in ("/a", "/b"):
            head, body = await _response(reader)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert json.loads(body)["path"] == path and json.loads(body)["tls"] is False
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 3\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"abc")
        head, body = await _response(reader)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"abc"
        writer.close()
    assert served.connections == 1


async def test_http10_stream_is_close_delimited(lab: Lab) -> None:
    async with serve(lab, H1_HOST, tls=False) as served:
        reader, writer = await _raw(served.port, b"GET /stream/2?delay_ms=0 HTTP/1.0\r\n\r\n")
        data = await reader.read()  # until the server closes
        head, _, body = data.partition(b"\r\n\r\n")
        assert b"transfer-encoding" not in head.lower()
        assert (
            body
            == b'{"id": 0, "text": "lab stream piece"}\n{"id": 1, "text": "lab stream piece"}\n'
        )
        writer.close()


async def test_malformed_request_is_400_and_closed(lab: Lab) -> None:
    async with serve(lab, H1_HOST, tls=False) as served:
        reader, writer = await _raw(served.port, b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")
        data = await reader.read()
        assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert b"connection: close" in data.lower()
        writer.close()


async def test_request_log_shows_what_each_host_received(lab: Lab, tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    log = RequestLog(request_log_dir(settings))
    async with (
        serve(lab, H1_HOST, log=log) as h1,
        serve(lab, H2_HOST, log=log) as h2,
        _client(lab) as c,
    ):
        await _get(
            c, h1, H1_HOST, "/anything?q=1", "POST", content=b"hello", headers={"X-Secret": "s3"}
        )
        await _get(c, h2, H2_HOST, "/bytes/3")
    log.close()
    (one,) = read_requests(settings, host=H1_HOST)
    assert (one["host"], one["authority"], one["http_version"]) == (H1_HOST, H1_HOST, "HTTP/1.1")
    assert (one["method"], one["target"], one["path"], one["status"]) == (
        "POST",
        "/anything?q=1",
        "/anything",
        200,
    )
    assert one["headers"]["x-secret"] == "s3" and one["body"] == "hello"
    assert one["client"] == "127.0.0.1" and one["tls"] is True
    (two,) = read_requests(settings, host=H2_HOST)
    assert (two["http_version"], two["authority"], two["target"]) == ("HTTP/2", H2_HOST, "/bytes/3")
    assert [e["host"] for e in read_requests(settings)] == [H1_HOST, H2_HOST]
    assert read_requests(settings, host="evil.com") == []


@pytest.mark.parametrize("name", [H1_HOST, H2_HOST])
async def test_body_over_the_limit_is_413_and_logged(
    lab: Lab, tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "MAX_BODY", 1000)
    monkeypatch.setattr(http2, "MAX_BODY", 1000)
    settings = Settings(state_dir=tmp_path)
    log = RequestLog(request_log_dir(settings))
    async with serve(lab, name, log=log) as served, _client(lab) as c:
        r = await _get(c, served, name, "/echo", "POST", content=b"x" * 5000)
        assert r.status_code == 413
    log.close()
    (entry,) = read_requests(settings, host=name)
    assert (entry["status"], entry["body_size"], entry["path"]) == (413, None, "/echo")


async def _handshake(lab: Lab, name: str, context: ssl.SSLContext) -> ssl.SSLObject:
    async with serve(lab, name) as served:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", served.port, ssl=context, server_hostname=name
        )
        sslobj = writer.get_extra_info("ssl_object")
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
        return sslobj


async def test_untrusted_host_fails_verification_against_the_lab_ca(lab: Lab) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(lab, "untrusted.example.net", lab.client_context())
    lenient = ssl.create_default_context()
    lenient.check_hostname, lenient.verify_mode = False, ssl.CERT_NONE
    sslobj = await _handshake(lab, "untrusted.example.net", lenient)  # the host itself is up
    assert sslobj.version() is not None


async def test_wrongname_host_has_a_lab_ca_certificate_for_another_name(lab: Lab) -> None:
    with pytest.raises(ssl.SSLCertVerificationError) as err:
        await _handshake(lab, "wrongname.example.net", lab.client_context())
    assert "mismatch" in err.value.verify_message.lower()
    chain_only = lab.client_context()
    chain_only.check_hostname = False  # still CERT_REQUIRED: the lab CA vouches for it
    sslobj = await _handshake(lab, "wrongname.example.net", chain_only)
    cert = sslobj.getpeercert()
    assert cert is not None and cert["subjectAltName"] == (("DNS", "example.com"),)


async def test_alpn_offers_h2_only_on_h2_hosts(lab: Lab) -> None:
    offer = lab.client_context()
    offer.set_alpn_protocols(["h2", "http/1.1"])
    assert (await _handshake(lab, H2_HOST, offer)).selected_alpn_protocol() == "h2"
    assert (await _handshake(lab, "api.anthropic.com", offer)).selected_alpn_protocol() == "h2"
    assert (await _handshake(lab, H1_HOST, offer)).selected_alpn_protocol() == "http/1.1"
