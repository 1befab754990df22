"""A throwaway cluster for the benchmarks: PostgreSQL, one control plane, N node agents.

Real processes, started as tests/integration/test_cluster.py starts them (its process
management is copied here, not imported: that test changes independently): a PostgreSQL of
tests/pg.py, `declawd cluster init`, `declawd server --cluster`, and per node a join token,
a lab of its own (one lab serves one gateway) and `declawd node --lab`. Instances `dcwb1`..
(control plane `dcwb0`), pools 10.101.0.0/16.., ports from 18401, state under
/var/lib/declawd-bench-cluster/, warm pools off, default heartbeat and down timeout. On exit,
whatever failed: API server, agents, `declawd down` per node instance, labs, PostgreSQL;
then no netns, nft table, cgroup, mount or process of those instances may be left.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from declawd.config import Settings
from declawd.runtime.cgroups import cgroup_dirs
from declawd.store import Store, open_store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.pg, tests.e2e.leaks
from tests.e2e import leaks
from tests.pg import PgServer

BIN = Path(sys.executable).parent
ROOT = Path(os.environ.get("DECLAWD_BENCH_CLUSTER_DIR", "/var/lib/declawd-bench-cluster"))
TEMPLATES_DIR = Path(os.environ.get("DECLAWD_TEMPLATES_DIR", "/var/lib/declawd/templates"))
PREFIX = "dcwb"  # instances dcwb0 (control plane), dcwb1..; never the harness's `dcwbench`
API_PORT = 18401
INTERNAL_PORT = 18402
NODE_PORT0 = 18403
TUNNEL_PORT0 = 18413  # node i's port tunnels (all nodes share 127.0.0.1 here)
POOL_FMT = "10.{}.0.0/16"
POOL_BASE = 100  # node i gets 10.(100+i).0.0/16
CONTROL_PLANE = f"https://127.0.0.1:{INTERNAL_PORT}"
EGRESS_GUARD = Path("/work/shared/tools/egress-guard")


@dataclass
class Proc:
    """A `declawd` process with its log; stop() is SIGTERM, then SIGKILL after a grace."""

    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "declawd"), *self.argv],
                env=self.env,
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"declawd {self.argv[0]} was not started")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def wait_for(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if not self.alive():
                raise RuntimeError(f"{what}: the process exited:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: not within {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def declawd(env: dict[str, str], *args: str, timeout: float = 60) -> str:
    out = subprocess.run(
        [str(BIN / "declawd"), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    if out.returncode != 0:
        raise RuntimeError(f"declawd {' '.join(args)}: {out.stdout}{out.stderr}")
    return out.stdout


@dataclass
class ClusterNode:
    """One node agent on an instance of its own, with its lab."""

    index: int
    env: dict[str, str]
    agent: Proc = field(init=False)
    lab: Proc = field(init=False)

    def __post_init__(self) -> None:
        self.env = {
            **self.env,
            "DECLAWD_INSTANCE": self.instance,
            "DECLAWD_STATE_DIR": str(self.state_dir),
            "DECLAWD_POOL": self.pool,
            "DECLAWD_NODE_ID": self.instance,
            "DECLAWD_NODE_NAME": f"bench-node-{self.index}",
            "DECLAWD_NODE_TUNNEL_PORT": str(TUNNEL_PORT0 + self.index - 1),
        }
        listen = f"127.0.0.1:{NODE_PORT0 + self.index - 1}"
        token_file = str(self.state_dir / "join-token")
        self.agent = Proc(
            ["node", "--control-plane", CONTROL_PLANE, "--join-token-file", token_file,
             "--listen", listen, "--lab"],
            self.env, self.state_dir / "agent.log",
        )  # fmt: skip
        self.lab = Proc(["lab", "serve"], self.env, self.state_dir / "lab.log")

    @property
    def instance(self) -> str:
        return f"{PREFIX}{self.index}"

    @property
    def pool(self) -> str:
        return POOL_FMT.format(POOL_BASE + self.index)

    @property
    def state_dir(self) -> Path:
        return ROOT / self.instance

    @property
    def settings(self) -> Settings:
        return leaks.settings_for(self.instance, self.state_dir, self.pool)

    def start(self, store: Store) -> None:
        ready = self.state_dir / "lab" / "ready"
        with contextlib.suppress(FileNotFoundError):
            ready.unlink()
        self.lab.start()
        self.lab.wait_for(ready.exists, 60, f"lab {self.instance}")
        self.agent.start()

        def registered_up() -> bool:
            node = store.get_node(self.instance)
            return node is not None and node.state == "up" and time.time() - node.last_seen < 5

        self.agent.wait_for(registered_up, 180, f"node {self.instance} registered")

    def down(self) -> None:
        """`declawd down` of the instance, then its empty parent cgroups (down leaves them)."""
        subprocess.run(
            [str(BIN / "declawd"), "down"], env=self.env, capture_output=True, timeout=180
        )
        for directory in cgroup_dirs(f"/{self.instance}"):
            for child in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if child.is_dir():
                    with contextlib.suppress(OSError):  # still in use: the leak check reports it
                        child.rmdir()
            with contextlib.suppress(OSError):
                directory.rmdir()


@dataclass(frozen=True)
class Cluster:
    url: str
    domain: str
    key: str
    server: Proc
    nodes: list[ClusterNode]
    store: Store

    def node_of(self, sandbox_id: str) -> str:
        rec = self.store.get_sandbox(sandbox_id)
        return rec.node_id if rec is not None else "?"


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


_OURS = re.compile(rf"\b{PREFIX}\d+\b")


def leftovers(nodes: list[ClusterNode]) -> dict[str, object]:
    """Netns, nft tables, cgroups, mounts and processes of the dcwb<N> instances, and the
    per-sandbox counts of tests/e2e/leaks.py for each node instance that are not zero."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    procs = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cgroup = (d / "cgroup").read_text()
        except OSError:
            continue
        if str(ROOT) in cmdline or re.search(rf"/{PREFIX}\d+(/|$)", cgroup, re.M):
            procs.append(f"{d.name}: {cmdline[:120]}")
    found: dict[str, object] = {
        "netns": [n.split()[0] for n in netns.splitlines() if _OURS.match(n)],
        "nft": [t for t in tables.splitlines() if _OURS.search(t)],
        "cgroups": [
            str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{PREFIX}*") if _OURS.fullmatch(p.name)
        ],
        "mounts": [m for m in mounts if m.startswith(str(ROOT) + "/")],
        "processes": procs,
    }
    for n in nodes:
        counts = {k: v for k, v in leaks.snapshot(n.settings).items() if v}
        if counts:
            found[n.instance] = counts
    return {k: v for k, v in found.items() if v}


def _settled(nodes: list[ClusterNode], timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    left = leftovers(nodes)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = leftovers(nodes)
    return left


@contextlib.contextmanager
def running_cluster(n_nodes: int) -> Iterator[Cluster]:
    """PostgreSQL + control plane + `n_nodes` agents; everything is gone again on exit
    (RuntimeError if something of the instances is left)."""
    if EGRESS_GUARD.exists():  # no packet leaves the machine (as the integration test)
        subprocess.run([str(EGRESS_GUARD)], check=False, capture_output=True)
    pg = PgServer()
    pg.start()
    server: Proc | None = None
    nodes: list[ClusterNode] = []
    store: Store | None = None
    ok = False
    try:
        db_url = pg.url(pg.create_database())
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DECLAWD_", "DECLAW_"))}
        env.update(
            DECLAWD_DATABASE_URL=db_url,
            DECLAWD_TEMPLATES_DIR=str(TEMPLATES_DIR),
            DECLAWD_WARM_POOL="off",
            DECLAWD_INTERNAL_PORT=str(INTERNAL_PORT),
            DECLAWD_CLUSTER_CA_DIR=str(ROOT / "ca"),
        )
        nodes = [ClusterNode(i, env) for i in range(1, n_nodes + 1)]
        for n in nodes:  # leftovers of an interrupted run (the store is new: all strays)
            n.down()
        shutil.rmtree(ROOT, ignore_errors=True)
        ROOT.mkdir(parents=True)
        cp_env = {**env, "DECLAWD_INSTANCE": f"{PREFIX}0", "DECLAWD_STATE_DIR": str(ROOT / "cp")}
        declawd(cp_env, "cluster", "init")
        store = open_store(Settings(database_url=db_url, state_dir=ROOT / "cp"))
        server = Proc(
            ["server", "--cluster", "--host", "127.0.0.1", "--port", str(API_PORT)],
            cp_env, ROOT / "cp" / "server.log",
        )  # fmt: skip
        server.start()
        url = f"http://127.0.0.1:{API_PORT}"
        server.wait_for(lambda: _healthy(url), 60, "API server")
        key = declawd(cp_env, "keys", "create", "--team", "default").strip()  # no dev key
        for n in nodes:
            n.state_dir.mkdir(parents=True, exist_ok=True)
            token = declawd(cp_env, "cluster", "join-token", "--ttl", "600").strip()
            (n.state_dir / "join-token").write_text(token + "\n")
            n.start(store)
        yield Cluster(url, f"localhost:{API_PORT}", key, server, nodes, store)
        ok = True
    finally:
        _teardown(pg, server, nodes, store)
        left = _settled(nodes, 30)
        if left:
            message = f"the benchmark cluster left host resources behind: {left}"
            if ok:
                raise RuntimeError(message)
            print(message, file=sys.stderr)  # the run's own failure is what propagates


def _teardown(
    pg: PgServer, server: Proc | None, nodes: list[ClusterNode], store: Store | None
) -> None:
    """Stop and remove everything, in the order an operator would: API server, agents,
    `declawd down` per node instance, labs, the store's connection, PostgreSQL."""
    if server is not None:
        server.stop()
    for n in nodes:
        n.agent.stop()
        n.down()
        n.lab.stop(15)
    if store is not None:
        store.close()
    pg.stop()
