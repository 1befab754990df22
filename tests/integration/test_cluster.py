"""A real cluster on one machine: PostgreSQL, two API servers, three nodes on three "hosts".

Real processes, as an operator runs them (docs/cluster.md): a throwaway PostgreSQL
(tests/pg.py) on TCP, `declawd cluster init`, one `declawd cluster join-token` per node,
two `declawd server --cluster` and three `declawd node` agents. Each node runs as if on a
host of its own: its agent and its lab run in a network namespace `dcwhN` linked to the
real host by a veth on the bridge `dcwhbr` (tests/cluster_net.py), and reach PostgreSQL
and the control plane over it; inside, the node makes its own gateway and sandboxes on an
instance of its own (`dcwc1`..`dcwc3`: own state dir, address pool, gateway) with a lab of
its own. The official SDK talks to the API servers only; the test checks what each step did
in the shared store and on the nodes' hosts.

The story, in order: three creates land on the three nodes; commands, files and the egress
checks of the seed scenario hold on each, used through the other API server; a sandbox
created through one API server is killed through the other; an API server restarted still
lists and runs what was made through it; kill -9 of one agent: after the (short) down
timeout its sandbox answers 404 with the "lost" message and a create lands on another node;
the agent restarted reconciles (the lost sandbox's container is gone from its host) and
takes work again; drain of an idle node sends the next create elsewhere; an agent stopped
(SIGSTOP) past the timeout and continued is told it is down, kills its lost sandboxes on
its host and takes work again. `DECLAWD_TEST_FULL=1` adds more sandboxes per node and the
egress checks on runsc. Teardown runs whatever failed, and leaves no namespace (host netns
included), veth, bridge, nft table, cgroup, mount or process of `dcwc*`/`dcwh*` behind.

Fixtures and names other tests import (test_cluster_vault.py): `cluster` (a `Cluster`:
`store`, `server` (the first API server), `servers`, `nodes`, `key`, `sdk()`, `create()`,
`audit()`, `node_of()`, `state()`), `NodeUnderTest`, `Proc`, `declawd`, `leftovers`,
`nothing_left`, `eventually`, `API_PORT`, `CONTROL_PLANE`, `ROOT`, `PREFIX`.
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
from declawd.volumes.host import unprotect
from tests import cluster_net
from tests.cluster_net import BRIDGE_ADDRESS, NETWORK, HostNetns
from tests.pg import PgServer
from tests.shared_fs import SharedFs, remove_stale

FULL = os.environ.get("DECLAWD_TEST_FULL") == "1"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(900 if FULL else 300),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and containers"),
]

BIN = Path(sys.executable).parent
ROOT = Path("/var/lib/declawd-cluster-test")
TEMPLATES_DIR = Path("/var/lib/declawd/templates")
API_PORT = 18310  # API server A; B is API_PORT + 10
INTERNAL_PORT = 18311  # A's internal API; B's is INTERNAL_PORT + 10
NODE_PORT = 18312  # every node's internal API, each on its own host netns address
PG_PORT = 18309
SFS_PORT = 18308  # the blob store's NFS server (NFS-Ganesha) on the bridge
CONTROL_PLANE = f"https://{BRIDGE_ADDRESS}:{INTERNAL_PORT}"  # what the nodes join and beat to
HEARTBEAT_S = 0.5
REGISTER_TIMEOUT_S = 900
DOWN_AFTER_S = 5.0  # 10 beats: a noisy 2-core CI machine with 4 nodes stalls a beat or two
PREFIX = "dcwc"
EXTRA_PER_NODE = 3  # the long form's additional sandboxes per node

PROBE = r"""
import json, socket, sys, urllib.request
def tcp(host, port):
    try:
        socket.create_connection((host, port), timeout=5).close()
        return "CONNECTED"
    except Exception as e:
        return type(e).__name__
def https(url):
    try:
        urllib.request.urlopen(url, timeout=10).close()
        return "OK"
    except Exception as e:
        return type(e).__name__
print(json.dumps([*(tcp(h, 443) for h in sys.argv[1:]), https("https://evil.com")]))
"""


@dataclass
class Proc:
    """A `declawd` process with its log (appended across runs); `prefix` runs it elsewhere
    (`nsenter --net=...`: in a host netns, same pid since nsenter execs)."""

    argv: list[str]
    env: dict[str, str]
    log: Path
    prefix: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    offset: int = 0

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*self.prefix, str(BIN / "declawd"), *self.argv],
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


def declawd(
    env: dict[str, str], *args: str, timeout: float = 60, prefix: list[str] | None = None
) -> str:
    out = subprocess.run(
        [*(prefix or []), str(BIN / "declawd"), *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
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
    """A node on a host of its own: agent and lab run in `host` (a `dcwhN` netns)."""

    instance: str
    name: str
    pool: str
    port: int
    env: dict[str, str]
    host: HostNetns
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
            "DECLAWD_BLOB_DIR": str(self.blob_dir),
        }
        if self.instance != f"{PREFIX}1":
            # Only node 1 has the built-in templates' layers on its disk (the machine's
            # build cache); the others get them from the blob store (built once).
            self.env["DECLAWD_TEMPLATES_DIR"] = str(self.state_dir / "templates")
        token_file = str(self.state_dir / "join-token")
        inside = self.host.argv([])
        self.agent = Proc(
            ["node", "--control-plane", CONTROL_PLANE, "--join-token-file", token_file,
             "--listen", f"{self.host.address}:{self.port}", "--lab"],
            self.env, self.state_dir / "agent.log", inside,
        )  # fmt: skip
        self.lab = Proc(["lab", "serve"], self.env, self.state_dir / "lab.log", inside)

    @property
    def state_dir(self) -> Path:
        return ROOT / self.instance

    @property
    def templates_dir(self) -> Path:
        return Path(self.env.get("DECLAWD_TEMPLATES_DIR") or TEMPLATES_DIR)

    @property
    def blob_dir(self) -> Path:
        """Where this host mounts the shared blob store (each host at a path of its own)."""
        return self.state_dir / "blobs"

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
        self.wait_up(store)

    def wait_up(self, store: Store) -> None:
        def registered_up() -> bool:
            node = store.get_node(self.instance)
            return node is not None and node.state == "up" and time.time() - node.last_seen < 2

        # A liveness bound, not a speed check: at a cluster's first start node 1 publishes
        # every built-in template's layers (~1.3 GB) to the NFS export before it registers,
        # and through the FUSE client on a loaded 2-core machine that took over 180 s once.
        self.agent.wait_for(registered_up, REGISTER_TIMEOUT_S, f"node {self.instance} registered")

    def drain(self) -> str:
        """`declawd node drain`, run on the node's host (it reaches the control plane over
        its link)."""
        return declawd(
            self.env, "node", "drain", "--control-plane", CONTROL_PLANE, prefix=self.host.argv([])
        ).strip()


# Host resources of the dcwc* instances and dcwh* hosts -------------------------------------
def leftovers() -> dict[str, list[str]]:
    """Every netns, nft table, cgroup, mount and process of a `dcwc*` instance, and every
    host netns, veth and bridge of the `dcwh*` hosts."""
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
        **cluster_net.leftovers(),
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
    servers: list[Proc]
    nodes: list[NodeUnderTest]
    key: str

    @property
    def server(self) -> Proc:
        """API server A, the one whose internal API the nodes join and heartbeat to."""
        return self.servers[0]

    def api(self, via: int = 0) -> str:
        return f"http://{BRIDGE_ADDRESS}:{API_PORT + 10 * via}"

    def sdk(self, via: int = 0) -> dict[str, Any]:
        """SDK arguments for API server `via` (0: A, 1: B); the key works on both."""
        return {"api_key": self.key, "domain": f"{BRIDGE_ADDRESS}:{API_PORT + 10 * via}"}

    def create(self, via: int = 0, runtime: str | None = None) -> Sandbox:
        sbx = Sandbox.create(
            template="python",
            timeout=300,
            metadata={"declaw.runtime": runtime} if runtime else None,
            security=SecurityPolicy(
                network=NetworkPolicy(allow_out=["api.openai.com"], deny_out=[ALL_TRAFFIC])
            ),
            **self.sdk(via),
        )
        return sbx

    def connect(self, sandbox_id: str, via: int) -> Sandbox:
        return Sandbox.connect(sandbox_id, **self.sdk(via))

    def listed(self, via: int) -> set[str]:
        """The ids API server `via` lists."""
        data = Sandbox.list(**self.sdk(via))
        return {s.get("sandboxID") or s.get("sandbox_id") for s in data["sandboxes"]}

    def audit(self, sandbox_id: str, via: int = 0) -> set[tuple[str, str, str]]:
        """(kind, verdict, name or reason) of the sandbox's audit events, through the API."""
        resp = httpx.get(
            f"{self.api(via)}/sandboxes/{sandbox_id}/audit",
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

    def live_on(self, node: NodeUnderTest) -> list[str]:
        """The live sandboxes the store places on `node`."""
        return [r.sandbox_id for r in self.store.list_live_sandboxes(node.instance)]


def _down(node: NodeUnderTest) -> None:
    """`declawd down` of a node instance: its sandboxes killed, its gateway removed."""
    subprocess.run([str(BIN / "declawd"), "down"], env=node.env, capture_output=True, timeout=180)


def _api_server(env: dict[str, str], index: int) -> Proc:
    """API server A (0) or B (1): own state dir and ports, the shared store and CA."""
    state = ROOT / f"cp{'ab'[index]}"
    env = {
        **env,
        "DECLAWD_INSTANCE": f"{PREFIX}0",
        "DECLAWD_STATE_DIR": str(state),
        "DECLAWD_BLOB_DIR": str(state / "blobs"),
        # No layers on an API server's disk: it judges templates by the blob store.
        "DECLAWD_TEMPLATES_DIR": str(state / "templates"),
        "DECLAWD_INTERNAL_PORT": str(INTERNAL_PORT + 10 * index),
    }
    return Proc(
        ["server", "--cluster", "--host", BRIDGE_ADDRESS, "--port", str(API_PORT + 10 * index)],
        env, state / "server.log",
    )  # fmt: skip


def _start_server(server: Proc) -> None:
    url = f"http://{BRIDGE_ADDRESS}:{server.argv[-1]}"
    server.start()
    server.wait_for(lambda: _healthy(url), 60, f"API server {url}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    subprocess.run(["/work/shared/tools/egress-guard"], check=False, capture_output=True)
    hosts = [HostNetns(i) for i in (1, 2, 3)]
    pg = PgServer(listen=BRIDGE_ADDRESS, port=PG_PORT, trust_net=str(NETWORK))
    sfs = SharedFs(ROOT / "blob-export", BRIDGE_ADDRESS, SFS_PORT)
    servers: list[Proc] = []
    nodes: list[NodeUnderTest] = []
    store: Store | None = None
    try:
        # A run killed before its teardown: clear what it left (the store is new, so
        # `down` finds no live sandbox and sweeps every stray of the instance).
        cluster_net.remove_all()
        cluster_net.ensure_bridge()  # PostgreSQL listens on its address
        pg.start()
        url = _store_url(pg, pg.create_database())
        env = base_env(url)
        nodes = [
            NodeUnderTest(
                f"{PREFIX}{h.index}", f"node-{h.index}", f"10.9{h.index}.0.0/16", NODE_PORT, env, h
            )  # fmt: skip
            for h in hosts
        ]
        for n in nodes:
            _down(n)
        remove_stale(ROOT)
        shutil.rmtree(ROOT, ignore_errors=True)
        ROOT.mkdir(parents=True)
        for h in hosts:
            h.ensure()
        # The blob store: one export on the bridge, mounted by every host at its own path.
        sfs.start()
        servers = [_api_server(env, 0), _api_server(env, 1)]
        for s in servers:
            sfs.mount(Path(s.env["DECLAWD_BLOB_DIR"]))
        for n in nodes:
            sfs.mount(n.blob_dir, n.host.argv([]))
        cp_env = servers[0].env
        declawd(cp_env, "cluster", "init")
        store = open_store(Settings(database_url=url, state_dir=ROOT / "cpa"))
        for s in servers:
            _start_server(s)
        # No API server makes a dev key in cluster mode: keys are an operator's to make.
        assert not (ROOT / "cpa" / "keys" / "dev-api-key").exists()
        key = declawd(cp_env, "keys", "create", "--team", "default").strip()
        tokens = set()
        for n in nodes:
            n.state_dir.mkdir(parents=True, exist_ok=True)
            token = declawd(cp_env, "cluster", "join-token", "--ttl", "600").strip()
            tokens.add(token)
            (n.state_dir / "join-token").write_text(token + "\n")
            n.start_lab()
        # Node 1 first: it publishes the built-in templates' layers; 2 and 3 then start at
        # once, and fetch them (one waits on the other's lock, neither builds).
        nodes[0].start_agent(store)
        for n in nodes[1:]:
            n.agent.start()
        for n in nodes[1:]:
            n.wait_up(store)
        assert len(tokens) == len(nodes), "each node has a join token of its own"
        yield Cluster(store, servers, nodes, key)
    finally:
        for s in servers:
            s.stop()
        for n in nodes:
            n.agent.stop()
            _down(n)
            n.lab.stop(15)
        for s in servers:
            unprotect(Path(s.env["DECLAWD_BLOB_DIR"]) / "volumes")
        sfs.stop()
        if store is not None:
            store.close()
        pg.stop()
        cluster_net.remove_all()
        assert eventually(nothing_left, 30), leftovers()


def _store_url(pg: PgServer, dbname: str) -> str:
    """The store's URL, TCP over the bridge only, as on a real network: agents and API
    servers connect to it; a node's gateway daemon, in a netns that cannot reach the
    bridge, gets none and writes its audit to its agent's spool (docs/cluster.md)."""
    return pg.tcp_url(dbname) + "?connect_timeout=5"


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


EGRESS = ["ConnectionRefusedError", "ConnectionRefusedError", "CONNECTED"]


def probe(sbx: Sandbox) -> list[str]:
    """The seed scenario's egress checks: raw connects to evil.com:443, 1.1.1.1:443 and
    api.openai.com:443, then urllib to https://evil.com (its result's class name)."""
    sbx.files.write("/tmp/probe.py", PROBE)
    r = sbx.commands.run("python3 /tmp/probe.py evil.com 1.1.1.1 api.openai.com", timeout=90)
    assert r.exit_code == 0, r.stderr
    out: list[str] = json.loads(r.stdout)
    return out


def assert_egress(sbx: Sandbox) -> None:
    out = probe(sbx)
    assert out[:3] == EGRESS and out[3] != "OK", out


def lost_404(c: Cluster, sandbox_id: str, via: int = 0) -> str:
    """The message of the 404 a lost sandbox answers (waits for the sweep)."""
    seen: list[str] = []

    def answered() -> bool:
        try:
            Sandbox.connect(sandbox_id, **c.sdk(via))
        except NotFoundException as exc:
            seen.append(str(exc))
            return True
        return False

    assert eventually(answered, DOWN_AFTER_S * 4), f"{sandbox_id} still answers"
    return seen[-1]


def _long_form(c: Cluster) -> None:
    """More sandboxes per node (alternating API servers), and the egress checks on runsc
    on every node; everything made here is killed again (loads back as they were)."""
    before = {n.instance: len(c.live_on(n)) for n in c.nodes}
    extra = [c.create(via=i % 2) for i in range(EXTRA_PER_NODE * len(c.nodes))]
    for n in c.nodes:
        assert len(c.live_on(n)) == before[n.instance] + EXTRA_PER_NODE, c.live_on(n)
    for i, sbx in enumerate(extra):
        r = c.connect(sbx.sandbox_id, via=(i + 1) % 2).commands.run(f"echo {i}")
        assert r.exit_code == 0 and r.stdout.strip() == str(i), r
    for sbx in extra:
        assert sbx.kill(wait=True)
    gvisor = [c.create(runtime="runsc") for _ in c.nodes]
    assert {c.node_of(s.sandbox_id).instance for s in gvisor} == {n.instance for n in c.nodes}
    for sbx in gvisor:
        rec = c.store.get_sandbox(sbx.sandbox_id)
        assert rec is not None and rec.runtime == "runsc", rec
        assert_egress(c.connect(sbx.sandbox_id, via=1))
        assert sbx.kill(wait=True)


def test_cluster_three_hosts(cluster: Cluster) -> None:
    c = cluster
    t0 = time.monotonic()

    # Three creates through A land on the three nodes; commands, files and the egress
    # checks hold on each, used through B.
    made = [c.create(via=0) for _ in c.nodes]
    on = [c.node_of(s.sandbox_id) for s in made]
    assert {n.instance for n in on} == {n.instance for n in c.nodes}
    for sbx, node in zip(made, on, strict=True):
        other = c.connect(sbx.sandbox_id, via=1)
        other.files.write("/tmp/hello", "through B")
        assert sbx.files.read("/tmp/hello") == "through B"  # and read back through A
        r = other.commands.run("echo $((6 * 7)) && hostname")
        assert r.exit_code == 0 and r.stdout.split()[0] == "42", r
        assert sbx.sandbox_id in node.containers()
        assert_egress(other)
    for sbx in made:  # each node's gateway audits to the store
        sid = sbx.sandbox_id
        assert eventually(partial(c.audited, sid, ("dns", "deny", "evil.com")), 10), c.audit(sid)
        assert ("dns", "allow", "api.openai.com") in c.audit(sid, via=1)
    for n in c.nodes:  # ... through its agent's spool: the daemon is given no store URL
        pid = int((n.state_dir / "gateway" / "gateway.pid").read_text())
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not [e for e in environ if e.startswith(b"DECLAWD_DATABASE_URL=")], n.instance
        assert (n.state_dir / "cluster" / "audit-spool.db").stat().st_mode & 0o777 == 0o600
    seen = leftovers()  # what the teardown check must find gone, present now
    for n in c.nodes:
        assert {f"{n.instance}-gw", f"{n.instance}-lab"} <= set(seen["netns"]), seen
    assert set(seen["host_netns"]) == {n.host.name for n in c.nodes}, seen
    assert seen["processes"] and seen["cgroups"] and seen["mounts"], seen
    if FULL:
        _long_form(c)

    # Created through A, killed through B: gone from the store's live set and its host.
    a, b, _c = made
    node_a, node_b = on[0], on[1]
    assert c.connect(b.sandbox_id, via=1).kill(wait=True)
    assert c.state(b.sandbox_id) is SandboxState.KILLED
    assert eventually(lambda: b.sandbox_id not in node_b.containers(), 30)

    # B restarted loses nothing: what was made through it is still listed and usable.
    h = c.create(via=1)
    c.servers[1].stop()
    _start_server(c.servers[1])
    assert {h.sandbox_id, a.sandbox_id} <= c.listed(via=1)
    h_again = c.connect(h.sandbox_id, via=1)
    assert h_again.commands.run("echo still").stdout.strip() == "still"
    h_again.files.write("/tmp/after-restart", "kept")
    assert h_again.files.read("/tmp/after-restart") == "kept"

    # kill -9 of a's agent: after the timeout a is lost (through either API server), and a
    # create lands on another node.
    node_a.agent.kill9()
    assert a.sandbox_id in node_a.containers()  # the host still holds it
    message = lost_404(c, a.sandbox_id)
    assert f"sandbox lost with node {node_a.name}" in message, message
    assert f"sandbox lost with node {node_a.name}" in lost_404(c, a.sandbox_id, via=1)
    assert c.store.get_node(node_a.instance).state == "down"  # type: ignore[union-attr]
    assert ("lifecycle", "deny", message.split("not found: ", 1)[-1]) in c.audit(a.sandbox_id)
    d = c.create()
    assert c.node_of(d.sandbox_id) is not node_a
    assert d.commands.run("true").exit_code == 0

    # The agent restarted reconciles (the lost sandbox is gone from its host) and takes
    # work again: it is the least loaded node now.
    node_a.start_agent(c.store)
    assert a.sandbox_id not in node_a.containers()
    rec_a = c.store.get_sandbox(a.sandbox_id)
    assert rec_a is not None and rec_a.released
    e = c.create()
    assert c.node_of(e.sandbox_id) is node_a
    assert e.commands.run("true").exit_code == 0

    # Drain another node once it is idle: though it is the least loaded, the next create
    # avoids it.
    idle = next(n for n in c.nodes if n is not node_a)
    for sid in c.live_on(idle):
        assert c.connect(sid, via=0).kill(wait=True)
    assert idle.drain() == "draining"
    f = c.create(via=1)
    assert c.node_of(f.sandbox_id) is not idle
    f.files.write("/tmp/f", "not on the drained node")
    assert f.files.read("/tmp/f") == "not on the drained node"

    # A node that stops answering and comes back (SIGSTOP, then SIGCONT): after the
    # timeout its sandboxes are lost; its next heartbeat is told `down`, so it kills them
    # on its host before it registers again and takes work.
    on_a = c.live_on(node_a)
    assert on_a
    assert node_a.agent.proc is not None
    os.kill(node_a.agent.proc.pid, signal.SIGSTOP)
    try:
        assert f"sandbox lost with node {node_a.name}" in lost_404(c, on_a[0])
    finally:
        os.kill(node_a.agent.proc.pid, signal.SIGCONT)
    assert eventually(lambda: not node_a.containers(), 30), node_a.containers()
    node_a.agent.wait_for(
        lambda: c.store.get_node(node_a.instance).state == "up",  # type: ignore[union-attr]
        30,
        "back up",
    )
    assert all(c.store.get_sandbox(s).released for s in on_a)  # type: ignore[union-attr]
    g = c.create()
    assert c.node_of(g.sandbox_id) is node_a
    assert g.commands.run("true").exit_code == 0
    assert g.kill(wait=True)
    for n in c.nodes:
        for sid in c.live_on(n):
            assert c.connect(sid, via=1).kill(wait=True)
    assert eventually(lambda: not any(n.containers() for n in c.nodes), 30)
    assert time.monotonic() - t0 < (600 if FULL else 150)
