"""runc and runsc containers on an overlay root: isolation, limits, lifecycle, cleanup.

Needs root. The root filesystem is the built-in `python` template's layers (read-only
overlay lower dirs, as a sandbox gets them), which `make templates` builds; runc and runsc
come from `make`'s packages. Every netns, mount, cgroup and container made here is removed
in fixture teardown, also when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from declawd.config import Settings
from declawd.runtime import (
    Limits,
    Mount,
    OciRuntime,
    RootfsMount,
    RuntimeStartError,
    build_spec,
    is_mounted,
    mount_overlay,
    mount_tmpfs,
    read_stats,
    remove_cgroup,
    unmount,
)
from declawd.runtime.cgroups import cgroup_dirs
from declawd.runtime.compat import ensure_launchns
from declawd.runtime.overlay import overlay_detached
from declawd.templates.catalog import catalog_plan
from declawd.templates.layers import LayerCache

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

TEMPLATE = "python"  # the smallest built-in with python3, which the probes run
ROOT_CAPS_HEX = "00000000a00405fb"  # the 12 capabilities of SECURITY.md's root set
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PIDS_LIMIT = 48
READY_WAIT_S = 60.0

PROBE = r"""
import ctypes, os, signal, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
out = {}
for name, family, kind in (("inet", 2, 1), ("packet", 17, 2), ("vsock", 40, 1)):
    try:
        socket.socket(family, kind).close(); out[name] = "ok"
    except OSError as e:
        out[name] = e.errno
out["unshare_net"] = libc.unshare(0x40000000) and ctypes.get_errno()
kids, err = [], None
for _ in range(int(sys.argv[1])):
    try:
        pid = os.fork()
    except OSError as e:
        err = e.errno; break
    if pid == 0:
        signal.pause(); os._exit(0)
    kids.append(pid)
for k in kids: os.kill(k, signal.SIGKILL)
for k in kids: os.waitpid(k, 0)
out["forked"], out["fork_errno"] = len(kids), err
open("/share/probe.json", "w").write(__import__("json").dumps(out))
"""


@dataclass
class Bundle:
    sandbox_id: str
    dir: Path
    share: Path
    netns_path: str | None
    cgroups_path: str

    @property
    def rootfs(self) -> Path:
        return self.dir / "rootfs"

    def write_spec(self, runtime: str, args: list[str], pids: int = PIDS_LIMIT) -> None:
        spec = build_spec(
            sandbox_id=self.sandbox_id,
            rootfs=self.rootfs,
            hostname=self.sandbox_id,
            args=args,
            env=[PATH_ENV],
            netns_path=self.netns_path,
            limits=Limits(memory_mb=256, cpu_count=1.0, pids=pids),
            mounts=[Mount("/share", str(self.share), options=["rbind", "rw", "nosuid", "nodev"])],
            cgroups_path=self.cgroups_path,
            runtime=runtime,
        )
        (self.dir / "config.json").write_text(json.dumps(spec))


@pytest.fixture(scope="module")
def template_layers() -> list[Path]:
    """The python template's layer dirs, lowest first, from the layer cache `make` fills."""
    templates_path = Settings.from_env().templates_path
    cache = LayerCache(templates_path)
    keys = catalog_plan(TEMPLATE).keys
    missing = [k for k in keys if not cache.exists(k)]
    if missing:
        pytest.fail(
            f"the {TEMPLATE!r} template is not built in {templates_path} "
            f"({len(missing)} of {len(keys)} layers missing): run `make templates`"
        )
    return [cache.fs(k) for k in keys]


@pytest.fixture(scope="module")
def cgroup_parent() -> Iterator[str]:
    parent = f"/rttest{secrets.token_hex(3)}"
    yield parent
    remove_cgroup(parent)


@pytest.fixture
def netns() -> Iterator[str]:
    subprocess.run(["/work/shared/tools/egress-guard"], check=True, capture_output=True)
    name = f"rttest-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield f"/var/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _make_bundle(
    tmp_path: Path, layers: list[Path], netns_path: str | None, cgroup_parent: str
) -> Iterator[Bundle]:
    sandbox_id = f"sbx-{secrets.token_hex(6)}"
    bundle = Bundle(
        sandbox_id=sandbox_id,
        dir=tmp_path / sandbox_id,
        share=tmp_path / "share",
        netns_path=netns_path,
        cgroups_path=f"{cgroup_parent}/{sandbox_id}",
    )
    for d in ("upper", "work", "rootfs"):
        (bundle.dir / d).mkdir(parents=True)
    bundle.share.mkdir()
    mount_overlay(layers, bundle.dir / "upper", bundle.dir / "work", bundle.rootfs)
    try:
        mount_tmpfs(bundle.share, 4 << 20, 0o755)
        yield bundle
    finally:
        unmount(bundle.share)
        unmount(bundle.rootfs)
        remove_cgroup(bundle.cgroups_path)


@pytest.fixture
def bundle(
    tmp_path: Path, template_layers: list[Path], netns: str, cgroup_parent: str
) -> Iterator[Bundle]:
    yield from _make_bundle(tmp_path, template_layers, netns, cgroup_parent)


@pytest.fixture
def host_bundle(
    tmp_path: Path, template_layers: list[Path], cgroup_parent: str
) -> Iterator[Bundle]:
    yield from _make_bundle(tmp_path, template_layers, None, cgroup_parent)


@pytest.fixture(params=["runc", "runsc"])
async def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OciRuntime]:
    name = request.param
    if shutil.which(name) is None:
        pytest.fail(f"{name} is not installed: run `make setup`")
    rt = OciRuntime(name, tmp_path / f"run-{name}")
    yield rt
    for cid in await rt.list():
        await rt.kill(cid)


async def _wait_for(path: Path) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_WAIT_S
    while loop.time() < deadline:
        if path.exists() and path.stat().st_size > 0:
            await asyncio.sleep(0.05)  # the writer may still be finishing
            return path.read_text()
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def _status_fields(text: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


async def _assert_nothing_left(rt: OciRuntime, bundle: Bundle) -> None:
    assert await rt.state(bundle.sandbox_id) is None
    assert bundle.sandbox_id not in await rt.list()
    assert cgroup_dirs(bundle.cgroups_path) == []
    unmount(bundle.share)
    unmount(bundle.rootfs)
    assert not is_mounted(bundle.rootfs)
    assert not any(
        str(bundle.dir) in line for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )


async def test_container_runs_as_root_with_the_container_capability_set(
    runtime: OciRuntime, bundle: Bundle
) -> None:
    init = "cat /proc/self/status > /share/status.tmp; id > /share/id; mv /share/status.tmp /share/status; sleep 1000"
    bundle.write_spec(runtime.name, ["/bin/sh", "-c", init])
    await runtime.run_detached(
        bundle.dir, bundle.sandbox_id, bundle.netns_path, log_path=bundle.dir / "log"
    )
    try:
        status = _status_fields(await _wait_for(bundle.share / "status"))
        assert (bundle.share / "id").read_text().startswith("uid=0(root) gid=0(root)")
        assert status["CapBnd"] == ROOT_CAPS_HEX
        assert status["CapEff"] == ROOT_CAPS_HEX
        assert status["CapPrm"] == ROOT_CAPS_HEX
        assert status.get("CapAmb", "0000000000000000") == "0000000000000000"  # gVisor omits it
        if runtime.name == "runc":
            assert status["NoNewPrivs"] == "1"
            assert status["Seccomp"] == "2"
        assert await runtime.state(bundle.sandbox_id) == "running"
        assert bundle.sandbox_id in await runtime.list()
        with pytest.raises(RuntimeStartError, match="already exists"):
            await runtime.run_detached(
                bundle.dir, bundle.sandbox_id, bundle.netns_path, log_path=bundle.dir / "log"
            )
        assert await runtime.state(bundle.sandbox_id) == "running"  # a duplicate start left it be

        memory = [d for d in cgroup_dirs(bundle.cgroups_path) if "memory" in d.parts]
        pids = [d for d in cgroup_dirs(bundle.cgroups_path) if "pids" in d.parts]
        assert int((memory[0] / "memory.limit_in_bytes").read_text()) == 256 * 1024 * 1024
        assert int((pids[0] / "pids.max").read_text()) == PIDS_LIMIT
        stats = read_stats(bundle.cgroups_path)
        assert stats.pids >= 1
        assert stats.memory_bytes > 0
        assert stats.cpu_usage_ns > 0
    finally:
        await runtime.kill(bundle.sandbox_id)
    await _assert_nothing_left(runtime, bundle)
    await runtime.kill(bundle.sandbox_id)  # idempotent


async def test_runc_enforces_pids_limit_and_seccomp(tmp_path: Path, bundle: Bundle) -> None:
    rt = OciRuntime("runc", tmp_path / "run-runc")
    (bundle.share / "probe.py").write_text(PROBE)
    bundle.write_spec(
        "runc", ["/bin/sh", "-c", f"python3 /share/probe.py {PIDS_LIMIT + 20}; sleep 1000"]
    )
    await rt.run_detached(
        bundle.dir, bundle.sandbox_id, bundle.netns_path, log_path=bundle.dir / "log"
    )
    try:
        result = json.loads(await _wait_for(bundle.share / "probe.json"))
    finally:
        await rt.kill(bundle.sandbox_id)
    assert result["inet"] == "ok"  # positive control: socket() itself works
    assert result["packet"] == 1  # EPERM from seccomp, not a missing capability (EPERM too)
    assert result["vsock"] == 1
    assert result["unshare_net"] == 1
    # sh + python + the children fill the limit exactly; the next fork gets EAGAIN
    assert result["fork_errno"] == 11
    assert result["forked"] == PIDS_LIMIT - 2
    await _assert_nothing_left(rt, bundle)


async def test_failed_start_raises_and_leaves_nothing(runtime: OciRuntime, bundle: Bundle) -> None:
    bundle.write_spec(runtime.name, ["/no/such/binary"])
    with pytest.raises(RuntimeStartError) as info:
        await runtime.run_detached(
            bundle.dir, bundle.sandbox_id, bundle.netns_path, log_path=bundle.dir / "log"
        )
    assert info.value.stderr_tail.strip()
    assert (
        "/no/such/binary" in info.value.stderr_tail
        or "no such file" in info.value.stderr_tail.lower()
    )
    await _assert_nothing_left(runtime, bundle)


async def test_kill_of_unknown_container_is_a_no_op(runtime: OciRuntime) -> None:
    await runtime.kill("sbx-000000000000")
    assert await runtime.state("sbx-000000000000") is None


async def test_host_reaches_a_unix_socket_bound_inside_the_sandbox(
    runtime: OciRuntime, bundle: Bundle
) -> None:
    server = (
        "import socket\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.bind('/share/x.sock'); s.listen(1)\n"
        "open('/share/ready', 'w').write('1')\n"
        "while True:\n"
        "    c, _ = s.accept(); c.sendall(c.recv(64).upper()); c.close()\n"
    )
    (bundle.share / "srv.py").write_text(server)
    bundle.write_spec(runtime.name, ["python3", "/share/srv.py"])
    await runtime.run_detached(
        bundle.dir, bundle.sandbox_id, bundle.netns_path, log_path=bundle.dir / "log"
    )
    try:
        await _wait_for(bundle.share / "ready")
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(10)
            c.connect(str(bundle.share / "x.sock"))
            c.sendall(b"ping")
            assert c.recv(64) == b"PING"
    finally:
        await runtime.kill(bundle.sandbox_id)
    await _assert_nothing_left(runtime, bundle)


async def test_run_foreground_streams_output_and_returns_the_exit_code(
    runtime: OciRuntime, host_bundle: Bundle
) -> None:
    host_bundle.write_spec(
        runtime.name, ["/bin/sh", "-c", "echo out-line; echo err-line >&2; exit 3"]
    )
    lines: list[str] = []
    rc = await runtime.run_foreground(
        host_bundle.dir, host_bundle.sandbox_id, None, log=lines.append
    )
    assert rc == 3
    assert "out-line" in lines
    assert "err-line" in lines
    await _assert_nothing_left(runtime, host_bundle)


def _mount_lines_with(text: str) -> list[str]:
    """Lines naming `text` in the mount table of every process (every namespace)."""
    found = []
    for info in Path("/proc").glob("[0-9]*/mountinfo"):
        with contextlib.suppress(OSError):  # the process went
            found += [line for line in info.read_text().splitlines() if text in line]
    return found


@pytest.fixture
def detached_bundle(
    tmp_path: Path, template_layers: list[Path], netns: str, cgroup_parent: str
) -> Iterator[tuple[Bundle, int]]:
    """A bundle whose rootfs overlay is mounted nowhere: an fd (`overlay_detached`)."""
    sandbox_id = f"sbx-{secrets.token_hex(6)}"
    cgroups_path = f"{cgroup_parent}/{sandbox_id}"
    bundle = Bundle(sandbox_id, tmp_path / sandbox_id, tmp_path / "share", netns, cgroups_path)
    for d in ("upper", "work", "rootfs"):
        (bundle.dir / d).mkdir(parents=True)
    bundle.share.mkdir()
    fd = overlay_detached(template_layers, bundle.dir / "upper", bundle.dir / "work")
    try:
        mount_tmpfs(bundle.share, 4 << 20, 0o755)
        yield bundle, fd
    finally:
        os.close(fd)
        unmount(bundle.share)
        remove_cgroup(bundle.cgroups_path)


async def test_rootfs_attached_in_the_runtimes_namespace_only(
    runtime: OciRuntime, detached_bundle: tuple[Bundle, int], tmp_path: Path
) -> None:
    """declawd-launchns attaches the detached overlay in a mount namespace of the runtime's
    own: the container runs on the template's layers and writes to the upper dir, the host's
    mount table never holds the rootfs, and after the kill no namespace does."""
    bundle, fd = detached_bundle
    launcher = ensure_launchns(tmp_path / "bin" / "declawd-launchns")
    init = "python3 -c 'print(6*7)' > /share/out.tmp; mv /share/out.tmp /share/out; echo x > /made; sleep 1000"
    bundle.write_spec(runtime.name, ["/bin/sh", "-c", init])
    await runtime.run_detached(
        bundle.dir,
        bundle.sandbox_id,
        bundle.netns_path,
        log_path=bundle.dir / "log",
        rootfs=RootfsMount(launcher, fd, bundle.rootfs),
    )
    try:
        assert (await _wait_for(bundle.share / "out")).strip() == "42"
        assert (bundle.dir / "upper" / "made").read_text() == "x\n"
        host = Path("/proc/self/mountinfo").read_text()
        assert str(bundle.rootfs) not in host and not is_mounted(bundle.rootfs)
        assert await runtime.state(bundle.sandbox_id) == "running"
    finally:
        await runtime.kill(bundle.sandbox_id)
    for _ in range(50):  # runsc's gofer exits just after the delete
        if not _mount_lines_with(bundle.sandbox_id):
            break
        await asyncio.sleep(0.1)
    assert _mount_lines_with(bundle.sandbox_id) == []
    assert await runtime.state(bundle.sandbox_id) is None


async def test_launchns_failure_is_a_start_error_and_leaves_nothing(
    runtime: OciRuntime, detached_bundle: tuple[Bundle, int], tmp_path: Path
) -> None:
    bundle, _fd = detached_bundle
    launcher = ensure_launchns(tmp_path / "bin" / "declawd-launchns")
    bundle.write_spec(runtime.name, ["/bin/true"])
    closed = os.open("/dev/null", os.O_RDONLY)
    os.close(closed)  # an fd number that is no mount
    with pytest.raises(RuntimeStartError, match="declawd-launchns: attach the mount at"):
        await runtime.run_detached(
            bundle.dir,
            bundle.sandbox_id,
            bundle.netns_path,
            log_path=bundle.dir / "log",
            rootfs=RootfsMount(launcher, closed, bundle.rootfs),
        )
    assert await runtime.state(bundle.sandbox_id) is None
    assert _mount_lines_with(bundle.sandbox_id) == []
