"""Malformed API requests against the real server: table-driven, one row per kind of mistake.

Every row states the status declaw-api.md §11.2 prescribes and a word its message must
contain (the field's name). Beyond the table: oversized bodies and headers never 500,
unknown fields are ignored, and path tricks stay inside the sandbox's own view.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.e2e

S = "/sandboxes/{sid}"
# (id, method, path, json body | raw bytes, expected status, word the message must contain)
CASES: list[tuple[str, str, str, Any, int, str]] = [
    # create: wrong types of known fields
    ("create-template-int", "POST", "/sandboxes", {"template": 5}, 400, "template"),
    ("create-timeout-str", "POST", "/sandboxes", {"timeout": "10"}, 400, "timeout"),
    ("create-timeout-bool", "POST", "/sandboxes", {"timeout": True}, 400, "timeout"),
    ("create-timeout-neg", "POST", "/sandboxes", {"timeout": -1}, 400, "timeout"),
    ("create-timeout-huge", "POST", "/sandboxes", {"timeout": 10**9}, 400, "timeout"),
    ("create-metadata-list", "POST", "/sandboxes", {"metadata": ["a"]}, 400, "metadata"),
    ("create-metadata-val", "POST", "/sandboxes", {"metadata": {"a": 1}}, 400, "metadata.a"),
    ("create-envs-str", "POST", "/sandboxes", {"envs": "A=1"}, 400, "envs"),
    ("create-envs-val", "POST", "/sandboxes", {"envs": {"A": None}}, 400, "envs.A"),
    ("create-secure-str", "POST", "/sandboxes", {"secure": "yes"}, 400, "secure"),
    ("create-network-allow-str", "POST", "/sandboxes",
     {"network": {"allow_out": "x.com"}}, 400, "allow_out"),
    ("create-network-deny-int", "POST", "/sandboxes",
     {"network": {"deny_out": [1]}}, 400, "deny_out"),
    ("create-network-bad-cidr", "POST", "/sandboxes",
     {"network": {"deny_out": ["10.0.0.0/99"]}}, 400, "deny_out"),
    ("create-network-domain-no-deny", "POST", "/sandboxes",
     {"network": {"allow_out": ["x.com"]}}, 400, "allow_out"),
    ("create-lifecycle-str", "POST", "/sandboxes", {"lifecycle": "kill"}, 400, "lifecycle"),
    ("create-runtime-bad", "POST", "/sandboxes",
     {"metadata": {"declaw.runtime": "kvm"}}, 400, "declaw.runtime"),
    ("create-unknown-template", "POST", "/sandboxes", {"template": "nope"}, 404, "nope"),
    ("create-volumes", "POST", "/sandboxes", {"volumes": [{"a": "b"}]}, 501, "volumes"),
    ("create-pause", "POST", "/sandboxes",
     {"lifecycle": {"on_timeout": "pause"}}, 501, "on_timeout"),
    # encodings and shapes
    ("create-invalid-utf8", "POST", "/sandboxes", b'{"template": "\xff\xfe"}', 400, "body"),
    ("create-malformed", "POST", "/sandboxes", b'{"template": ', 400, "JSON"),
    ("create-array", "POST", "/sandboxes", b"[1, 2]", 400, "object"),
    ("create-string", "POST", "/sandboxes", b'"base"', 400, "object"),
    ("cmd-empty-body", "POST", S + "/commands", b"", 400, "body"),
    # commands
    ("cmd-missing", "POST", S + "/commands", {}, 400, "cmd"),
    ("cmd-int", "POST", S + "/commands", {"cmd": 1}, 400, "cmd"),
    ("cmd-background-str", "POST", S + "/commands",
     {"cmd": "true", "background": "no"}, 400, "background"),
    ("cmd-timeout-neg", "POST", S + "/commands", {"cmd": "true", "timeout": -5}, 400, "timeout"),
    ("cmd-timeout-str", "POST", S + "/commands", {"cmd": "true", "timeout": "1"}, 400, "timeout"),
    ("cmd-cwd-relative", "POST", S + "/commands", {"cmd": "true", "cwd": "tmp"}, 400, "cwd"),
    ("cmd-envs-list", "POST", S + "/commands", {"cmd": "true", "envs": ["A=1"]}, 400, "envs"),
    ("cmd-user-int", "POST", S + "/commands", {"cmd": "true", "user": 0}, 400, "user"),
    ("cmd-stdin-int", "POST", S + "/commands", {"cmd": "cat", "stdin": 5}, 400, "stdin"),
    ("cmd-kill-pid-str", "DELETE", S + "/commands/abc", None, 400, "pid"),
    ("cmd-kill-pid-neg", "DELETE", S + "/commands/-3", None, 400, "pid"),
    ("cmd-stdin-missing", "POST", S + "/commands/1/stdin", {}, 400, "data"),
    # files
    ("files-write-path-missing", "POST", S + "/files", {"data": "x"}, 400, "path"),
    ("files-write-path-relative", "POST", S + "/files", {"path": "a.txt"}, 400, "path"),
    ("files-write-path-nul", "POST", S + "/files", {"path": "/tmp/a\x00b"}, 400, "path"),
    ("files-write-data-int", "POST", S + "/files", {"path": "/tmp/a", "data": 1}, 400, "data"),
    ("files-write-user-int", "POST", S + "/files",
     {"path": "/tmp/a", "username": 3}, 400, "username"),
    ("files-batch-not-list", "POST", S + "/files/batch", {"files": {}}, 400, "files"),
    ("files-batch-item", "POST", S + "/files/batch", {"files": ["x"]}, 400, "files[0]"),
    ("files-batch-relative", "POST", S + "/files/batch",
     {"files": [{"path": "rel", "data": ""}]}, 400, "files[0].path"),
    ("files-rename-missing", "PATCH", S + "/files", {"old_path": "/tmp/a"}, 400, "new_path"),
    ("files-read-relative", "GET", S + "/files?path=etc/hostname", None, 400, "path"),
    ("files-read-missing", "GET", S + "/files?path=/nope/nothing", None, 404, "/nope"),
    ("files-read-nul", "GET", S + "/files?path=/tmp/%00x", None, 400, "path"),
    ("files-read-dir", "GET", S + "/files?path=/tmp", None, 400, "directory"),
    ("files-list-relative", "GET", S + "/files/list?path=tmp", None, 400, "path"),
    ("files-perm", "GET", S + "/files?path=/root/secret", None, 400, "permission denied"),
    # pty
    ("pty-size-zero", "POST", S + "/pty", {"size": {"cols": 0, "rows": 24}}, 400, "size"),
    ("pty-size-str", "POST", S + "/pty", {"size": {"cols": "80", "rows": 24}}, 400, "size.cols"),
    ("pty-size-list", "POST", S + "/pty", {"size": [80, 24]}, 400, "size"),
    ("pty-size-huge", "POST", S + "/pty", {"size": {"cols": 80, "rows": 10**6}}, 400, "size"),
    ("pty-resize-zero", "PATCH", S + "/pty/1", {"size": {"cols": 0, "rows": 0}}, 400, "size"),
    ("pty-stdin-missing", "POST", S + "/pty/1/stdin", {}, 400, "data"),
    # stdio
    ("stdio-cmd-missing", "POST", S + "/stdio", {}, 400, "cmd"),
    ("stdio-stdin-not-b64", "POST", S + "/stdio/1/stdin", {"data": "%%%"}, 400, "data"),
    ("stdio-stdin-int", "POST", S + "/stdio/1/stdin", {"data": 5}, 400, "data"),
    # network
    ("net-allow-str", "PUT", S + "/network", {"allow_out": "x"}, 400, "allow_out"),
    ("net-deny-obj", "PUT", S + "/network", {"deny_out": {"a": 1}}, 400, "deny_out"),
    ("net-bad-cidr", "PUT", S + "/network", {"deny_out": ["1.2.3.4/40"]}, 400, "deny_out"),
    ("net-array", "PUT", S + "/network", b"[]", 400, "object"),
    # timeout
    ("timeout-missing", "PATCH", S + "/timeout", {}, 400, "timeout"),
    ("timeout-str", "PATCH", S + "/timeout", {"timeout": "5"}, 400, "timeout"),
    ("timeout-neg", "PATCH", S + "/timeout", {"timeout": -1}, 400, "timeout"),
    ("timeout-huge", "PATCH", S + "/timeout", {"timeout": 10**9}, 400, "timeout"),
    ("connect-timeout-str", "GET", S + "?timeout=abc", None, 400, "timeout"),
    # unknown sandbox and routes
    ("unknown-sandbox", "GET", "/sandboxes/sbx-000000000000", None, 404, "sbx-000000000000"),
    ("unknown-route", "GET", "/nothing/here", None, 404, "route"),
    ("list-bad-state", "GET", "/sandboxes?state=zombie", None, 400, "state"),
    ("list-bad-limit", "GET", "/sandboxes?limit=0", None, 400, "limit"),
]  # fmt: skip


@pytest.fixture(scope="module")
def api(server: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server["url"], headers={"X-API-Key": server["key"]}, timeout=60
    ) as c:
        yield c


@pytest.fixture(scope="module")
def sid(api: httpx.Client) -> Iterator[str]:
    r = api.post("/sandboxes", json={"template": "base", "timeout": 600})
    assert r.status_code == 201, r.text
    sandbox_id = r.json()["sandbox_id"]
    try:
        r = api.post(
            f"/sandboxes/{sandbox_id}/commands",
            json={"cmd": "echo s > /root/secret && chmod 600 /root/secret", "user": "root"},
        )
        assert r.json()["exit_code"] == 0
        yield sandbox_id
    finally:
        api.delete(f"/sandboxes/{sandbox_id}")


def _live_ids(api: httpx.Client) -> set[str]:
    return {s["sandbox_id"] for s in api.get("/sandboxes").json()["sandboxes"]}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "word"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_request(
    api: httpx.Client, sid: str, method: str, path: str, body: Any, status: int, word: str
) -> None:
    before = _live_ids(api) if path == "/sandboxes" else set()
    kwargs: dict[str, Any] = {}
    if isinstance(body, bytes):
        kwargs["content"] = body
        kwargs["headers"] = {"Content-Type": "application/json"}
    elif body is not None:
        kwargs["content"] = json.dumps(body).encode()
        kwargs["headers"] = {"Content-Type": "application/json"}
    r = api.request(method, path.format(sid=sid), **kwargs)
    assert r.status_code == status, r.text
    message = r.json()["message"]
    assert word in message, message
    if path == "/sandboxes":
        assert _live_ids(api) == before  # nothing half-created


def test_unknown_fields_are_ignored(api: httpx.Client, sid: str) -> None:
    r = api.post(
        "/sandboxes",
        json={"template": "base", "timeout": 60, "no_such_field": {"x": 1}, "colour": "red"},
    )
    assert r.status_code == 201, r.text
    assert api.delete(f"/sandboxes/{r.json()['sandbox_id']}").status_code == 200
    r = api.post(f"/sandboxes/{sid}/commands", json={"cmd": "echo ok", "extra": [1]})
    assert r.status_code == 200 and r.json()["stdout"] == "ok\n"


def test_oversized_json_body_is_413(api: httpx.Client, sid: str) -> None:
    from declawd.api.body import MAX_JSON_BODY

    big = b'{"template": "base", "pad": "' + b"x" * (MAX_JSON_BODY + 10) + b'"}'
    r = api.post("/sandboxes", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "body" in r.json()["message"]

    # the same without Content-Length (chunked): the limit holds while streaming
    def chunks() -> Iterator[bytes]:
        yield b'{"cmd": "true", "pad": "'
        for _ in range(MAX_JSON_BODY // 2**20 + 2):
            yield b"x" * 2**20
        yield b'"}'

    r = api.post(f"/sandboxes/{sid}/commands", content=chunks())
    assert r.status_code == 413 and "body" in r.json()["message"]


def test_oversized_header_is_refused_not_500(server: dict[str, str]) -> None:
    with httpx.Client(base_url=server["url"], timeout=30) as c:
        try:
            r = c.get("/sandboxes", headers={"X-API-Key": server["key"], "X-Pad": "x" * (1 << 20)})
            status: int | None = r.status_code
        except (httpx.RemoteProtocolError, httpx.ReadError):
            status = None  # uvicorn (h11) drops the connection: refused, never a 500
        assert status in (None, 400, 431)
    with httpx.Client(base_url=server["url"], timeout=30) as c:
        assert c.get("/health").status_code == 200


def test_path_tricks_stay_inside_the_sandbox(api: httpx.Client, sid: str) -> None:
    def read(path: str) -> httpx.Response:
        return api.get(f"/sandboxes/{sid}/files", params={"path": path})

    own = read("/etc/hostname")
    assert own.status_code == 200 and own.text.strip() == sid
    for trick in ("/../../etc/hostname", "/tmp/../../../../etc/hostname", "//etc//hostname"):
        r = read(trick)
        assert r.status_code == 200 and r.text.strip() == sid, (trick, r.text)
    # a symlink to a host-looking absolute path resolves inside the sandbox too
    r = api.post(f"/sandboxes/{sid}/commands", json={"cmd": "ln -sf /etc/hostname /tmp/l"})
    assert r.status_code == 200
    assert read("/tmp/l").text.strip() == sid
    # writes through `..` land inside the sandbox
    r = api.post(
        f"/sandboxes/{sid}/files", json={"path": "/home/user/../../../tmp/x.txt", "data": "in"}
    )
    assert r.status_code == 200, r.text
    r = api.post(f"/sandboxes/{sid}/commands", json={"cmd": "cat /tmp/x.txt", "user": "root"})
    assert r.json()["stdout"] == "in"
