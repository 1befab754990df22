"""Malformed API requests against the real server: table-driven, one row per kind of mistake.

Every row states the status declaw-api.md §11.2 prescribes and the exact message, which
names the field once. Beyond the table: oversized bodies and headers never 500,
unknown fields are ignored, and path tricks stay inside the sandbox's own view.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.e2e

# (id, method, path, json body | raw bytes, expected status, the exact message; `{sid}`
# stands for the test sandbox). Each message names its field once, first.
CASES: list[tuple[str, str, str, Any, int, str]] = [
    ('create-template-int', 'POST', '/sandboxes', {'template': 5}, 400, 'template: must be a string'),
    ('create-timeout-str', 'POST', '/sandboxes', {'timeout': '10'}, 400, 'timeout: must be an integer number of seconds'),
    ('create-timeout-bool', 'POST', '/sandboxes', {'timeout': True}, 400, 'timeout: must be an integer number of seconds'),
    ('create-timeout-neg', 'POST', '/sandboxes', {'timeout': -1}, 400, 'timeout: must not be negative'),
    ('create-timeout-huge', 'POST', '/sandboxes', {'timeout': 1000000000}, 400, 'timeout: at most 86400 seconds'),
    ('create-metadata-list', 'POST', '/sandboxes', {'metadata': ['a']}, 400, 'metadata: must be an object'),
    ('create-metadata-val', 'POST', '/sandboxes', {'metadata': {'a': 1}}, 400, 'metadata.a: must be a string'),
    ('create-envs-str', 'POST', '/sandboxes', {'envs': 'A=1'}, 400, 'envs: must be an object'),
    ('create-envs-val', 'POST', '/sandboxes', {'envs': {'A': None}}, 400, 'envs.A: must be a string'),
    ('create-secure-str', 'POST', '/sandboxes', {'secure': 'yes'}, 400, 'secure: must be a boolean'),
    ('create-network-allow-str', 'POST', '/sandboxes', {'network': {'allow_out': 'x.com'}}, 400, 'network.allow_out: must be an array'),
    ('create-network-deny-int', 'POST', '/sandboxes', {'network': {'deny_out': [1]}}, 400, 'network.deny_out[0]: must be a string'),
    ('create-network-bad-cidr', 'POST', '/sandboxes', {'network': {'deny_out': ['10.0.0.0/99']}}, 400, "network.deny_out[0]: invalid entry '10.0.0.0/99': must be an IP address or CIDR"),
    ('create-network-domain-no-deny', 'POST', '/sandboxes', {'network': {'allow_out': ['x.com']}}, 400, "network.allow_out[0]: a domain allow-list needs ALL_TRAFFIC ('0.0.0.0/0') or '::/0' in deny_out"),
    ('create-security-network-bad', 'POST', '/sandboxes', {'security': {'policy_json': '{"network": {"deny_out": ["1.2.3.4/40"]}}'}}, 400, "security.policy_json.network.deny_out[0]: invalid entry '1.2.3.4/40': must be an IP address or CIDR"),
    ('create-lifecycle-str', 'POST', '/sandboxes', {'lifecycle': 'kill'}, 400, 'lifecycle: must be an object'),
    ('create-runtime-bad', 'POST', '/sandboxes', {'metadata': {'declaw.runtime': 'kvm'}}, 400, "metadata.declaw.runtime: must be 'runc' or 'runsc'"),
    ('create-unknown-template', 'POST', '/sandboxes', {'template': 'nope'}, 404, "template 'nope' not found"),
    ('create-volumes-no-id', 'POST', '/sandboxes', {'volumes': [{'a': 'b'}]}, 400, 'volumes[0].volume_id: is required'),
    ('create-lifecycle-bad', 'POST', '/sandboxes', {'lifecycle': {'on_timeout': 'sleep'}}, 400, "lifecycle.on_timeout: must be 'kill' or 'pause'"),
    ('create-lifecycle-resume-str', 'POST', '/sandboxes', {'lifecycle': {'auto_resume': 'yes'}}, 400, 'lifecycle.auto_resume: must be a boolean'),
    ('create-invalid-utf8', 'POST', '/sandboxes', b'{"template": "\xff\xfe"}', 400, "request body: malformed JSON ('utf-8' codec can't decode byte 0xff in position 14: invalid start byte)"),
    ('create-malformed', 'POST', '/sandboxes', b'{"template": ', 400, 'request body: malformed JSON (Expecting value: line 1 column 14 (char 13))'),
    ('create-array', 'POST', '/sandboxes', b'[1, 2]', 400, 'request body: must be a JSON object'),
    ('create-string', 'POST', '/sandboxes', b'"base"', 400, 'request body: must be a JSON object'),
    ('cmd-empty-body', 'POST', '/sandboxes/{sid}/commands', b'', 400, 'request body: a JSON object is required'),
    ('cmd-missing', 'POST', '/sandboxes/{sid}/commands', {}, 400, 'cmd: is required'),
    ('cmd-int', 'POST', '/sandboxes/{sid}/commands', {'cmd': 1}, 400, 'cmd: must be a string'),
    ('cmd-background-str', 'POST', '/sandboxes/{sid}/commands', {'cmd': 'true', 'background': 'no'}, 400, 'background: must be a boolean'),
    ('cmd-timeout-neg', 'POST', '/sandboxes/{sid}/commands', {'cmd': 'true', 'timeout': -5}, 400, 'timeout: must not be negative'),
    ('cmd-timeout-str', 'POST', '/sandboxes/{sid}/commands', {'cmd': 'true', 'timeout': '1'}, 400, 'timeout: must be a number'),
    ('cmd-cwd-relative', 'POST', '/sandboxes/{sid}/commands', {'cmd': 'true', 'cwd': 'tmp'}, 400, "cwd: must be an absolute path, got 'tmp'"),
    ('cmd-envs-list', 'POST', '/sandboxes/{sid}/commands', {'cmd': 'true', 'envs': ['A=1']}, 400, 'envs: must be an object'),
    ('cmd-user-int', 'POST', '/sandboxes/{sid}/commands', {'cmd': 'true', 'user': 0}, 400, 'user: must be a string'),
    ('cmd-stdin-int', 'POST', '/sandboxes/{sid}/commands', {'cmd': 'cat', 'stdin': 5}, 400, 'stdin: must be a string'),
    ('cmd-kill-pid-str', 'DELETE', '/sandboxes/{sid}/commands/abc', None, 400, "pid: must be an integer, got 'abc'"),
    ('cmd-kill-pid-neg', 'DELETE', '/sandboxes/{sid}/commands/-3', None, 400, 'pid: must be positive'),
    ('cmd-stdin-missing', 'POST', '/sandboxes/{sid}/commands/1/stdin', {}, 400, 'data: is required'),
    ('files-write-path-missing', 'POST', '/sandboxes/{sid}/files', {'data': 'x'}, 400, 'path: is required'),
    ('files-write-path-relative', 'POST', '/sandboxes/{sid}/files', {'path': 'a.txt'}, 400, "path: must be an absolute path, got 'a.txt'"),
    ('files-write-path-nul', 'POST', '/sandboxes/{sid}/files', {'path': '/tmp/a\x00b'}, 400, 'path: must not contain NUL'),
    ('files-write-data-int', 'POST', '/sandboxes/{sid}/files', {'path': '/tmp/a', 'data': 1}, 400, 'data: must be a string'),
    ('files-write-user-int', 'POST', '/sandboxes/{sid}/files', {'path': '/tmp/a', 'username': 3}, 400, 'username: must be a string'),
    ('files-batch-not-list', 'POST', '/sandboxes/{sid}/files/batch', {'files': {}}, 400, 'files: must be an array'),
    ('files-batch-item', 'POST', '/sandboxes/{sid}/files/batch', {'files': ['x']}, 400, 'files[0]: must be an object'),
    ('files-batch-relative', 'POST', '/sandboxes/{sid}/files/batch', {'files': [{'path': 'rel', 'data': ''}]}, 400, "files[0].path: must be an absolute path, got 'rel'"),
    ('files-rename-missing', 'PATCH', '/sandboxes/{sid}/files', {'old_path': '/tmp/a'}, 400, 'new_path: is required'),
    ('files-read-relative', 'GET', '/sandboxes/{sid}/files?path=etc/hostname', None, 400, "path: must be an absolute path, got 'etc/hostname'"),
    ('files-read-missing', 'GET', '/sandboxes/{sid}/files?path=/nope/nothing', None, 404, 'not found: /nope/nothing'),
    ('files-read-nul', 'GET', '/sandboxes/{sid}/files?path=/tmp/%00x', None, 400, 'path: must not contain NUL'),
    ('files-read-dir', 'GET', '/sandboxes/{sid}/files?path=/tmp', None, 400, 'path: is a directory: /tmp'),
    ('files-list-relative', 'GET', '/sandboxes/{sid}/files/list?path=tmp', None, 400, "path: must be an absolute path, got 'tmp'"),
    ('files-perm', 'GET', '/sandboxes/{sid}/files?path=/root/secret', None, 400, 'permission denied: /root/secret'),
    ('pty-size-zero', 'POST', '/sandboxes/{sid}/pty', {'size': {'cols': 0, 'rows': 24}}, 400, 'size: cols and rows must be between 1 and 1000'),
    ('pty-size-str', 'POST', '/sandboxes/{sid}/pty', {'size': {'cols': '80', 'rows': 24}}, 400, 'size.cols: must be an integer'),
    ('pty-size-list', 'POST', '/sandboxes/{sid}/pty', {'size': [80, 24]}, 400, 'size: must be an object'),
    ('pty-size-huge', 'POST', '/sandboxes/{sid}/pty', {'size': {'cols': 80, 'rows': 1000000}}, 400, 'size: cols and rows must be between 1 and 1000'),
    ('pty-resize-zero', 'PATCH', '/sandboxes/{sid}/pty/1', {'size': {'cols': 0, 'rows': 0}}, 400, 'size: cols and rows must be between 1 and 1000'),
    ('pty-stdin-missing', 'POST', '/sandboxes/{sid}/pty/1/stdin', {}, 400, 'data: is required'),
    ('stdio-cmd-missing', 'POST', '/sandboxes/{sid}/stdio', {}, 400, 'cmd: is required'),
    ('stdio-stdin-not-b64', 'POST', '/sandboxes/{sid}/stdio/1/stdin', {'data': '%%%'}, 400, 'data: must be base64'),
    ('stdio-stdin-int', 'POST', '/sandboxes/{sid}/stdio/1/stdin', {'data': 5}, 400, 'data: must be a string'),
    ('net-allow-str', 'PUT', '/sandboxes/{sid}/network', {'allow_out': 'x'}, 400, 'allow_out: must be an array'),
    ('net-deny-obj', 'PUT', '/sandboxes/{sid}/network', {'deny_out': {'a': 1}}, 400, 'deny_out: must be an array'),
    ('net-bad-cidr', 'PUT', '/sandboxes/{sid}/network', {'deny_out': ['1.2.3.4/40']}, 400, "deny_out[0]: invalid entry '1.2.3.4/40': must be an IP address or CIDR"),
    ('net-array', 'PUT', '/sandboxes/{sid}/network', b'[]', 400, 'request body: must be a JSON object'),
    ('timeout-missing', 'PATCH', '/sandboxes/{sid}/timeout', {}, 400, 'timeout: is required'),
    ('timeout-str', 'PATCH', '/sandboxes/{sid}/timeout', {'timeout': '5'}, 400, 'timeout: must be an integer number of seconds'),
    ('timeout-neg', 'PATCH', '/sandboxes/{sid}/timeout', {'timeout': -1}, 400, 'timeout: must not be negative'),
    ('timeout-huge', 'PATCH', '/sandboxes/{sid}/timeout', {'timeout': 1000000000}, 400, 'timeout: at most 86400 seconds'),
    ('connect-timeout-str', 'GET', '/sandboxes/{sid}?timeout=abc', None, 400, 'timeout: must be an integer'),
    ('unknown-sandbox', 'GET', '/sandboxes/sbx-000000000000', None, 404, "sandbox 'sbx-000000000000' not found"),
    ('unknown-route', 'GET', '/nothing/here', None, 404, 'route not found: GET /nothing/here'),
    ('list-bad-state', 'GET', '/sandboxes?state=zombie', None, 400, "state: unknown state 'zombie'"),
    ('list-bad-limit', 'GET', '/sandboxes?limit=0', None, 400, 'limit: must be at least 1'),
]  # fmt: skip


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
    ("method", "path", "body", "status", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_request(
    api: httpx.Client, sid: str, method: str, path: str, body: Any, status: int, expected: str
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
    assert r.json()["message"] == expected.replace("{sid}", sid), r.text
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
