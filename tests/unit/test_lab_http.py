"""The lab's HTTP API as pure functions: routing, the echo documents, streamed pieces, the
request log entry and the HTTP/2 header mapping, without sockets."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json

import brotli
import pytest

from declawd.lab.config import load_config
from declawd.lab.http2 import request_from_headers
from declawd.lab.httpapi import HttpRequest, HttpResponse, header_map, request_entry, route

HOST = load_config().host("api.openai.com")


def _req(
    target: str, method: str = "GET", *headers: tuple[str, str], version: str = "HTTP/1.1"
) -> HttpRequest:
    return HttpRequest(method=method, target=target, version=version, headers=headers)


def _route(request: HttpRequest, body: bytes = b"", tls: bool = False) -> HttpResponse:
    return route(request, body, host=HOST, tls=tls, client="100.96.0.1")


def test_request_path_and_query_also_from_absolute_form() -> None:
    req = _req("http://api.openai.com/a/b?x=1&x=2&y=")
    assert req.path == "/a/b"
    assert req.query == {"x": ["1", "2"], "y": [""]}
    assert _req("/p?q").path == "/p"
    assert _req("//double/slash?a=b").path == "//double/slash"
    assert _req("HTTPS://h").path == "/"


def test_info_document_is_unchanged() -> None:
    resp = _route(_req("/p?z=1", "GET", ("host", "spoofed.example")), tls=True)
    assert resp.status == 200
    assert json.loads(resp.body) == {
        "host": "spoofed.example",
        "server": "api.openai.com",
        "path": "/p",
        "method": "GET",
        "tls": True,
        "client": "100.96.0.1",
    }
    assert ("content-length", str(len(resp.body))) in resp.header_fields()


def test_bytes_streams_exactly_n_zeros() -> None:
    resp = _route(_req("/bytes/12345"))
    assert (resp.stream_bytes, resp.body) == (12345, b"")
    assert ("content-length", "12345") in resp.header_fields()
    assert ("content-length", "0") in _route(_req("/bytes/0")).header_fields()
    assert _route(_req(f"/bytes/{(1 << 40) + 1}")).status == 400


def test_echo_returns_the_body() -> None:
    assert _route(_req("/echo", "POST"), b"abc").body == b"abc"


def test_anything_echoes_the_whole_request() -> None:
    req = _req(
        "/anything/deep?k=1&k=2",
        "PUT",
        ("host", "api.openai.com"),
        ("x-token", "a"),
        ("x-token", "b"),
        ("content-type", "application/json"),
    )
    doc = json.loads(_route(req, b'{"n": [1, 2]}', tls=True).body)
    assert doc == {
        "method": "PUT",
        "path": "/anything/deep",
        "query": {"k": ["1", "2"]},
        "headers": {
            "host": "api.openai.com",
            "x-token": ["a", "b"],
            "content-type": "application/json",
        },
        "body": '{"n": [1, 2]}',
        "body_base64": False,
        "json": {"n": [1, 2]},
        "host": "api.openai.com",
        "tls": True,
        "http_version": "HTTP/1.1",
        "server": "api.openai.com",
        "client": "100.96.0.1",
    }


def test_anything_base64_for_binary_and_null_json_for_text() -> None:
    binary = json.loads(_route(_req("/anything", "POST"), b"\xff\x00").body)
    assert binary["body_base64"] is True
    assert base64.b64decode(binary["body"]) == b"\xff\x00"
    assert binary["json"] is None
    text = json.loads(_route(_req("/anything", "POST"), b"not json").body)
    assert (text["body"], text["body_base64"], text["json"]) == ("not json", False, None)


@pytest.mark.parametrize(
    ("flag", "encoding", "decode"),
    [("gzip", "gzip", gzip.decompress), ("br", "br", brotli.decompress)],
)
def test_anything_compresses_on_request(flag: str, encoding: str, decode: object) -> None:
    resp = _route(_req(f"/anything?{flag}=1", "POST"), b"payload")
    assert ("content-encoding", encoding) in resp.header_fields()
    doc = json.loads(decode(resp.body))  # type: ignore[operator]
    assert doc["body"] == "payload" and doc["query"] == {flag: ["1"]}
    assert ("content-length", str(len(resp.body))) in resp.header_fields()


def test_anything_refuses_two_encodings() -> None:
    assert _route(_req("/anything?gzip=1&br=1")).status == 400


def test_stream_is_n_json_lines_each_its_own_piece() -> None:
    resp = _route(_req("/stream/3?text=hi&delay_ms=5"))
    assert resp.streamed and resp.pace == 0.005
    assert resp.content_type == "application/x-ndjson"
    assert [json.loads(p) for p in resp.pieces] == [{"id": i, "text": "hi"} for i in range(3)]
    assert all(p.endswith(b"\n") and p.count(b"\n") == 1 for p in resp.pieces)
    assert not any(k == "content-length" for k, _ in resp.header_fields())


def test_sse_is_n_events() -> None:
    resp = _route(_req("/sse/2"))
    assert resp.content_type == "text/event-stream"
    assert resp.pieces == (
        b'id: 0\nevent: message\ndata: {"id": 0, "text": "lab sse piece"}\n\n',
        b'id: 1\nevent: message\ndata: {"id": 1, "text": "lab sse piece"}\n\n',
    )


@pytest.mark.parametrize(
    "target", ["/stream/0", "/sse/1001", "/sse/2?delay_ms=x", "/stream/1?delay_ms=2001"]
)
def test_stream_bounds_are_400(target: str) -> None:
    assert _route(_req(target)).status == 400


def test_status_endpoint() -> None:
    assert _route(_req("/status/418")).status == 418
    no_content = _route(_req("/status/204"))
    assert no_content.status == 204 and no_content.body == b""
    assert not any(k == "content-length" for k, _ in no_content.header_fields())
    assert _route(_req("/status/199")).status == 400


def test_connect_is_refused_and_closes() -> None:
    resp = _route(_req("evil.com:443", "CONNECT"))
    assert resp.status == 405 and resp.close


def test_openai_paths_route_to_the_chat_api_and_others_keep_the_info_document() -> None:
    assert json.loads(_route(_req("/v1/models")).body)["object"] == "list"
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}).encode()
    chat = _route(_req("/v1/chat/completions", "POST"), body)
    assert json.loads(chat.body)["choices"][0]["message"]["content"] == "x"
    stream = _route(
        _req("/v1/chat/completions", "POST"), body.replace(b'"m"', b'"m", "stream": true')
    )
    assert stream.content_type == "text/event-stream" and stream.pieces[-1] == b"data: [DONE]\n\n"
    assert json.loads(_route(_req("/v1/other")).body)["path"] == "/v1/other"


def test_header_map_lists_repeated_headers() -> None:
    assert header_map([("a", "1"), ("b", "2"), ("a", "3"), ("a", "4")]) == {
        "a": ["1", "3", "4"],
        "b": "2",
    }


def test_request_entry_holds_head_hash_and_first_4_kib() -> None:
    body = "é".encode() * 3000  # 6000 bytes; byte 4096 falls inside a character
    req = _req("/up?x=1", "POST", ("host", "api.openai.com"), ("authorization", "Bearer t"))
    entry = request_entry(
        req, body, host="api.openai.com", client="100.96.0.1", tls=True, status=200, at=12.5
    )
    assert entry == {
        "time": 12.5,
        "host": "api.openai.com",
        "authority": "api.openai.com",
        "client": "100.96.0.1",
        "tls": True,
        "http_version": "HTTP/1.1",
        "method": "POST",
        "path": "/up",
        "target": "/up?x=1",
        "headers": {"host": "api.openai.com", "authorization": "Bearer t"},
        "status": 200,
        "body_size": 6000,
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "body_truncated": True,
        "body": "é" * 2048,
        "body_base64": False,
    }
    binary = request_entry(req, b"\xff" * 10, host="h", client="c", tls=False, status=200, at=0.0)
    assert binary["body_base64"] and base64.b64decode(binary["body"]) == b"\xff" * 10
    refused = request_entry(req, None, host="h", client="c", tls=False, status=413, at=0.0)
    assert (refused["body_size"], refused["body_sha256"], refused["status"]) == (None, None, 413)


def test_h2_headers_become_a_request_with_authority() -> None:
    req = request_from_headers(
        [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", b"example.com"),
            (b":path", b"/anything?q=1"),
            (b"x-a", b"1"),
        ]
    )
    assert (req.method, req.target, req.version, req.host) == (
        "POST",
        "/anything?q=1",
        "HTTP/2",
        "example.com",
    )
    assert req.headers == (("x-a", "1"),)
    doc = json.loads(_route(req).body)
    assert doc["headers"] == {"x-a": "1"} and doc["http_version"] == "HTTP/2"
