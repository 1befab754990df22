"""The official Declaw SDK against a real server: lifecycle, commands, files, PTY, stdio.

Each test runs on runc and on runsc (gVisor). Assertions are on behaviour the SDK user
sees: exact bytes, exit codes, exception classes, status codes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from declaw import (
    CommandExitException,
    InvalidArgumentException,
    NotFoundException,
    PtySize,
    Sandbox,
    SandboxQuery,
    SandboxState,
    TimeoutException,
)

from tests.e2e.leaks import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture
def sbx(server: dict[str, str], runtime: str) -> Iterator[Sandbox]:
    s = Sandbox.create(
        template="base", timeout=120, metadata={"declaw.runtime": runtime, "suite": "core"}
    )
    try:
        yield s
    finally:
        s.kill(wait=True)


def test_foreground_command_output_and_exit_code(sbx: Sandbox) -> None:
    r = sbx.commands.run("echo out; echo err >&2; exit 3")
    assert (r.stdout, r.stderr, r.exit_code) == ("out\n", "err\n", 3)


def test_default_user_is_unprivileged_user_with_home(sbx: Sandbox) -> None:
    r = sbx.commands.run("id -un; id -u; pwd; echo $HOME")
    assert r.stdout.split() == ["user", "1000", "/home/user", "/home/user"]
    root = sbx.commands.run("id -u; grep CapEff /proc/self/status", user="root")
    assert root.stdout.split()[0] == "0"
    user_caps = sbx.commands.run("grep CapEff /proc/self/status").stdout.split()[1]
    assert int(user_caps, 16) == 0


def test_envs_cwd_and_stdin(server: dict[str, str], runtime: str) -> None:
    s = Sandbox.create(
        template="base", envs={"SBX_WIDE": "yes"}, metadata={"declaw.runtime": runtime}
    )
    try:
        r = s.commands.run("echo $SBX_WIDE $PER_CMD; pwd", envs={"PER_CMD": "1"}, cwd="/tmp")
        assert r.stdout == "yes 1\n/tmp\n"
        assert s.commands.run("cat", stdin="piped").stdout == "piped"
    finally:
        s.kill(wait=True)


def test_large_output_is_exact(sbx: Sandbox) -> None:
    r = sbx.commands.run("head -c 5000000 /dev/zero | tr '\\0' 'x'")
    assert len(r.stdout) == 5_000_000 and set(r.stdout) == {"x"}


def test_foreground_timeout_kills_process_group(sbx: Sandbox) -> None:
    with pytest.raises(TimeoutException):
        sbx.commands.run("sleep 30 & sleep 30; echo never", timeout=1)
    # killed with the group; gone once reaped (polled: a loaded machine reaps later)
    assert eventually(
        lambda: sbx.commands.run("pgrep -c -x sleep || true").stdout.strip() == "0", timeout=10
    )


def test_background_wait_list_stdin_kill(sbx: Sandbox) -> None:
    h = sbx.commands.run("read line; echo got:$line", background=True)
    assert h.pid in [p.pid for p in sbx.commands.list()]
    sbx.commands.send_stdin(h.pid, "hello\n")
    result = h.wait()
    assert result.stdout == "got:hello\n"
    long = sbx.commands.run("sleep 300", background=True)
    assert sbx.commands.kill(long.pid) is True
    with pytest.raises(CommandExitException) as exc:
        long.wait()
    assert exc.value.exit_code == 137
    failing = sbx.commands.run("exit 7", background=True)
    with pytest.raises(CommandExitException) as exc2:
        failing.wait()
    assert exc2.value.exit_code == 7


def test_run_stream_sse(sbx: Sandbox) -> None:
    seen: list[str] = []
    r = sbx.commands.run_stream("for i in 1 2 3; do echo $i; done; exit 4", on_stdout=seen.append)
    assert r.exit_code == 4
    assert "".join(seen).split() == ["1", "2", "3"]


def test_files_roundtrip_and_errors(sbx: Sandbox) -> None:
    info = sbx.files.write("/home/user/dir/a.txt", "hello")
    assert info.path == "/home/user/dir/a.txt" and info.size == 5
    assert sbx.files.read("/home/user/dir/a.txt") == "hello"
    blob = bytes(range(256)) * 4096
    sbx.files.write("/tmp/blob.bin", blob)
    assert bytes(sbx.files.read("/tmp/blob.bin", format="bytes")) == blob
    names = {e.name for e in sbx.files.list("/home/user/dir")}
    assert names == {"a.txt"}
    assert sbx.files.exists("/home/user/dir/a.txt") is True
    assert sbx.files.exists("/home/user/nope") is False
    assert sbx.files.get_info("/home/user/dir").type.value == "dir"
    moved = sbx.files.rename("/home/user/dir/a.txt", "/home/user/dir/b.txt")
    assert moved.path == "/home/user/dir/b.txt"
    assert sbx.files.make_dir("/home/user/new") is True
    assert sbx.files.make_dir("/home/user/new") is False
    sbx.files.remove("/home/user/dir/b.txt")
    with pytest.raises(NotFoundException):
        sbx.files.read("/home/user/dir/b.txt")
    # The default user cannot read root's files: 400 naming the path (never a 403).
    sbx.commands.run("echo secret > /root/secret && chmod 600 /root/secret", user="root")
    with pytest.raises(InvalidArgumentException, match="permission denied"):
        sbx.files.read("/root/secret")
    assert sbx.files.read("/root/secret", user="root") == "secret\n"
    with pytest.raises(InvalidArgumentException, match="absolute"):
        sbx.files.read("relative/path")
    owner = sbx.commands.run("stat -c %U /home/user/dir").stdout.strip()
    assert owner == "user"


def test_files_symlink_stays_inside_sandbox(sbx: Sandbox) -> None:
    sbx.commands.run("ln -s /etc/hostname /tmp/link && ln -s ../../../../../../etc /tmp/up")
    assert sbx.files.read("/tmp/link").strip() == sbx.sandbox_id
    listing = {e.name for e in sbx.files.list("/tmp/up")}
    assert "hostname" in listing  # the sandbox's own /etc, not the host's
    assert sbx.files.read("/tmp/up/hostname").strip() == sbx.sandbox_id


def test_write_files_batch(sbx: Sandbox) -> None:
    from declaw import WriteEntry

    out = sbx.files.write_files([WriteEntry("/tmp/x1", "1"), WriteEntry("/tmp/x2", b"22")])
    assert [(w.path, w.size) for w in out] == [("/tmp/x1", 1), ("/tmp/x2", 2)]


def test_pty_interactive(sbx: Sandbox) -> None:
    h = sbx.pty.create(PtySize(cols=100, rows=30))
    h.send_stdin("stty size; tty; exit 5\n")
    out = b""
    for chunk in h:
        out += chunk
    assert b"30 100" in out and b"/dev/pts/" in out
    assert int(h.wait()) == 5


def test_stdio_pipe(sbx: Sandbox) -> None:
    p = sbx.stdio.start("tr a-z A-Z")
    p.send_stdin(b"hello stdio\n")
    p.close_stdin()
    chunks = [data for name, data in p if name == "stdout"]
    assert b"".join(chunks) == b"HELLO STDIO\n"
    assert int(p.wait()) == 0


def test_lifecycle_info_list_timeout_metrics(sbx: Sandbox) -> None:
    info = sbx.get_info()
    assert info.sandbox_id == sbx.sandbox_id and info.state == SandboxState.RUNNING
    assert info.metadata["suite"] == "core"
    assert sbx.is_running() is True
    listed = Sandbox.list(query=SandboxQuery(metadata={"suite": "core"}))
    assert sbx.sandbox_id in [s["sandbox_id"] for s in listed["sandboxes"]]
    before = sbx.get_info().end_at
    sbx.set_timeout(600)
    assert sbx.get_info().end_at > before
    m = sbx.get_metrics()
    assert m and m[0].memory_usage_mb > 0
    again = Sandbox.connect(sbx.sandbox_id)
    assert again.commands.run("echo hi").stdout == "hi\n"


def test_kill_and_not_found(server: dict[str, str], runtime: str) -> None:
    s = Sandbox.create(template="base", metadata={"declaw.runtime": runtime})
    assert s.kill(wait=True) is True
    assert s.is_running() is False
    with pytest.raises(NotFoundException):
        Sandbox.connect(s.sandbox_id)
    with pytest.raises(NotFoundException):
        s.commands.run("true")


def test_sandbox_timeout_kills(server: dict[str, str], runtime: str) -> None:
    s = Sandbox.create(template="base", timeout=2, metadata={"declaw.runtime": runtime})
    deadline = time.monotonic() + 30
    while s.is_running() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert s.is_running() is False


def test_kill_many(server: dict[str, str]) -> None:
    a = Sandbox.create(template="base")
    b = Sandbox.create(template="base")
    res = Sandbox.kill_many([a.sandbox_id, b.sandbox_id, "sbx-000000000000"], wait=True)
    assert res[a.sandbox_id] == {"killed": True} and res[b.sandbox_id] == {"killed": True}
    assert "error" in res["sbx-000000000000"]


def test_concurrent_commands(sbx: Sandbox) -> None:
    results: list[str] = []

    def work(i: int) -> None:
        results.append(sbx.commands.run(f"echo {i}").stdout.strip())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results, key=int) == [str(i) for i in range(10)]


def test_bad_input_statuses(server: dict[str, str]) -> None:
    h = {"X-API-Key": server["key"]}
    url = server["url"]
    cases = [
        ({"template": "nope"}, 404, "template 'nope'"),
        ({"template": "base", "timeout": -1}, 400, "timeout"),
        ({"template": "base", "timeout": 10**9}, 400, "timeout"),
        ({"template": 5}, 400, "template"),
        ({"template": "base", "envs": {"A": 1}}, 400, "envs.A"),
        ({"template": "base", "network": {"allow_out": ["300.1.1.1/8"]}}, 400, "network.allow_out"),
        ({"template": "base", "network": {"allow_out": ["example.com"]}}, 400, "network"),
        (
            {"template": "base", "security": {"policy_json": '{"toxicity": {"enabled": true}}'}},
            501,
            "security.toxicity: no offline detector meets the bar",
        ),
        (
            {"template": "base", "security": {"policy_json": '{"pii": {"types": ["dna"]}}'}},
            400,
            "security.policy_json.pii.types[0]",
        ),
        ({"template": "base", "lifecycle": {"on_timeout": "never"}}, 400, "lifecycle.on_timeout"),
    ]
    for body, status, needle in cases:
        r = httpx.post(url + "/sandboxes", json=body, headers=h)
        assert r.status_code == status, (body, r.text)
        assert needle in r.json()["message"], (body, r.text)
    r = httpx.post(url + "/sandboxes", content=b"{not json", headers=h)
    assert r.status_code == 400 and "JSON" in r.json()["message"]
    assert httpx.get(url + "/sandboxes/sbx-000000000000", headers=h).status_code == 404
    assert httpx.get(url + "/nope", headers=h).status_code == 404
    assert httpx.get(url + "/sandboxes", headers={"X-API-Key": "wrong"}).status_code == 401
    assert httpx.get(url + "/sandboxes").status_code == 401
    assert httpx.post(url + "/sandboxes/sbx-000000000000/pause", headers=h).status_code == 404
    assert httpx.get(url + "/governance/packs", headers=h).status_code == 200
    assert httpx.get(url + "/health").json()["ok"] is True


def test_idempotency_key(server: dict[str, str]) -> None:
    h = {"X-API-Key": server["key"], "Idempotency-Key": f"k-{time.time()}"}
    body = {"template": "base", "timeout": 60}
    first = httpx.post(server["url"] + "/sandboxes", json=body, headers=h, timeout=60)
    again = httpx.post(server["url"] + "/sandboxes", json=body, headers=h, timeout=60)
    assert first.status_code == 201 and again.status_code == 201
    assert first.json()["sandbox_id"] == again.json()["sandbox_id"]
    other = httpx.post(server["url"] + "/sandboxes", json={**body, "timeout": 61}, headers=h)
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"
    Sandbox.kill_by_id(first.json()["sandbox_id"], wait=True)
