"""A real cluster on one machine: PostgreSQL, a control plane and two node agents.

Real processes, as an operator runs them (docs/cluster.md): a throwaway PostgreSQL
(tests/pg.py), `declawd cluster init`, one `declawd cluster join-token` per node,
`declawd server --cluster`, and two `declawd node` agents, each on an instance of its
own (`dcwc1`, `dcwc2`: own state dir, address pool, gateway) with a lab of its own (the
lab link's addresses are fixed, so one lab serves one gateway). The official SDK talks to
the API server only; the test checks what each step did in the shared store and on the
nodes' hosts.

The story, in order: two creates land on the two nodes; commands, files and the egress
policy work on each through the API server; `kill`; kill -9 of one agent: after the
(short) down timeout its sandbox answers 404 with the "lost" message and a create lands on
the other node; the agent restarted reconciles (the lost sandbox's container is gone from
its host) and takes work again; drain of one node sends the next create to the other even
though it is the busier; an agent stopped (SIGSTOP) past the timeout and continued
is told it is down, kills its lost sandboxes on its host and takes work again. Teardown runs whatever failed, and leaves no namespace, nft
table, cgroup, mount or process of `dcwc*` behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from declaw import ALL_TRAFFIC, NetworkPolicy, NotFoundException, Sandbox, SecurityPolicy

from declawd.config import Settings
from declawd.store import SandboxState, Store, open_store
from tests.pg import PgServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and containers"),
]

BIN = Path(sys.executable).parent
ROOT = Path("/var/lib/declawd-cluster-test")
TEMPLATES_DIR = Path("/var/lib/declawd/templates")
API_PORT = 18310
INTERNAL_PORT = 18311
CONTROL_PLANE = f"https://127.0.0.1:{INTERNAL_PORT}"
HEARTBEAT_S = 0.5
DOWN_AFTER_S = 3.0
PREFIX = "dcwc"

PROBE = r"""
import json, socket, sys
def tcp(host, port):
    try:
        socket.create_connection((host, port), timeout=5).close()
        return "CONNECTED"
    except Exception as e:
        return type(e).__name__
print(json.dumps([tcp(h, 443) for h in sys.argv[1:]]))
"""


@dataclass
class Proc:
    """A `declawd` process with its log (appended across runs)."""

    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    offset: int = 0

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "declawd"), *self.argv],
                env=self.env,
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 3000) -> str:
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")[-n:]

    def wait_for(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if not self.alive():
                raise AssertionError(f"{what}: the process exited:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.1)

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 30) -> None:
        if not self.alive():
            return
        assert self.proc is not None
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
    assert out.returncode == 0, f"declawd {' '.join(args)}: {out.stdout}{out.stderr}"
    return out.stdout


def base_env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DECLAWD_", "DECLAW_"))}
    env.update(
        DECLAWD_DATABASE_URL=database_url,
        DECLAWD_TEMPLATES_DIR=str(TEMPLATES_DIR),
        DECLAWD_WARM_POOL="off",
        DECLAWD_INTERNAL_PORT=str(INTERNAL_PORT),
        DECLAWD_HEARTBEAT_INTERVAL_S=str(HEARTBEAT_S),
        DECLAWD_NODE_DOWN_AFTER_S=str(DOWN_AFTER_S),
        DECLAWD_CLUSTER_CA_DIR=str(ROOT / "ca"),
    )
    return env


@dataclass
class NodeUnderTest:
    instance: str
    name: str
    pool: str
    port: int
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
            "DECLAWD_NODE_NAME": self.name,
        }
        token_file = str(self.state_dir / "join-token")
        self.agent = Proc(
            ["node", "--control-plane", CONTROL_PLANE, "--join-token-file", token_file,
             "--listen", f"127.0.0.1:{self.port}", "--lab"],
            self.env, self.state_dir / "agent.log",
        )  # fmt: skip
        self.lab = Proc(["lab", "serve"], self.env, self.state_dir / "lab.log")

    @property
    def state_dir(self) -> Path:
        return ROOT / self.instance

    @property
    def settings(self) -> Settings:
        return Settings(instance=self.instance, state_dir=self.state_dir, pool=self.pool)

    def containers(self) -> set[str]:
        """The runc containers on this node's host (its runtime root)."""
        root = self.settings.run_dir / "runc"
        return {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()

    def start_lab(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / "lab" / "ready").unlink()
        self.lab.start()
        self.lab.wait_for((self.state_dir / "lab" / "ready").exists, 60, f"lab {self.instance}")

    def start_agent(self, store: Store) -> None:
        self.agent.start()

        def registered_up() -> bool:
            node = store.get_node(self.instance)
            return node is not None and node.state == "up" and time.time() - node.last_seen < 2

        self.agent.wait_for(registered_up, 120, f"node {self.instance} registered")


# Host resources of the dcwc* instances -----------------------------------------------------
def leftovers() -> dict[str, list[str]]:
    """Every netns, nft table, cgroup, mount and process of a `dcwc*` instance."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    procs = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cgroup = (d / "cgroup").read_text()
        except OSError:
            continue
        if str(ROOT) in cmdline or f"/{PREFIX}" in cgroup:
            procs.append(f"{d.name}: {cmdline[:120]}")
    return {
        "netns": [n.split()[0] for n in netns.splitlines() if n.startswith(PREFIX)],
        "nft": [t for t in tables.splitlines() if PREFIX in t],
        "cgroups": [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{PREFIX}*")],
        "mounts": [m.split()[4] for m in mounts if str(ROOT) in m.split()[4]],
        "processes": procs,
    }


def nothing_left() -> bool:
    return not any(leftovers().values())


def eventually(cond: Callable[[], bool], timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


# The cluster -------------------------------------------------------------------------------
@dataclass
class Cluster:
    store: Store
    server: Proc
    nodes: list[NodeUnderTest]
    key: str

    def sdk(self) -> dict[str, Any]:
        return {"api_key": self.key, "domain": f"localhost:{API_PORT}"}

    def create(self) -> Sandbox:
        sbx = Sandbox.create(
            template="python",
            timeout=300,
            security=SecurityPolicy(
                network=NetworkPolicy(allow_out=["api.openai.com"], deny_out=[ALL_TRAFFIC])
            ),
            **self.sdk(),
        )
        return sbx

    def audit(self, sandbox_id: str) -> set[tuple[str, str, str]]:
        """(kind, verdict, name or reason) of the sandbox's audit events, through the API."""
        resp = httpx.get(
            f"http://127.0.0.1:{API_PORT}/sandboxes/{sandbox_id}/audit",
            headers={"X-API-Key": self.key},
            params={"limit": 1000},
            timeout=10,
        )
        resp.raise_for_status()
        return {
            (e["kind"], e["verdict"], e.get("name") or e.get("reason") or "")
            for e in resp.json()["events"]
        }

    def audited(self, sandbox_id: str, event: tuple[str, str, str]) -> bool:
        return event in self.audit(sandbox_id)

    def node_of(self, sandbox_id: str) -> NodeUnderTest:
        rec = self.store.get_sandbox(sandbox_id)
        assert rec is not None
        return next(n for n in self.nodes if n.instance == rec.node_id)

    def state(self, sandbox_id: str) -> SandboxState:
        rec = self.store.get_sandbox(sandbox_id)
        assert rec is not None
        return rec.state


def _down(node: NodeUnderTest) -> None:
    """`declawd down` of a node instance: its sandboxes killed, its gateway removed."""
    subprocess.run([str(BIN / "declawd"), "down"], env=node.env, capture_output=True, timeout=180)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    subprocess.run(["/work/shared/tools/egress-guard"], check=False, capture_output=True)
    pg = PgServer()
    pg.start()
    server: Proc | None = None
    nodes: list[NodeUnderTest] = []
    store: Store | None = None
    try:
        url = pg.url(pg.create_database())
        env = base_env(url)
        nodes = [
            NodeUnderTest(f"{PREFIX}1", "node-1", "10.91.0.0/16", 18312, env),
            NodeUnderTest(f"{PREFIX}2", "node-2", "10.92.0.0/16", 18313, env),
        ]
        # A run killed before its teardown: clear what it left (the store is new, so
        # `down` finds no live sandbox and sweeps every stray of the instance).
        for n in nodes:
            _down(n)
        shutil.rmtree(ROOT, ignore_errors=True)
        ROOT.mkdir(parents=True)
        cp_env = {**env, "DECLAWD_INSTANCE": f"{PREFIX}0", "DECLAWD_STATE_DIR": str(ROOT / "cp")}
        declawd(cp_env, "cluster", "init")
        store = open_store(Settings(database_url=url, state_dir=ROOT / "cp"))
        server = Proc(
            ["server", "--cluster", "--host", "127.0.0.1", "--port", str(API_PORT)],
            cp_env, ROOT / "cp" / "server.log",
        )  # fmt: skip
        server.start()
        server.wait_for(lambda: _healthy(f"http://127.0.0.1:{API_PORT}"), 60, "API server")
        key = (ROOT / "cp" / "keys" / "dev-api-key").read_text().strip()
        tokens = set()
        for n in nodes:
            n.state_dir.mkdir(parents=True, exist_ok=True)
            token = declawd(cp_env, "cluster", "join-token", "--ttl", "600").strip()
            tokens.add(token)
            (n.state_dir / "join-token").write_text(token + "\n")
            n.start_lab()
            n.start_agent(store)
        assert len(tokens) == 2, "each node has a join token of its own"
        yield Cluster(store, server, nodes, key)
    finally:
        if server is not None:
            server.stop()
        for n in nodes:
            n.agent.stop()
            _down(n)
            n.lab.stop(15)
        if store is not None:
            store.close()
        pg.stop()
        assert eventually(nothing_left, 30), leftovers()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def probe(sbx: Sandbox) -> list[str]:
    r = sbx.commands.run("python3 /tmp/probe.py evil.com api.openai.com", timeout=60)
    assert r.exit_code == 0, r.stderr
    out: list[str] = json.loads(r.stdout)
    return out


def lost_404(c: Cluster, sandbox_id: str) -> str:
    """The message of the 404 a lost sandbox answers (waits for the sweep)."""
    seen: list[str] = []

    def answered() -> bool:
        try:
            Sandbox.connect(sandbox_id, **c.sdk())
        except NotFoundException as exc:
            seen.append(str(exc))
            return True
        return False

    assert eventually(answered, DOWN_AFTER_S * 4), f"{sandbox_id} still answers"
    return seen[-1]


def test_cluster_two_nodes(cluster: Cluster) -> None:
    c = cluster
    n1, n2 = c.nodes
    t0 = time.monotonic()

    # Two creates land on the two nodes; commands, files and egress hold on each.
    a, b = c.create(), c.create()
    node_a, node_b = c.node_of(a.sandbox_id), c.node_of(b.sandbox_id)
    assert {node_a.instance, node_b.instance} == {n1.instance, n2.instance}
    for sbx, node in ((a, node_a), (b, node_b)):
        sbx.files.write("/tmp/probe.py", PROBE)
        assert sbx.files.read("/tmp/probe.py") == PROBE
        r = sbx.commands.run("echo $((6 * 7)) && hostname")
        assert r.exit_code == 0 and r.stdout.split()[0] == "42", r
        assert sbx.sandbox_id in node.containers()
        assert probe(sbx) == ["ConnectionRefusedError", "CONNECTED"]
    for sid in (a.sandbox_id, b.sandbox_id):  # each node's gateway audits to the store
        assert eventually(partial(c.audited, sid, ("dns", "deny", "evil.com")), 10), c.audit(sid)
        assert ("dns", "allow", "api.openai.com") in c.audit(sid)
    seen = leftovers()  # what the teardown check must find gone, present now
    for n in c.nodes:
        assert {f"{n.instance}-gw", f"{n.instance}-lab"} <= set(seen["netns"]), seen
    assert seen["processes"] and seen["cgroups"] and seen["mounts"], seen

    # kill: gone from the store's live set and from its node's host.
    assert b.kill(wait=True)
    assert c.state(b.sandbox_id) is SandboxState.KILLED
    assert eventually(lambda: b.sandbox_id not in node_b.containers(), 30)

    # kill -9 of a's agent: after the timeout a is lost, and a create lands on the other.
    node_a.agent.kill9()
    assert a.sandbox_id in node_a.containers()  # the host still holds it
    message = lost_404(c, a.sandbox_id)
    assert f"sandbox lost with node {node_a.name}" in message, message
    assert c.store.get_node(node_a.instance).state == "down"  # type: ignore[union-attr]
    assert ("lifecycle", "deny", message.split("not found: ", 1)[-1]) in c.audit(a.sandbox_id)
    d = c.create()
    assert c.node_of(d.sandbox_id) is node_b
    assert d.commands.run("true").exit_code == 0

    # The agent restarted reconciles (the lost sandbox is gone from its host) and takes
    # work again: it is the less loaded node now.
    node_a.start_agent(c.store)
    assert a.sandbox_id not in node_a.containers()
    rec_a = c.store.get_sandbox(a.sandbox_id)
    assert rec_a is not None and rec_a.released
    e = c.create()
    assert c.node_of(e.sandbox_id) is node_a
    assert e.commands.run("true").exit_code == 0

    # Drain node_b after d is gone: though it is the idle one, the next create avoids it.
    assert d.kill(wait=True)
    assert declawd(node_b.env, "node", "drain", "--control-plane", CONTROL_PLANE).strip() == (
        "draining"
    )
    f = c.create()
    assert c.node_of(f.sandbox_id) is node_a
    f.files.write("/tmp/f", "on the busier node")
    assert f.files.read("/tmp/f") == "on the busier node"

    # A node that stops answering and comes back (SIGSTOP, then SIGCONT): after the
    # timeout its sandboxes are lost; its next heartbeat is told `down`, so it kills them
    # on its host before it registers again and takes work.
    assert node_a.agent.proc is not None
    os.kill(node_a.agent.proc.pid, signal.SIGSTOP)
    try:
        assert f"sandbox lost with node {node_a.name}" in lost_404(c, e.sandbox_id)
    finally:
        os.kill(node_a.agent.proc.pid, signal.SIGCONT)
    assert eventually(lambda: not node_a.containers(), 30), node_a.containers()
    node_a.agent.wait_for(
        lambda: c.store.get_node(node_a.instance).state == "up",  # type: ignore[union-attr]
        30,
        "back up",
    )
    assert all(c.store.get_sandbox(s.sandbox_id).released for s in (e, f))  # type: ignore[union-attr]
    g = c.create()
    assert c.node_of(g.sandbox_id) is node_a
    assert g.commands.run("true").exit_code == 0
    assert g.kill(wait=True)
    assert eventually(lambda: not node_a.containers() and not node_b.containers(), 30)
    assert time.monotonic() - t0 < 150
