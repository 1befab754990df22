"""HTTP/1.x request-stream parsing: pipelining, bodies, smuggling shapes, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from declawd.egress.httpsniff import (
    MAX_HEAD_BYTES,
    HttpEvent,
    HttpRequestStream,
    HttpViolation,
    RequestHead,
    starts_like_http,
)
from declawd.egress.policy import EgressPolicy
from declawd.egress.proxy import SandboxView, decide_http
from declawd.egress.resolved import ResolvedNames


def feed_all(data: bytes, step: int | None = None) -> list[HttpEvent]:
    parser = HttpRequestStream()
    if step is None:
        return parser.feed(data)
    events: list[HttpEvent] = []
    for i in range(0, len(data), step):
        events += parser.feed(data[i : i + step])
    return events


def hosts(events: list[HttpEvent]) -> list[str | None]:
    return [e.host for e in events if isinstance(e, RequestHead)]


PIPELINE = (
    b"POST /v1/chat HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 11\r\n\r\n"
    b"hello world"
    b"PUT /up HTTP/1.1\r\nHost: api.openai.com:443\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nGET /\r\n0\r\nX-Trailer: 1\r\n\r\n"
    b"GET /second HTTP/1.1\r\nhost: EVIL.com\r\n\r\n"
)


@pytest.mark.parametrize("step", [None, 1, 2, 3, 7, 64])
def test_pipelined_requests_with_bodies_in_any_segmentation(step: int | None) -> None:
    events = feed_all(PIPELINE, step)
    assert hosts(events) == ["api.openai.com", "api.openai.com", "evil.com"]
    assert [e.method for e in events if isinstance(e, RequestHead)] == ["POST", "PUT", "GET"]


def test_body_that_looks_like_a_request_is_not_parsed_as_one() -> None:
    body = b"GET / HTTP/1.1\r\nHost: evil.com\r\n\r\n"
    data = b"POST / HTTP/1.1\r\nHost: a.com\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    assert hosts(feed_all(data, 5)) == ["a.com"]


def test_pending_head_bytes_are_held_until_the_head_is_complete() -> None:
    parser = HttpRequestStream()
    assert parser.feed(b"GET / HTTP/1.1\r\nHost: api.op") == []
    assert parser.pending_head_bytes == len(b"GET / HTTP/1.1\r\nHost: api.op")
    events = parser.feed(b"enai.com\r\n\r\n")
    assert hosts(events) == ["api.openai.com"] and parser.pending_head_bytes == 0


def test_connect_and_absolute_form() -> None:
    (connect,) = feed_all(b"CONNECT evil.com:443 HTTP/1.1\r\nHost: evil.com:443\r\n\r\n")
    assert isinstance(connect, RequestHead) and connect.is_connect
    assert connect.authority == "evil.com"
    (absolute,) = feed_all(b"GET http://Evil.com:8080/x HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
    assert isinstance(absolute, RequestHead)
    assert absolute.authority == "evil.com" and absolute.host == "api.openai.com"
    assert absolute.names == ("api.openai.com", "evil.com")


def test_missing_host_and_http10() -> None:
    (head,) = feed_all(b"GET / HTTP/1.0\r\n\r\n")
    assert isinstance(head, RequestHead) and head.host is None and head.version == "HTTP/1.0"


def test_ipv6_host_keeps_brackets() -> None:
    (head,) = feed_all(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n")
    assert isinstance(head, RequestHead) and head.host == "[::1]"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: a.com\r\nHost: evil.com\r\n\r\n", "duplicate_host"),
        (b"GET / HTTP/1.1\r\nX: a\nHost: evil.com\r\n\r\n", "malformed_http"),
        (b"GET / HTTP/1.1\r\nHost: a.com\r\n evil.com\r\n\r\n", "malformed_header"),
        (b"GET / HTTP/1.1\r\nHost : a.com\r\n\r\n", "malformed_header"),
        (b"GET / HTTP/2.0\r\nHost: a.com\r\n\r\n", "unsupported_version"),
        (b"GET  / HTTP/1.1\r\nHost: a.com\r\n\r\n", "malformed_request_line"),
        (b"GET / HTTP/1.1\r\nHost: a.com:x\r\n\r\n", "malformed_host"),
        (b"GET / HTTP/1.1\r\nHost: b\xc3\xbccher.de\r\n\r\n", "malformed_host"),
        (b"GET ftp://a.com/ HTTP/1.1\r\nHost: a.com\r\n\r\n", "malformed_target"),
        (b"GET http://u@evil.com/ HTTP/1.1\r\nHost: a.com\r\n\r\n", "malformed_target"),
        (
            b"POST / HTTP/1.1\r\nHost: a.com\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "ambiguous_framing",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a.com\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "unsupported_transfer_encoding",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a.com\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "bad_content_length",
        ),
        (b"POST / HTTP/1.1\r\nHost: a.com\r\nContent-Length: -1\r\n\r\n", "bad_content_length"),
        (
            b"POST / HTTP/1.1\r\nHost: a.com\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "malformed_chunk",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a.com\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
            "malformed_chunk",
        ),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "unsupported_version"),
    ],
)
def test_ambiguous_or_broken_input_is_a_violation(data: bytes, reason: str) -> None:
    events = feed_all(data)
    assert events[-1] == HttpViolation(reason)
    # after a violation nothing more is parsed
    parser = HttpRequestStream()
    parser.feed(data)
    assert parser.feed(b"GET / HTTP/1.1\r\nHost: a.com\r\n\r\n") == []


def test_header_size_is_bounded() -> None:
    parser = HttpRequestStream()
    events = parser.feed(b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES)
    assert events == [HttpViolation("header_too_large")]


def test_upgrade_stops_parsing() -> None:
    parser = HttpRequestStream()
    events = parser.feed(
        b"GET /ws HTTP/1.1\r\nHost: a.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        b"\x81\x05hello"
    )
    assert hosts(events) == ["a.com"] and parser.tunnel


def test_leading_empty_lines_are_tolerated_a_few_times() -> None:
    assert hosts(feed_all(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a.com\r\n\r\n", 1)) == ["a.com"]
    assert feed_all(b"\r\n" * 10)[-1] == HttpViolation("malformed_http")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", None),
        (b"GE", None),
        (b"GET ", True),
        (b"get /", True),
        (b"SET k v", True),
        (b"SSH-2.0-x", False),
        (b"\x16\x03\x01", False),
        (b"\x00\x00\x00\x08", False),
        (b"EHLO", None),
    ],
)
def test_starts_like_http(data: bytes, expected: bool | None) -> None:
    assert starts_like_http(data) is expected


# Fuzzing ----------------------------------------------------------------------------

POLICY = EgressPolicy.parse(["api.openai.com"], ["0.0.0.0/0"])
VIEW = SandboxView("sbx-000000000001", POLICY)
DST = "203.0.113.10"
RESOLVED = ResolvedNames(clock=lambda: 0.0)
RESOLVED.record(VIEW.sandbox_id, "api.openai.com", [DST], 60)
RESOLVED.record(VIEW.sandbox_id, "evil.com", [DST], 60)

host_values = st.sampled_from(
    [b"api.openai.com", b"API.openai.com.", b"evil.com", b"api.openai.com:443", b"203.0.113.10"]
)


@st.composite
def request(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"POST", b"CONNECT", b"get"]))
    target = draw(st.sampled_from([b"/", b"/x?y", b"http://evil.com/", b"http://api.openai.com/"]))
    headers = [b"Host: " + h for h in draw(st.lists(host_values, min_size=0, max_size=2))]
    body = draw(st.binary(max_size=40))
    if draw(st.booleans()):
        headers.append(b"Content-Length: %d" % len(body))
        payload = body
    else:
        headers.append(b"Transfer-Encoding: chunked")
        payload = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    return method + b" " + target + b" HTTP/1.1\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + payload


@settings(max_examples=300, deadline=None)
@given(st.lists(request(), min_size=1, max_size=4), st.integers(1, 50))
def test_fuzz_segmentation_never_changes_the_events(reqs: list[bytes], step: int) -> None:
    stream = b"".join(reqs)
    assert feed_all(stream, step) == feed_all(stream)


@settings(max_examples=300, deadline=None)
@given(st.lists(request(), min_size=1, max_size=4), st.binary(max_size=30), st.integers(1, 50))
def test_fuzz_no_allowed_request_for_a_denied_name(
    reqs: list[bytes], junk: bytes, step: int
) -> None:
    for event in feed_all(b"".join(reqs) + junk, step):
        if isinstance(event, RequestHead):
            verdict = decide_http(event, VIEW, RESOLVED, DST)
            if verdict.allowed:
                assert {event.host, event.authority} <= {"api.openai.com", None}
                assert event.host == "api.openai.com" and not event.is_connect


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400), st.integers(1, 64))
def test_fuzz_random_bytes_terminate(data: bytes, step: int) -> None:
    events = feed_all(b"GET / HTTP/1.1\r\n" + data, step)
    assert all(isinstance(e, RequestHead | HttpViolation) for e in events)
