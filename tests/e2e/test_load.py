"""Load: concurrent creates, many concurrent commands with large outputs, big file transfers.

Quick mode by default (`make test`); DECLAWD_TEST_FULL=1 (`make test-full`) runs the sizes
of issue 5. Every byte is checked (lengths and sha256), every call must succeed, and the
host resources counted by leaks.snapshot are the same before and after. Throughput and
durations are printed for the report, never asserted.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from declaw import Sandbox

from tests.e2e import conftest as c
from tests.e2e.leaks import no_leak, quiet_snapshot, server_pid_on, settings_for, wait_settled

pytestmark = pytest.mark.e2e

FULL = os.environ.get("DECLAWD_TEST_FULL") == "1"
CREATES = 50 if FULL else 10
SANDBOXES, COMMANDS = (20, 100) if FULL else (5, 20)
TRANSFER_MB = 100 if FULL else 20
BIG_OUTPUT = 10 * 2**20
LINE = b"abcdefghij\n"


def _settings() -> Any:
    return settings_for(
        c.INSTANCE, c.STATE_DIR, os.environ.get("DECLAWD_TEST_POOL", "10.78.0.0/16")
    )


def _create(i: int) -> Sandbox:
    runtime = "runsc" if i % 2 else "runc"
    return Sandbox.create(
        template="base", timeout=900, metadata={"declaw.runtime": runtime, "suite": "load"}
    )


def _kill_all(boxes: list[Sandbox]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda s: s.kill(wait=True), boxes))


def _no_leak(before: dict[str, int], pid: int | None) -> None:
    after = wait_settled(_settings(), before, pid, timeout=60)
    print(f"resources before: {before}\nresources after:  {after}")
    assert no_leak(before, after), (before, after)


@pytest.fixture(scope="module", autouse=True)
def warm(server: dict[str, str]) -> None:
    """Warm the server's worker threads (each keeps its own store connection and fds) so the
    fd count before a test is its steady state, and a difference after it is a real leak."""
    import httpx

    key = {"X-API-Key": server["key"]}
    with httpx.Client(base_url=server["url"], headers=key) as h, ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda _: h.get("/sandboxes").status_code, range(64)))
    _kill_all([_create(0), _create(1)])


def test_concurrent_creates(server: dict[str, str]) -> None:
    pid = server_pid_on(c.PORT)
    before = quiet_snapshot(_settings(), pid)
    t0 = time.monotonic()
    with ThreadPoolExecutor(CREATES) as pool:
        boxes = list(pool.map(_create, range(CREATES)))
    took = time.monotonic() - t0
    print(f"\n{CREATES} concurrent creates (runc+runsc): {took:.1f} s, {CREATES / took:.2f}/s")
    try:
        ids = {s.sandbox_id for s in boxes}
        assert len(ids) == CREATES
        with ThreadPoolExecutor(CREATES) as pool:
            outs = list(pool.map(lambda s: s.commands.run("hostname").stdout.strip(), boxes))
        assert outs == [s.sandbox_id for s in boxes]
    finally:
        _kill_all(boxes)
    _no_leak(before, pid)


def _command(s: Sandbox, j: int) -> int:
    if j % 10 == 0:
        r = s.commands.run(f"yes abcdefghij | head -c {BIG_OUTPUT}", timeout=300)
        expected = (LINE * (BIG_OUTPUT // len(LINE) + 1))[:BIG_OUTPUT]
        got = r.stdout.encode()
        assert len(got) == BIG_OUTPUT
        assert hashlib.sha256(got).digest() == hashlib.sha256(expected).digest()
        return len(got)
    r = s.commands.run(f"echo {j}; echo e{j} >&2; exit {j % 7}", timeout=120)
    assert (r.stdout, r.stderr, r.exit_code) == (f"{j}\n", f"e{j}\n", j % 7)
    return len(r.stdout)


def test_concurrent_commands_with_large_output(server: dict[str, str]) -> None:
    pid = server_pid_on(c.PORT)
    before = quiet_snapshot(_settings(), pid)
    with ThreadPoolExecutor(SANDBOXES) as pool:
        boxes = list(pool.map(_create, range(SANDBOXES)))
    try:
        jobs = [(s, j) for j in range(COMMANDS) for s in boxes]
        t0 = time.monotonic()
        with ThreadPoolExecutor(min(len(jobs), 32)) as pool:
            sizes = list(pool.map(lambda sj: _command(*sj), jobs))
        took = time.monotonic() - t0
        total = sum(sizes)
        print(
            f"\n{SANDBOXES} sandboxes x {COMMANDS} commands = {len(jobs)} in {took:.1f} s "
            f"({len(jobs) / took:.1f} cmd/s); {total / 2**20:.0f} MB of output "
            f"({total / 2**20 / took:.1f} MB/s)"
        )
    finally:
        _kill_all(boxes)
    _no_leak(before, pid)


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
def test_large_file_transfer_up_and_down(server: dict[str, str], runtime: str) -> None:
    pid = server_pid_on(c.PORT)
    before = quiet_snapshot(_settings(), pid)
    s = Sandbox.create(template="base", timeout=900, metadata={"declaw.runtime": runtime})
    try:
        blob = os.urandom(TRANSFER_MB * 2**20)
        digest = hashlib.sha256(blob).hexdigest()
        t0 = time.monotonic()
        s.files.write("/tmp/big.bin", blob)
        up = time.monotonic() - t0
        inside = s.commands.run("sha256sum /tmp/big.bin", timeout=300).stdout.split()[0]
        assert inside == digest
        t0 = time.monotonic()
        back = bytes(s.files.read("/tmp/big.bin", format="bytes"))
        down = time.monotonic() - t0
        assert len(back) == len(blob) and hashlib.sha256(back).hexdigest() == digest
        print(
            f"\n[{runtime}] {TRANSFER_MB} MB up {up:.1f} s ({TRANSFER_MB / up:.0f} MB/s), "
            f"down {down:.1f} s ({TRANSFER_MB / down:.0f} MB/s)"
        )
    finally:
        s.kill(wait=True)
    _no_leak(before, pid)
