"""host.commands and host.teardown: exit status, errors, timeouts, cancellation, streaming."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from declawd.errors import Internal
from declawd.host import (
    CommandFailed,
    Completed,
    TeardownFailed,
    in_netns,
    run,
    run_sync,
    stream,
    undo_all,
    undo_all_sync,
)
from declawd.host.commands import _CHUNK_BYTES, feed_lines


async def test_run_captures_stdout_and_feeds_stdin() -> None:
    done = await run("sh", "-c", "cat; echo out; echo err >&2", stdin="in\n")
    assert done == Completed(("sh", "-c", "cat; echo out; echo err >&2"), 0, "in\nout\n", "err\n")
    assert done.ok


@pytest.mark.parametrize("runner", ["async", "sync"])
async def test_a_failing_command_raises_one_error_naming_argv_status_and_stderr(
    runner: str,
) -> None:
    argv = ("sh", "-c", "echo boom >&2; exit 3")
    with pytest.raises(CommandFailed) as info:
        if runner == "async":
            await run(*argv)
        else:
            run_sync(*argv)
    err = info.value
    assert isinstance(err, Internal)
    assert (err.argv, err.returncode, err.stderr) == (argv, 3, "boom\n")
    assert err.message == "sh -c echo boom >&2; exit 3 exited 3: boom"


@pytest.mark.parametrize("runner", ["async", "sync"])
async def test_check_false_returns_the_failure_and_check_raises_it(runner: str) -> None:
    argv = ("sh", "-c", "echo partial; exit 1")
    done = await run(*argv, check=False) if runner == "async" else run_sync(*argv, check=False)
    assert (done.returncode, done.stdout, done.ok) == (1, "partial\n", False)
    with pytest.raises(CommandFailed, match="exited 1: no output on stderr"):
        done.check()


@pytest.mark.parametrize("runner", ["async", "sync"])
async def test_a_command_past_its_timeout_is_killed_and_reported(runner: str) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(CommandFailed, match=r"sleep 30 exited -9: killed after 0.2s") as info:
        if runner == "async":
            await run("sleep", "30", timeout=0.2)
        else:
            run_sync("sleep", "30", timeout=0.2)
    assert info.value.returncode == -signal.SIGKILL
    assert loop.time() - start < 5


async def test_a_cancelled_run_kills_its_command(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    task = asyncio.create_task(run("sh", "-c", f"echo $$ > {pid_file}; exec sleep 30"))
    while not pid_file.exists() or not pid_file.read_text().strip():
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped: no such process, not even a zombie


def test_env_and_cwd_reach_the_command(tmp_path: Path) -> None:
    env = {"X": "y", "PATH": "/usr/bin:/bin"}
    done = run_sync("sh", "-c", 'echo "$X $(pwd)"', env=env, cwd=tmp_path)
    assert done.stdout == f"y {tmp_path}\n"


def test_in_netns_takes_a_name_or_a_path() -> None:
    assert in_netns(["ip", "a"], "dc-gw") == ["nsenter", "--net=/var/run/netns/dc-gw", "ip", "a"]
    assert in_netns(["runsc", "list"], "/proc/7/ns/net") == [
        "nsenter",
        "--net=/proc/7/ns/net",
        "runsc",
        "list",
    ]


async def test_netns_runs_the_command_under_nsenter() -> None:
    done = await run("true", netns="declawd-test-no-such-netns", check=False)
    assert done.argv == ("nsenter", "--net=/var/run/netns/declawd-test-no-such-netns", "true")
    assert not done.ok  # the namespace does not exist, so nsenter itself fails


def test_an_empty_argv_is_refused() -> None:
    with pytest.raises(ValueError, match="argv"):
        run_sync()


async def test_stream_feeds_merged_output_by_line_and_returns_the_status() -> None:
    lines: list[str] = []
    status = await stream("sh", "-c", "echo a; echo b >&2; printf c; exit 4", on_line=lines.append)
    assert (status, lines) == (4, ["a", "b", "c"])


async def test_a_cancelled_stream_kills_its_command(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    lines: list[str] = []
    argv = ("sh", "-c", f"echo $$ > {pid_file}; echo started; exec sleep 30")
    task = asyncio.create_task(stream(*argv, on_line=lines.append))
    while lines != ["started"]:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


async def test_stream_runs_stop_however_it_ends_and_lets_the_command_exit(tmp_path: Path) -> None:
    stops: list[str] = []
    pid_file = tmp_path / "pid"

    async def stop() -> None:
        # Like a runtime deleting the container: ends the command in its own way.
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        stops.append("stop")

    assert await stream("true", on_line=print, stop=stop) == 0
    assert stops == ["stop"]
    lines: list[str] = []
    argv = ("sh", "-c", f"echo $$ > {pid_file}; echo started; exec sleep 30")
    task = asyncio.create_task(stream(*argv, on_line=lines.append, stop=stop))
    while lines != ["started"]:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stops == ["stop", "stop"]
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)  # ended by stop (SIGTERM) and reaped


async def test_output_is_fed_as_lines_and_overlong_lines_in_pieces() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"one\r\ntw")
    reader.feed_data(b"o\n" + b"x" * (_CHUNK_BYTES * 3) + b"\nlast")
    reader.feed_eof()
    lines: list[str] = []
    await feed_lines(reader, lines.append)
    assert lines[:2] == ["one", "two"]
    assert lines[-1] == "last"
    assert "".join(lines[2:-1]) == "x" * (_CHUNK_BYTES * 3)
    assert all(len(line) <= 2 * _CHUNK_BYTES for line in lines)


# teardown ---------------------------------------------------------------------------


async def test_undo_all_runs_every_step_and_raises_a_single_failure_as_itself() -> None:
    ran: list[str] = []

    async def ok(name: str) -> None:
        ran.append(name)

    async def fail() -> None:
        ran.append("fail")
        raise CommandFailed(["ip", "link", "del", "s1"], 2, "busy")

    with pytest.raises(CommandFailed, match="busy"):
        await undo_all("sandbox x", lambda: ok("a"), fail, lambda: ok("b"))
    assert ran == ["a", "fail", "b"]
    await undo_all("nothing to do")


def test_undo_all_sync_joins_several_failures() -> None:
    ran: list[int] = []

    def step(n: int) -> None:
        ran.append(n)
        if n % 2:
            raise OSError(n, f"step {n}")

    with pytest.raises(TeardownFailed) as info:
        undo_all_sync("disk d", *[lambda n=n: step(n) for n in range(4)])
    assert ran == [0, 1, 2, 3]
    assert [e.errno for e in info.value.failures if isinstance(e, OSError)] == [1, 3]
    assert info.value.message == "disk d: 2 steps failed: [Errno 1] step 1; [Errno 3] step 3"


async def test_undo_all_lets_cancellation_through_at_once() -> None:
    ran: list[str] = []

    async def cancelled() -> None:
        raise asyncio.CancelledError

    async def later() -> None:
        ran.append("later")

    with pytest.raises(asyncio.CancelledError):
        await undo_all("gateway", cancelled, later)
    assert ran == []
