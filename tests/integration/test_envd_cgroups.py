"""envd starting commands in the commands' child cgroup, with real host cgroups (v1).

envd runs in a test cgroup (pids + memory) with `cmds` below it, made by
`create_command_cgroups`; its cgroup dir next to the socket holds symlinks to the
`tasks` files (in a sandbox they are bind mounts). Teardown kills envd and removes
the cgroups.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from declawd.envd import ensure_envd
from declawd.node.envd_client import EnvdClient
from declawd.runtime import cgroups as cg

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="creates cgroups: needs root"),
    pytest.mark.skipif(
        not Path("/sys/fs/cgroup/pids/tasks").exists(), reason="needs the cgroup v1 hierarchy"
    ),
]

ENVD_BIN = Path("/tmp/declawd-test-envd/envd")
PIDS = 100  # commands get max(100 - 64, 50) = 50
MEMORY = 256 << 20
FORK = r"""
import errno, os, time
kids, err = [], "none"
for _ in range(500):
    try:
        pid = os.fork()
    except OSError as e:
        err = errno.errorcode[e.errno]
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    kids.append(pid)
print(len(kids), err, flush=True)
for k in kids:
    os.kill(k, 9)
for k in kids:
    os.waitpid(k, 0)
"""


@pytest.fixture(scope="module")
def envd_in_cgroup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, int]]:
    path = f"/declawd-envd-test-{os.getpid()}"
    binary = ensure_envd(ENVD_BIN)
    d = tmp_path_factory.mktemp("envd-cg")
    proc: subprocess.Popen[bytes] | None = None
    try:
        pairs = cg.create_command_cgroups(path, MEMORY, PIDS)
        (d / "cgroup").mkdir()
        for p in pairs:
            (d / "cgroup" / f"{p.controller}.tasks").symlink_to(p.parent_tasks)
            (d / "cgroup" / f"{p.controller}.cmds.tasks").symlink_to(p.child_tasks)
            # the sandbox's own limits (runc sets them in a real sandbox)
            limit_file = "pids.max" if p.controller == "pids" else "memory.limit_in_bytes"
            (p.parent_tasks.parent / limit_file).write_text(
                str(PIDS if p.controller == "pids" else MEMORY)
            )
        socket = d / "envd.sock"

        def enter() -> None:  # runs in the child before exec: envd starts in the cgroup
            for p in pairs:
                (p.parent_tasks.parent / "cgroup.procs").write_text("0")

        log = open(d / "envd.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [str(binary), "--socket", str(socket)], stdout=log, stderr=log, preexec_fn=enter
        )
        for _ in range(500):
            if socket.exists() or proc.poll() is not None:
                break
            time.sleep(0.01)
        assert socket.exists(), (d / "envd.log").read_text()
        yield socket, path, proc.pid
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        cg.remove_cgroup(path)


@pytest.fixture
async def client(envd_in_cgroup: tuple[Path, str, int]) -> AsyncIterator[EnvdClient]:
    c = EnvdClient(str(envd_in_cgroup[0]))
    try:
        yield c
    finally:
        await c.aclose()


def _cgroups_of(proc_cgroup: str) -> dict[str, str]:
    out = {}
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(","):
            out[c] = path
    return out


async def test_command_is_born_in_cmds_and_envd_stays_out(
    client: EnvdClient, envd_in_cgroup: tuple[Path, str, int]
) -> None:
    _, path, envd_pid = envd_in_cgroup
    r = await client.run("cat /proc/self/cgroup", user="nobody")
    mine = _cgroups_of(r.stdout.decode())
    assert mine["pids"] == f"{path}/cmds"
    assert mine["memory"] == f"{path}/cmds"
    # every envd thread, also the ones that forked, is back in envd's cgroup
    for task in Path(f"/proc/{envd_pid}/task").iterdir():
        theirs = _cgroups_of((task / "cgroup").read_text())
        assert theirs["pids"] == path, task
        assert theirs["memory"] == path, task


async def test_fork_refused_at_the_commands_limit_envd_keeps_serving(
    client: EnvdClient, envd_in_cgroup: tuple[Path, str, int]
) -> None:
    _, path, _ = envd_in_cgroup
    r = await client.run(f"python3 -c '{FORK}'", user="nobody", timeout=60)
    created, err = r.stdout.decode().split()
    assert err == "EAGAIN"
    _mem, cmd_pids = cg.command_limits(MEMORY, PIDS)
    assert cmd_pids == 50
    assert int(created) == cmd_pids - 1  # python itself holds one pid of the child's 50
    events = (Path("/sys/fs/cgroup/pids") / path.strip("/") / "cmds" / "pids.events").read_text()
    assert int(events.split()[1]) > 0  # refused by the child's limit, not envd's
    assert await client.health() is True
    r = await client.run("echo alive", user="nobody")
    assert r.stdout == b"alive\n"
