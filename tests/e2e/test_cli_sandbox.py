"""`declawd sandbox ...` as a user runs it: the installed command in a subprocess against the
live test server, in both runtimes. Create, list, info, exec exit codes, a binary file round
trip, files ls/cat, an interactive shell on a pseudo-terminal, kill; and the defaults: with no
DECLAW_* variable set the commands find the local server and its dev key."""

from __future__ import annotations

import hashlib
import json
import os
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import conftest as c

pytestmark = pytest.mark.e2e


def declawd(
    server: dict[str, str], *args: str, env: dict[str, str] | None = None, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    base = {**os.environ, "DECLAW_DOMAIN": server["domain"], "DECLAW_API_KEY": server["key"]}
    return subprocess.run(
        [str(c.BIN / "declawd"), *args],
        env=env if env is not None else base,
        input=stdin,
        capture_output=True,
        timeout=180,
    )


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stdout.decode()


def as_json(result: subprocess.CompletedProcess[bytes]) -> Any:
    return json.loads(ok(result))


@pytest.fixture(scope="module", params=c.RUNTIMES)
def sandbox(request: pytest.FixtureRequest, server: dict[str, str]) -> Iterator[dict[str, Any]]:
    runtime = request.param
    view = as_json(
        declawd(
            server,
            *("sandbox", "create", "--json", "--timeout", "600", "--runtime", runtime),
            *("--env", "GREETING=hello there", "--metadata", "suite=cli"),
            *("--allow-out", "pypi.org", "--deny-out", "0.0.0.0/0"),
        )
    )
    try:
        yield view
    finally:
        declawd(server, "sandbox", "kill", view["sandbox_id"])


def test_create_json_list_and_info(server: dict[str, str], sandbox: dict[str, Any]) -> None:
    sid = sandbox["sandbox_id"]
    assert sandbox["state"] == "running"
    assert sandbox["metadata"]["suite"] == "cli"
    assert sandbox["runtime"] == sandbox["metadata"]["declaw.runtime"]
    assert sandbox["network"]["deny_out"] == ["0.0.0.0/0"]
    listed = as_json(declawd(server, "sandbox", "list", "--json", "--metadata", "suite=cli"))
    assert sid in [s["sandbox_id"] for s in listed]
    table = ok(declawd(server, "sandbox", "list"))
    assert any(line.split()[:2] == [sid, "running"] for line in table.splitlines())
    info = as_json(declawd(server, "sandbox", "info", "--json", sid))
    assert info["sandbox_id"] == sid and info["runtime"] == sandbox["runtime"]
    assert f"sandbox:  {sid}" in ok(declawd(server, "sandbox", "info", sid))


def test_exec_exit_codes_output_and_env(server: dict[str, str], sandbox: dict[str, Any]) -> None:
    sid = sandbox["sandbox_id"]
    done = declawd(server, "sandbox", "exec", sid, 'echo "$GREETING"; echo oops >&2')
    assert done.returncode == 0
    assert done.stdout == b"hello there\n" and done.stderr == b"oops\n"
    failed = declawd(server, "sandbox", "exec", sid, "sh", "-c", "echo partial; exit 3")
    assert failed.returncode == 3 and failed.stdout == b"partial\n"
    result = declawd(server, "sandbox", "exec", "--json", "--cwd", "/tmp", sid, "pwd; exit 4")
    assert result.returncode == 4
    assert json.loads(result.stdout) == {"stdout": "/tmp\n", "stderr": "", "exit_code": 4}
    missing = declawd(server, "sandbox", "exec", "sbx-000000000000", "true")
    assert missing.returncode == 255 and b"error:" in missing.stderr


def test_files_put_get_ls_cat(
    server: dict[str, str], sandbox: dict[str, Any], tmp_path: Path
) -> None:
    sid = sandbox["sandbox_id"]
    data = os.urandom(300_000) + b"\x00\r\n\xff"
    src, dst = tmp_path / "blob.bin", tmp_path / "back.bin"
    src.write_bytes(data)
    ok(declawd(server, "sandbox", "files", "put", sid, str(src), "/home/user/cli/blob.bin"))
    ok(declawd(server, "sandbox", "files", "get", sid, "/home/user/cli/blob.bin", str(dst)))
    assert dst.read_bytes() == data
    same = ok(declawd(server, "sandbox", "exec", sid, "sha256sum /home/user/cli/blob.bin"))
    assert same.split()[0] == hashlib.sha256(data).hexdigest()
    entries = as_json(declawd(server, "sandbox", "files", "ls", "--json", sid, "/home/user/cli"))
    assert [(e["name"], e["type"], e["size"]) for e in entries] == [("blob.bin", "file", len(data))]
    ok(declawd(server, "sandbox", "files", "put", sid, "-", "/home/user/cli/t", stdin=b"a\nb\n"))
    cat = declawd(server, "sandbox", "files", "cat", sid, "/home/user/cli/t")
    assert cat.returncode == 0 and cat.stdout == b"a\nb\n"
    missing = declawd(server, "sandbox", "files", "cat", sid, "/home/user/cli/none")
    assert missing.returncode == 1 and missing.stderr.startswith(b"error:")


def test_shell_on_a_pseudo_terminal(server: dict[str, str], sandbox: dict[str, Any]) -> None:
    controller, term = os.openpty()
    env = {**os.environ, "DECLAW_DOMAIN": server["domain"], "DECLAW_API_KEY": server["key"]}
    proc = subprocess.Popen(
        [str(c.BIN / "declawd"), "sandbox", "shell", sandbox["sandbox_id"]],
        stdin=term,
        stdout=term,
        stderr=term,
        env=env,
        start_new_session=True,
    )
    os.close(term)
    seen = b""
    try:
        time.sleep(1)  # let the shell start; keys typed earlier would wait in the PTY anyway
        # the arithmetic shows the shell ran it: the typed line itself never contains 42
        os.write(controller, b"echo hi-$((40+2)); exit 5\r")
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1)
            if ready:
                try:
                    seen += os.read(controller, 4096)
                except OSError:  # the terminal closed with the command
                    break
        assert proc.wait(30) == 5, seen
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(controller)
    assert b"hi-42" in seen, seen


def test_kill_then_gone(server: dict[str, str]) -> None:
    sid = ok(declawd(server, "sandbox", "create", "--timeout", "120")).strip()
    assert sid.startswith("sbx-")
    assert ok(declawd(server, "sandbox", "kill", sid)).strip() == f"killed {sid}"
    listed = as_json(declawd(server, "sandbox", "list", "--json"))
    assert sid not in [s["sandbox_id"] for s in listed]
    again = declawd(server, "sandbox", "kill", sid)
    assert again.returncode == 1 and b"error:" in again.stderr


def test_defaults_are_the_local_server_and_its_dev_key(server: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DECLAW_")}
    env.update(DECLAWD_STATE_DIR=str(c.STATE_DIR), DECLAWD_PORT=str(c.PORT))
    listed = declawd(server, "sandbox", "list", "--json", env=env)
    assert isinstance(as_json(listed), list)
    wrong = declawd(server, "sandbox", "list", "--api-key", "dcw_not_a_key", env=env)
    assert wrong.returncode == 1 and b"401" in wrong.stderr
