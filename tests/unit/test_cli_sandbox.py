"""`declawd sandbox ...` through the real SDK against a fake Declaw server (httpx transport):
the requests each command makes, what it prints, its exit status; and where commands find
their server when no flag says."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from declaw.api.client import ApiClient
from declaw.connection_config import ConnectionConfig
from typer.testing import CliRunner

from declawd import cli_options, sandbox_cli
from declawd.cli_options import is_loopback, local_domain, resolve_connection
from declawd.config import Settings

KEY = "dcw_test_key"
VIEW = {
    "sandbox_id": "sbx-1",
    "template_id": "tpl-base",
    "name": "base",
    "alias": "base",
    "metadata": {"declaw.runtime": "runsc"},
    "started_at": "2025-01-02T03:00:00Z",
    "end_at": "2025-01-02T03:05:00Z",
    "state": "running",
    "cpu_count": 2,
    "memory_mb": 1024,
    "runtime": "runsc",
    "network": {"allow_out": ["pypi.org"], "deny_out": ["0.0.0.0/0"]},
}


class FakeDeclaw:
    """The few Declaw routes the CLI uses, with one sandbox `sbx-1` and its files."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.files: dict[str, bytes] = {}
        self.exit_code = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path, method = request.url.path, request.method
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return httpx.Response(401, json={"message": "invalid or revoked API key"})
        if method == "POST" and path == "/sandboxes":
            return httpx.Response(201, json={"sandbox_id": "sbx-1", "traffic_access_token": "t"})
        if method == "GET" and path == "/sandboxes":
            return self._page(request)
        if not path.startswith("/sandboxes/sbx-1"):
            return httpx.Response(
                404, json={"message": f"sandbox {path.split('/')[2]!r} not found"}
            )
        rest = path.removeprefix("/sandboxes/sbx-1")
        if method == "GET" and rest == "":
            return httpx.Response(200, json=VIEW)
        if method == "DELETE" and rest == "":
            return httpx.Response(200, json={"killed": True})
        if method == "POST" and rest == "/commands":
            body = json.loads(request.content)
            return httpx.Response(
                200,
                json={
                    "stdout": f"ran {body['cmd']}\n",
                    "stderr": "warn\n",
                    "exit_code": self.exit_code,
                },
            )
        if method == "PUT" and rest == "/files/raw":
            self.files[request.url.params["path"]] = request.content
            return httpx.Response(200, json={"path": request.url.params["path"], "size": 1})
        if method == "GET" and rest == "/files":
            data = self.files.get(request.url.params["path"])
            if data is None:
                return httpx.Response(404, json={"message": "no such file"})
            return httpx.Response(200, content=data)
        if method == "GET" and rest == "/files/list":
            return httpx.Response(
                200,
                json=[
                    {"name": "d", "path": "/home/user/d", "type": "dir", "size": 0},
                    {"name": "f", "path": "/home/user/f", "type": "file", "size": 5},
                ],
            )
        return httpx.Response(404, json={"message": "no route"})

    def _page(self, request: httpx.Request) -> httpx.Response:
        # two pages, so the command has to follow next_token
        if request.url.params.get("next_token") == "p2":
            return httpx.Response(200, json={"sandboxes": [{**VIEW, "sandbox_id": "sbx-2"}]})
        return httpx.Response(200, json={"sandboxes": [VIEW], "next_token": "p2"})


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeDeclaw:
    server = FakeDeclaw()

    def shared(config: ConnectionConfig) -> ApiClient:
        client = ApiClient(config, max_retries=1)
        for attr in ("_client", "_stream_client"):
            setattr(
                client,
                attr,
                httpx.Client(
                    base_url=config.api_url or "",
                    headers=client._base_headers(),
                    transport=httpx.MockTransport(server),
                ),
            )
        return client

    import declaw.sandbox_sync.main as sdk_main

    monkeypatch.setattr(sandbox_cli, "get_shared_client", shared)
    monkeypatch.setattr(sdk_main, "get_shared_client", shared)
    monkeypatch.setenv("DECLAW_DOMAIN", "localhost:18080")
    monkeypatch.setenv("DECLAW_API_KEY", KEY)
    return server


@pytest.fixture
def app() -> typer.Typer:
    from declawd.cli import app

    return app


def run(app: typer.Typer, *args: str, stdin: bytes | None = None) -> Any:
    return CliRunner().invoke(app, ["sandbox", *args], input=stdin)


def _body(request: httpx.Request) -> dict[str, Any]:
    return dict(json.loads(request.content))


# --- commands -----------------------------------------------------------------------------


def test_create_sends_every_flag_and_prints_the_id(app: typer.Typer, fake: FakeDeclaw) -> None:
    result = run(
        app,
        *("create", "--template", "python", "--timeout", "120", "-e", "A=1=2"),
        *("--metadata", "team=x", "--allow-out", "pypi.org", "--deny-out", "0.0.0.0/0"),
        *("--runtime", "runsc"),
    )
    assert result.exit_code == 0, result.output
    assert result.output == "sbx-1\n"
    body = _body(fake.requests[0])
    assert body["template"] == "python" and body["timeout"] == 120
    assert body["envs"] == {"A": "1=2"}
    assert body["metadata"] == {"team": "x", "declaw.runtime": "runsc"}
    assert body["network"] == {"allow_out": ["pypi.org"], "deny_out": ["0.0.0.0/0"]}
    assert fake.requests[0].url.host == "localhost" and fake.requests[0].url.port == 18080


def test_create_json_prints_the_sandbox_with_its_traffic_token(
    app: typer.Typer, fake: FakeDeclaw
) -> None:
    result = run(app, "create", "--json")
    assert result.exit_code == 0, result.output
    view = json.loads(result.output)
    assert view["sandbox_id"] == "sbx-1" and view["runtime"] == "runsc"
    assert view["traffic_access_token"] == "t"


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["--env", "NOEQUALS"], "--env"),
        (["--runtime", "kata"], "--runtime"),
        (["--runtime", "runc", "--metadata", "declaw.runtime=runsc"], "--runtime"),
    ],
)
def test_create_refuses_bad_flags_before_any_request(
    app: typer.Typer, fake: FakeDeclaw, args: list[str], hint: str
) -> None:
    result = run(app, "create", *args)
    assert result.exit_code == 2 and hint in result.output
    assert fake.requests == []


def test_list_follows_pages_and_prints_a_table_or_json(app: typer.Typer, fake: FakeDeclaw) -> None:
    result = run(app, "list", "--json", "--state", "running", "--state", "paused")
    assert result.exit_code == 0, result.output
    assert [s["sandbox_id"] for s in json.loads(result.output)] == ["sbx-1", "sbx-2"]
    assert fake.requests[0].url.params.get_list("state") == ["running", "paused"]
    table = run(app, "list")
    lines = table.output.splitlines()
    assert lines[0].split() == [
        "SANDBOX",
        "ID",
        "STATE",
        "TEMPLATE",
        "RUNTIME",
        "AGE",
        "CPUS",
        "MEMORY",
    ]
    assert lines[1].split()[:4] == ["sbx-1", "running", "base", "runsc"]
    assert "1024 MiB" in lines[1]
    bad = run(app, "list", "--state", "asleep")
    assert bad.exit_code == 2 and "--state" in bad.output


def test_info_prints_lines_or_the_servers_json(app: typer.Typer, fake: FakeDeclaw) -> None:
    as_json = run(app, "info", "sbx-1", "--json")
    assert as_json.exit_code == 0 and json.loads(as_json.output) == VIEW
    text = run(app, "info", "sbx-1").output
    assert "state:    running" in text and "runtime:  runsc" in text
    assert "deny_out: 0.0.0.0/0" in text and "metadata: declaw.runtime=runsc" in text


def test_exec_exits_with_the_commands_code(app: typer.Typer, fake: FakeDeclaw) -> None:
    fake.exit_code = 3
    result = run(app, "exec", "--cwd", "/tmp", "-e", "X=1", "sbx-1", "sh", "-c", "exit 3")
    assert result.exit_code == 3
    body = _body(fake.requests[0])
    assert body["cmd"] == "sh -c 'exit 3'"
    assert body["cwd"] == "/tmp" and body["envs"] == {"X": "1"} and body["timeout"] == 60
    assert "ran sh -c 'exit 3'" in result.output
    fake.exit_code = 0
    line = run(app, "exec", "--json", "sbx-1", "echo a; echo b")
    assert line.exit_code == 0
    assert json.loads(line.output) == {
        "stdout": "ran echo a; echo b\n",
        "stderr": "warn\n",
        "exit_code": 0,
    }


def test_exec_failure_of_the_call_is_255_not_a_command_status(
    app: typer.Typer, fake: FakeDeclaw
) -> None:
    result = run(app, "exec", "sbx-nope", "true")
    assert result.exit_code == 255
    assert "error: HTTP 404: sandbox 'sbx-nope' not found" in result.output


def test_files_round_trip_is_byte_exact(app: typer.Typer, fake: FakeDeclaw, tmp_path: Path) -> None:
    data = os.urandom(4096) + b"\x00\xff\r\n"
    src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
    src.write_bytes(data)
    put = run(app, "files", "put", "sbx-1", str(src), "/tmp/x.bin")
    assert put.exit_code == 0, put.output
    assert fake.requests[0].headers["content-type"] == "application/octet-stream"
    get = run(app, "files", "get", "sbx-1", "/tmp/x.bin", str(dst))
    assert get.exit_code == 0, get.output
    assert dst.read_bytes() == data
    cat = CliRunner().invoke(app, ["sandbox", "files", "cat", "sbx-1", "/tmp/x.bin"])
    assert cat.stdout_bytes == data
    piped = run(app, "files", "put", "sbx-1", "-", "/tmp/y", stdin=b"from stdin")
    assert piped.exit_code == 0 and fake.files["/tmp/y"] == b"from stdin"
    missing = run(app, "files", "get", "sbx-1", "/nope", str(dst))
    assert missing.exit_code == 1 and "no such file" in missing.output


def test_files_ls_prints_entries_or_json(app: typer.Typer, fake: FakeDeclaw) -> None:
    as_json = run(app, "files", "ls", "sbx-1", "/home/user", "--json")
    assert [e["type"] for e in json.loads(as_json.output)] == ["dir", "file"]
    assert fake.requests[0].url.params["path"] == "/home/user"
    text = run(app, "files", "ls", "sbx-1").output.splitlines()
    assert text[1].split() == ["file", "5", "/home/user/f"]


def test_kill_reports_each_sandbox(app: typer.Typer, fake: FakeDeclaw) -> None:
    result = run(app, "kill", "sbx-1", "sbx-gone")
    assert result.exit_code == 1
    assert "killed sbx-1" in result.output and "error: sbx-gone:" in result.output
    assert fake.requests[0].method == "DELETE" and "async" not in str(fake.requests[0].url)


def test_a_wrong_key_is_an_error_line(
    app: typer.Typer, fake: FakeDeclaw, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run(app, "info", "sbx-1", "--api-key", "dcw_wrong")
    assert result.exit_code == 1
    assert result.output.strip() == "error: HTTP 401: invalid or revoked API key"


# --- where commands find their server -------------------------------------------------------


def test_no_flag_and_no_env_means_this_machines_server_and_its_dev_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / cli_options.DEV_KEY_FILE).write_text("dcw_dev\n")
    monkeypatch.setenv("DECLAWD_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("DECLAWD_PORT", "9090")
    conn = resolve_connection(None, None, environ={})
    assert conn.domain == "127.0.0.1:9090" and conn.api_key == "dcw_dev"
    # the environment wins over the local server, a flag over the environment
    env = {"DECLAW_DOMAIN": "h:1", "DECLAW_API_KEY": "k"}
    assert resolve_connection(None, None, environ=env) == cli_options.Connection("h:1", "k")
    assert resolve_connection("x:2", "f", environ=env) == cli_options.Connection("x:2", "f")
    # the dev key never goes to another machine; the hosted service is never the default
    assert resolve_connection("api.declaw.ai", None, environ={}).api_key == ""
    assert "declaw.ai" not in resolve_connection(None, "k", environ={}).domain


def test_no_key_for_a_remote_server_is_a_usage_error(
    app: typer.Typer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DECLAW_API_KEY", raising=False)
    result = run(app, "list", "--domain", "sandbox.example.com:443")
    assert result.exit_code == 2 and "--api-key" in result.output


@pytest.mark.parametrize(
    ("domain", "local"),
    [
        ("localhost:8080", True),
        ("127.0.0.1:18080", True),
        ("[::1]:8080", True),
        ("127.0.0.2", True),
        ("api.declaw.ai", False),
        ("10.0.0.1:8080", False),
        ("localhost.evil.com:80", False),
    ],
)
def test_loopback_domains(domain: str, local: bool) -> None:
    assert is_loopback(domain) is local


def test_local_domain_dials_loopback_for_a_wildcard_listen() -> None:
    assert local_domain(Settings(host="0.0.0.0", port=81)) == "localhost:81"
    assert local_domain(Settings(host="127.0.0.1")) == "127.0.0.1:8080"


# --- pure helpers ---------------------------------------------------------------------------


def test_helpers() -> None:
    assert sandbox_cli.command_line(["echo hi; exit 3"]) == "echo hi; exit 3"
    assert sandbox_cli.command_line(["printf", "%s", "a b"]) == "printf %s 'a b'"
    assert [sandbox_cli.exit_status(c) for c in (0, 3, 255, 300, -9)] == [0, 3, 255, 255, 137]
    now = datetime(2025, 1, 2, 4, 0, 0, tzinfo=UTC)
    assert [
        sandbox_cli.age(t, now)
        for t in ("2025-01-02T03:59:18Z", "2025-01-02T03:00:00+00:00", "2024-12-30T04:00:00", None)
    ] == ["42s", "1h", "3d", "-"]


def test_docs_cli_names_every_command_and_option() -> None:
    import click

    from declawd.cli import app as root

    text = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()

    def walk(command: click.Command, path: tuple[str, ...]) -> Iterator[tuple[str, click.Command]]:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from walk(sub, (*path, name))
        else:
            yield " ".join(path), command

    for path, command in walk(typer.main.get_command(root), ()):
        assert path in text, path
        if path.startswith("gateway"):
            continue  # an internal daemon: docs point at its --help
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.opts[0].split("/")[0] in text, (path, param.opts[0])


def test_pool_rows_show_each_pool_and_the_budget() -> None:
    summary = {
        "pools": [
            {"template": "python", "runtime": "runc", "ready": 2, "target": 3, "filling": 1},
            {
                "template": "base",
                "runtime": "runsc",
                "ready": 0,
                "target": 1,
                "filling": 0,
                "failures": 2,
            },
        ],
        "parked": 2,
        "memory_bytes": 20 << 20,
        "budget_bytes": 768 << 20,
    }
    assert sandbox_cli.pool_rows(summary) == [
        "TEMPLATE             RUNTIME READY TARGET FILLING",
        "python               runc        2      3       1",
        "base                 runsc       0      1       0  (2 failed)",
        "2 pooled sandboxes use 20 MiB of a 768 MiB budget",
    ]
    empty = {"pools": [], "parked": 0, "memory_bytes": 0, "budget_bytes": 768 << 20}
    assert sandbox_cli.pool_rows(empty)[0].startswith("no warm pools")
