"""envd driven through EnvdClient: a real envd binary on the host, as root.

envd is not PID 1 here; it makes itself a child subreaper, so orphan reaping and
process-group semantics are the same as inside a sandbox. Each module gets one envd
on a socket in a temp dir and kills it in teardown.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from declawd.envd import ensure_envd
from declawd.node.envd_client import (
    CommandTimeout,
    EnvdClient,
    EnvdInvalid,
    EnvdNotFound,
    EnvdPermissionDenied,
    EnvdUnavailable,
    ProcessEvent,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="envd switches users: needs root"),
]

ENVD_BIN = Path("/tmp/declawd-test-envd/envd")
NOBODY = 65534
# Commands run as nobody: no home dir, so a login shell reads only /etc/profile and
# the tests do not depend on the host root's dotfiles.
RUNNER = "nobody"


@pytest.fixture(scope="session")
def envd_binary() -> Path:
    return ensure_envd(ENVD_BIN)


class EnvdProcess:
    def __init__(self, binary: Path, directory: Path) -> None:
        self.socket = directory / "envd.sock"
        self.log = directory / "envd.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(binary), "--socket", str(self.socket)], stdout=log, stderr=log
            )
        for _ in range(500):
            if self.socket.exists() or self.proc.poll() is not None:
                break
            time.sleep(0.01)
        assert self.socket.exists(), self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def envd(envd_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvdProcess]:
    p = EnvdProcess(envd_binary, tmp_path_factory.mktemp("envd"))
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
async def client(envd: EnvdProcess) -> AsyncIterator[EnvdClient]:
    c = EnvdClient(str(envd.socket))
    try:
        yield c
    finally:
        await c.aclose()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A root-owned 0755 directory that every user can reach (pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="envd-test-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def shared_dir(open_dir: Path) -> Path:
    """A sticky world-writable directory, like /tmp."""
    d = open_dir / "shared"
    d.mkdir()
    d.chmod(0o1777)
    return d


async def collect(client: EnvdClient, pid: int, since: int = 0) -> list[ProcessEvent]:
    return [e async for e in client.events(pid, since)]


async def read_until(it: AsyncIterator[ProcessEvent], needle: bytes) -> bytes:
    seen = b""
    async for e in it:
        seen += e.data
        if needle in seen or e.type == "exit":
            break
    return seen


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# -- processes -------------------------------------------------------------------


async def test_health(client: EnvdClient) -> None:
    assert await client.health() is True


async def test_run_returns_exact_bytes_and_exit_code(client: EnvdClient) -> None:
    r = await client.run(r"printf 'a\0b\377\n'; printf err >&2; exit 7", user=RUNNER)
    assert (r.stdout, r.stderr, r.exit_code) == (b"a\0b\xff\n", b"err", 7)


async def test_ten_megabytes_of_output_arrive_intact(client: EnvdClient) -> None:
    r = await client.run("yes abcdefghi | head -c 10000000", user=RUNNER)
    assert r.exit_code == 0
    assert r.stdout == b"abcdefghi\n" * 1_000_000


async def test_stdin_is_written_then_closed(client: EnvdClient) -> None:
    r = await client.run("cat; echo end", user=RUNNER, stdin=b"hello\0world")
    assert r.stdout == b"hello\0worldend\n"


async def test_kept_stdin_takes_later_writes(client: EnvdClient) -> None:
    pid = await client.start("cat", user=RUNNER, stdin=b"one ", keep_stdin=True)
    await client.send_stdin(pid, b"two ")
    await client.send_stdin(pid, b"three")
    await client.close_stdin(pid)
    assert (await client.wait(pid)).stdout == b"one two three"


async def test_background_process_is_listed_then_waited(client: EnvdClient) -> None:
    pid = await client.start(
        "read x; echo got $x", user=RUNNER, keep_stdin=True, tag="bg", envs={"A": "1"}
    )
    info = {p.pid: p for p in await client.list()}[pid]
    assert (info.running, info.tag, info.envs, info.cmd) == (True, "bg", {"A": "1"}, info.cmd)
    await client.send_stdin(pid, b"it\n")
    r = await client.wait(pid)
    assert (r.stdout, r.exit_code) == (b"got it\n", 0)
    info = {p.pid: p for p in await client.list()}[pid]
    assert (info.running, info.exit_code) == (False, 0)


async def test_events_are_numbered_and_replayable(client: EnvdClient) -> None:
    pid = await client.start("echo a; echo b >&2; echo c", user=RUNNER)
    events = await collect(client, pid)
    assert events[-1].type == "exit" and events[-1].exit_code == 0
    output = events[:-1]
    assert [e.seq for e in output] == list(range(1, len(output) + 1))
    assert b"".join(e.data for e in output if e.type == "stdout") == b"a\nc\n"
    assert b"".join(e.data for e in output if e.type == "stderr") == b"b\n"
    replay = await collect(client, pid, since=output[0].seq)
    assert [e.seq for e in replay[:-1]] == [e.seq for e in output[1:]]


async def test_dropping_an_event_stream_leaves_the_process_running(client: EnvdClient) -> None:
    pid = await client.start(
        "for i in $(seq 200); do echo line$i; done; read x", user=RUNNER, keep_stdin=True
    )
    async for e in client.events(pid):
        assert e.data.startswith(b"line1")
        break  # drops the connection mid-stream
    await client.send_stdin(pid, b"\n")
    r = await client.wait(pid)
    assert r.exit_code == 0
    assert r.stdout.splitlines()[-1] == b"line200"


async def test_signal_kills_the_whole_process_group(client: EnvdClient) -> None:
    pid = await client.start("sleep 1000 & echo $!; sleep 1000 & echo $!; wait", user=RUNNER)
    out = b""
    async for e in client.events(pid):
        out += e.data
        if out.count(b"\n") >= 2:
            break
    grandchildren = [int(x) for x in out.split()]
    assert not any(gone(p) for p in grandchildren)
    assert await client.signal(pid, signal.SIGKILL) is True
    r = await client.wait(pid)
    assert (r.exit_code, r.signal) == (128 + 9, 9)
    for _ in range(500):
        if all(gone(p) for p in grandchildren):
            break
        await asyncio.sleep(0.01)
    assert all(gone(p) for p in grandchildren)
    assert await client.signal(pid, signal.SIGKILL) is False


async def test_run_timeout_kills_and_reports_partial_output(client: EnvdClient) -> None:
    with pytest.raises(CommandTimeout) as exc:
        await client.run("echo started; exec sleep 1000", user=RUNNER, timeout=0.5)
    assert exc.value.stdout == b"started\n"
    info = {p.pid: p for p in await client.list()}[exc.value.pid]
    assert (info.running, info.exit_code) == (False, 137)


async def test_pty_is_the_controlling_terminal(client: EnvdClient) -> None:
    pid = await client.start("tty; echo $TERM", user=RUNNER, pty=(80, 24))
    r = await client.wait(pid)
    assert re.fullmatch(rb"/dev/pts/\d+\r\nxterm-256color\r\n", r.stdout), r.stdout
    assert (await client.info(pid)).is_pty


async def test_pty_echoes_interactive_input_and_resizes(client: EnvdClient) -> None:
    pid = await client.start("stty size; cat", user=RUNNER, pty=(80, 24))
    events = client.events(pid)
    assert b"24 80" in await read_until(events, b"24 80\r\n")
    await client.send_stdin(pid, b"hello\n")
    seen = await read_until(events, b"hello\r\nhello\r\n")
    assert b"hello\r\nhello\r\n" in seen  # terminal echo, then cat's copy
    await client.resize(pid, 100, 40)
    await client.signal(pid, signal.SIGKILL)
    await events.aclose()
    pid2 = await client.start("read x; stty size", user=RUNNER, pty=(80, 24))
    await client.resize(pid2, 120, 50)
    await client.send_stdin(pid2, b"\n")
    assert b"50 120" in (await client.wait(pid2)).stdout


async def test_pty_attach_with_since_minus_one_skips_history(client: EnvdClient) -> None:
    pid = await client.start("echo old; read x; echo new", user=RUNNER, pty=(80, 24))
    events = client.events(pid)
    await read_until(events, b"old\r\n")
    await events.aclose()
    live = client.events(pid, since=-1)
    task = asyncio.ensure_future(read_until(live, b"new"))
    await asyncio.sleep(0.2)  # let the attach happen before the input
    await client.send_stdin(pid, b"x\n")
    seen = await task
    assert b"new" in seen and b"old" not in seen


async def test_commands_run_as_the_user_with_login_env(client: EnvdClient) -> None:
    r = await client.run(
        'id -u; id -g; echo "$HOME:$USER:$LOGNAME:$FOO"; pwd', user="nobody", envs={"FOO": "bar"}
    )
    assert r.stdout.decode().splitlines() == [
        str(NOBODY),
        str(NOBODY),
        "/nonexistent:nobody:nobody:bar",
        "/",
    ]


async def test_unknown_user_missing_cwd_and_pid_are_errors(client: EnvdClient) -> None:
    with pytest.raises(EnvdInvalid, match="nosuchuser"):
        await client.start("true", user="nosuchuser")
    with pytest.raises(EnvdInvalid, match="/no/such/dir"):
        await client.start("true", user=RUNNER, cwd="/no/such/dir")
    with pytest.raises(EnvdNotFound):
        await client.wait(999_999_999)


async def test_cwd_is_honoured(client: EnvdClient, tmp_path: Path) -> None:
    r = await client.run("pwd", user="root", cwd=str(tmp_path))
    assert r.stdout == f"{tmp_path}\n".encode()


async def test_orphans_are_reaped(client: EnvdClient, envd: EnvdProcess) -> None:
    r = await client.run("sleep 0.2 & echo $!", user=RUNNER)
    orphan = int(r.stdout)
    for _ in range(500):
        if gone(orphan) and not os.path.exists(f"/proc/{orphan}"):
            break
        await asyncio.sleep(0.01)
    assert not os.path.exists(f"/proc/{orphan}")


async def test_concurrent_runs_do_not_mix_output(client: EnvdClient) -> None:
    results = await asyncio.gather(
        *(client.run(f"echo {i}; exit {i % 7}", user=RUNNER) for i in range(40))
    )
    assert [(r.stdout, r.exit_code) for r in results] == [
        (f"{i}\n".encode(), i % 7) for i in range(40)
    ]


async def test_sigterm_stops_children_and_envd(envd_binary: Path, tmp_path: Path) -> None:
    p = EnvdProcess(envd_binary, tmp_path)
    try:
        async with EnvdClient(str(p.socket)) as c:
            pid = await c.start("exec sleep 1000", user=RUNNER)
            p.proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(p.proc.wait, 30) == 0
            assert gone(pid)
            with pytest.raises(EnvdUnavailable):
                await c.list()
    finally:
        p.stop()


async def test_true_round_trip_latency(client: EnvdClient) -> None:
    samples = []
    for _ in range(200):
        t0 = time.perf_counter()
        r = await client.run("true", user=RUNNER)
        samples.append(time.perf_counter() - t0)
        assert r.exit_code == 0
    samples.sort()
    print(
        f"\nenvd start+wait of `true`: p50 {samples[100] * 1000:.2f} ms, "
        f"p90 {samples[180] * 1000:.2f} ms"
    )


# -- files -----------------------------------------------------------------------


async def test_write_then_read_creates_parents(client: EnvdClient, tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "f.bin"
    data = bytes(range(256)) * 1000
    assert await client.write_file(str(target), data, "root") == len(data)
    assert await client.read_file(str(target), "root") == data
    assert target.read_bytes() == data


async def test_streamed_write_and_read(client: EnvdClient, tmp_path: Path) -> None:
    chunk = os.urandom(1 << 20)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield chunk

    target = str(tmp_path / "big")
    assert await client.write_file(target, body(), "root") == 5 << 20
    got = b"".join([c async for c in client.read_file_stream(target, "root")])
    assert got == chunk * 5


async def test_file_errors_carry_codes(client: EnvdClient, tmp_path: Path) -> None:
    with pytest.raises(EnvdNotFound):
        await client.read_file(str(tmp_path / "missing"), "root")
    with pytest.raises(EnvdInvalid, match="path must be absolute: rel/x"):
        await client.read_file("rel/x", "root")
    with pytest.raises(EnvdInvalid) as exc:
        await client.read_file(str(tmp_path), "root")
    assert exc.value.code == "is_directory"


async def test_nobody_cannot_read_a_private_root_file(client: EnvdClient, open_dir: Path) -> None:
    tmp_path = open_dir
    (tmp_path / "public").write_bytes(b"pub")
    assert await client.read_file(str(tmp_path / "public"), "nobody") == b"pub"
    secret = tmp_path / "secret"
    secret.write_bytes(b"s3cret")
    secret.chmod(0o600)
    with pytest.raises(EnvdPermissionDenied) as exc:
        await client.read_file(str(secret), "nobody")
    assert exc.value.code == "permission_denied"
    assert exc.value.message == f"permission denied: {secret}"
    with pytest.raises(EnvdPermissionDenied):
        await client.write_file(str(tmp_path / "new"), b"x", "nobody")
    assert await client.read_file(str(secret), "root") == b"s3cret"


async def test_files_written_as_nobody_are_owned_by_nobody(
    client: EnvdClient, shared_dir: Path
) -> None:
    target = shared_dir / "sub" / "f.txt"
    await client.write_file(str(target), b"hi", "nobody")
    for p in (target, target.parent):
        st = p.stat()
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    assert await client.make_dir(str(shared_dir / "d1" / "d2"), "nobody") is True
    assert (shared_dir / "d1" / "d2").stat().st_uid == NOBODY


async def test_symlinks_are_listed_and_followed(client: EnvdClient, tmp_path: Path) -> None:
    (tmp_path / "real.txt").write_bytes(b"12345")
    (tmp_path / "link").symlink_to("real.txt")
    (tmp_path / "dangling").symlink_to("nowhere")
    assert await client.read_file(str(tmp_path / "link"), "root") == b"12345"
    entries = {e.name: e for e in await client.list_dir(str(tmp_path), "root")}
    assert entries["link"].symlink_target == "real.txt"
    assert (entries["link"].type, entries["link"].size) == ("file", 5)
    assert entries["dangling"].symlink_target == "nowhere"
    assert entries["real.txt"].symlink_target is None
    st = await client.stat(str(tmp_path / "link"), "root")
    assert st.symlink_target == "real.txt" and st.path == str(tmp_path / "link")


async def test_list_stat_and_depth(client: EnvdClient, tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "deep").write_bytes(b"")
    (tmp_path / "f").write_bytes(b"abc")
    (tmp_path / "f").chmod(0o640)
    one = await client.list_dir(str(tmp_path), "root")
    assert [(e.name, e.type) for e in one] == [("d", "dir"), ("f", "file")]
    f = one[1]
    assert (f.path, f.size, f.mode) == (str(tmp_path / "f"), 3, 0o640)
    assert f.mtime == pytest.approx((tmp_path / "f").stat().st_mtime, abs=1e-3)
    three = await client.list_dir(str(tmp_path), "root", depth=3)
    assert {e.path for e in three} == {str(tmp_path / p) for p in ("d", "d/e", "d/e/deep", "f")}
    with pytest.raises(EnvdInvalid) as exc:
        await client.list_dir(str(tmp_path / "f"), "root")
    assert exc.value.code == "not_directory"


async def test_rename_mkdir_exists_remove(client: EnvdClient, tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_bytes(b"x")
    entry = await client.rename(str(a), str(b), "root")
    assert (entry.name, entry.path, entry.size) == ("b.txt", str(b), 1)
    assert not a.exists() and b.read_bytes() == b"x"
    with pytest.raises(EnvdNotFound):
        await client.rename(str(a), str(b), "root")
    d = tmp_path / "x" / "y"
    assert await client.make_dir(str(d), "root") is True
    assert await client.make_dir(str(d), "root") is False
    (d / "inner").write_bytes(b"1")
    assert await client.exists(str(d / "inner"), "root") is True
    await client.remove(str(tmp_path / "x"), "root")
    assert await client.exists(str(tmp_path / "x"), "root") is False
    assert not (tmp_path / "x").exists()
    with pytest.raises(EnvdNotFound):
        await client.remove(str(tmp_path / "x"), "root")


async def test_watch_reports_changes_recursively(client: EnvdClient, tmp_path: Path) -> None:
    wid = await client.watch(str(tmp_path), "root", recursive=True)
    events: list[dict] = []

    async def consume() -> None:
        async for e in client.watch_events(wid):
            events.append(e)

    task = asyncio.ensure_future(consume())
    try:
        await client.write_file(str(tmp_path / "f"), b"data", "root")
        await client.make_dir(str(tmp_path / "sub"), "root")
        # The watch on a new subdirectory is added asynchronously; wait for it.
        for _ in range(200):
            (tmp_path / "sub" / "probe").write_bytes(b"")
            await asyncio.sleep(0.01)
            if any(e["path"] == str(tmp_path / "sub" / "probe") for e in events):
                break
        await client.write_file(str(tmp_path / "sub" / "g"), b"x", "root")
        await client.rename(str(tmp_path / "f"), str(tmp_path / "f2"), "root")
        (tmp_path / "f2").chmod(0o600)
        await client.remove(str(tmp_path / "f2"), "root")
        want = {
            ("create", str(tmp_path / "f")),
            ("write", str(tmp_path / "f")),
            ("create", str(tmp_path / "sub")),
            ("create", str(tmp_path / "sub" / "g")),
            ("rename", str(tmp_path / "f")),
            ("create", str(tmp_path / "f2")),
            ("chmod", str(tmp_path / "f2")),
            ("remove", str(tmp_path / "f2")),
        }
        for _ in range(500):
            if want <= {(e["type"], e["path"]) for e in events}:
                break
            await asyncio.sleep(0.01)
        assert want <= {(e["type"], e["path"]) for e in events}
        assert all(isinstance(e["timestamp"], float) for e in events)
    finally:
        await client.unwatch(wid)
    await asyncio.wait_for(task, 10)  # the stream ends when the watch is removed
    with pytest.raises(EnvdNotFound):
        await client.unwatch(wid)


async def test_nobody_cannot_watch_a_private_dir(client: EnvdClient, open_dir: Path) -> None:
    wid = await client.watch(str(open_dir), "nobody")
    await client.unwatch(wid)
    private = open_dir / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(EnvdPermissionDenied):
        await client.watch(str(private), "nobody")
