"""The lab's HTTP request parsing and routing, without sockets."""

from __future__ import annotations

import json

import pytest

from declawd.lab.config import load_config
from declawd.lab.servers import HttpError, body_length, parse_request_head, route

HOST = load_config().host("api.openai.com")


def test_parse_request_head() -> None:
    req = parse_request_head(b"GET /a?b=1 HTTP/1.1\r\nHost: api.openai.com\r\nX-A:  v \r\n\r\n")
    assert (req.method, req.target, req.path, req.version) == ("GET", "/a?b=1", "/a", "HTTP/1.1")
    assert req.header("host") == "api.openai.com"
    assert req.header("x-a") == "v"
    assert req.keep_alive


@pytest.mark.parametrize(
    ("head", "keep"),
    [
        (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
    ],
)
def test_keep_alive_rules(head: bytes, keep: bool) -> None:
    assert parse_request_head(head).keep_alive is keep


@pytest.mark.parametrize(
    "head",
    [b"GET /\r\n\r\n", b"GET / SPDY/3\r\n\r\n", b"GET / HTTP/1.1\r\nno colon\r\n\r\n"],
)
def test_malformed_heads_are_400(head: bytes) -> None:
    with pytest.raises(HttpError) as err:
        parse_request_head(head)
    assert err.value.status == 400


def test_body_length() -> None:
    assert body_length(parse_request_head(b"POST / HTTP/1.1\r\n\r\n")) == 0
    assert body_length(parse_request_head(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n")) == 5
    chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert body_length(parse_request_head(chunked)) is None
    with pytest.raises(HttpError):
        body_length(parse_request_head(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"))


def test_root_reports_host_header_server_path_and_tls() -> None:
    req = parse_request_head(b"GET /p HTTP/1.1\r\nHost: spoofed.example\r\n\r\n")
    resp = route(req, b"", host=HOST, tls=True, client="100.96.0.1")
    doc = json.loads(resp.body)
    assert resp.status == 200
    assert doc == {
        "host": "spoofed.example",
        "server": "api.openai.com",
        "path": "/p",
        "method": "GET",
        "tls": True,
        "client": "100.96.0.1",
    }
    assert b"Content-Length: %d\r\n" % len(resp.body) in resp.head(True)


def test_bytes_streams_exactly_n() -> None:
    req = parse_request_head(b"GET /bytes/12345 HTTP/1.1\r\n\r\n")
    resp = route(req, b"", host=HOST, tls=False, client="")
    assert resp.stream_bytes == 12345 and resp.body == b""
    assert b"Content-Length: 12345\r\n" in resp.head(True)
    zero = route(
        parse_request_head(b"GET /bytes/0 HTTP/1.1\r\n\r\n"), b"", host=HOST, tls=False, client=""
    )
    assert b"Content-Length: 0\r\n" in zero.head(True)


def test_echo_returns_the_body() -> None:
    req = parse_request_head(b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\n\r\n")
    assert route(req, b"abc", host=HOST, tls=False, client="").body == b"abc"
