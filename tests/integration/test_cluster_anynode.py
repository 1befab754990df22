"""What works on any node of a cluster, on the real cluster of test_cluster.py (its fixtures).

Every host (two API servers, three nodes) mounts one shared filesystem, each at a path of
its own (tests/shared_fs.py: an NFS-Ganesha export on the test bridge, mounted from each
host's netns by our libnfs FUSE client, since this kernel has no NFS client). Through the
official SDK:

- the built-in templates are built once: node 1 (the only one with layers on its disk)
  publishes them, nodes 2 and 3 fetch them from the blob store and build nothing, and every
  node runs them;
- a team template built through an API server is built on one node, published, and runs on
  every node (the others fetch its layers);
- a live volume is shared by sandboxes on different nodes and the volume file API of either
  API server (mount, mount-ro, copy);
- a snapshot taken on a node that is then lost (kill -9 of its agent) restores on another
  node, files byte for byte, policy enforced; the old node restarted reconciles without
  touching the restored sandbox;
- `sbx.get_host(port)` through either API server reaches a server in a sandbox on any node
  (HTTP both ways, a 5 MiB stream each way, a server on the sandbox's loopback, a WebSocket,
  502 for a closed port): the API server tunnels to the sandbox's node (cluster/tunnel.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from functools import partial

import httpx
import pytest
from declaw import (
    NotFoundException,
    Sandbox,
    Template,
    TemplateBase,
    VolumeAttachment,
    Volumes,
)
from wsproto.events import AcceptConnection, CloseConnection, TextMessage

from declawd.store import SandboxState
from declawd.templates.catalog import catalog_plan, catalog_spec
from declawd.templates.layers import LayerCache
from tests.e2e.test_ports import start_servers, ws_connect, ws_receive
from tests.integration.test_cluster import (
    ROOT,
    Cluster,
    assert_egress,
    cluster,
    eventually,
)

__all__ = ["cluster"]  # the fixture, imported for its use here

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(420),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and containers"),
]

EXPORT = ROOT / "blob-export" / "blobs"  # the file server's side of the shared filesystem
TOKEN = secrets.token_hex(3)


@pytest.fixture
def made(cluster: Cluster) -> Iterator[list[Sandbox]]:
    """Sandboxes a test makes; killed after it, so placement starts even for the next."""
    out: list[Sandbox] = []
    yield out
    for sbx in out:
        with contextlib.suppress(NotFoundException):
            Sandbox.connect(sbx.sandbox_id, **cluster.sdk()).kill(wait=True)


def _fetched(cache: LayerCache, key: str) -> bool:
    """Whether the node's copy of layer `key` came from the blob store (not built there)."""
    return json.loads((cache.dir(key) / "layer.json").read_text()).get("origin") == "fetched"


def test_built_in_templates_are_built_once_and_run_on_every_node(
    cluster: Cluster, made: list[Sandbox]
) -> None:
    keys = catalog_plan("python").keys
    for key in keys:  # published: the archive and, last, its description
        assert (EXPORT / "layers" / f"{key}.tar").is_file(), key
        assert (EXPORT / "layers" / f"{key}.json").is_file(), key
    for node in cluster.nodes[1:]:
        cache = LayerCache(node.state_dir / "templates")
        assert all(cache.exists(k) and _fetched(cache, k) for k in keys), node.instance
        assert not (node.state_dir / "templates" / "tmp").exists() or not any(
            (node.state_dir / "templates" / "tmp").iterdir()
        ), "a fetch leaves no staging debris"
    # Three creates spread over the three nodes, each from the same layers.
    made.extend(cluster.create(via=i % 2) for i in range(3))
    assert {cluster.node_of(s.sandbox_id).instance for s in made} == {
        n.instance for n in cluster.nodes
    }
    for sbx in made:
        r = sbx.commands.run("python3 -c 'import httpx, sys; print(sys.version_info[0])'")
        assert (r.exit_code, r.stdout) == (0, "3\n"), r


def test_a_team_template_is_built_on_one_node_and_runs_on_every_node(
    cluster: Cluster, made: list[Sandbox]
) -> None:
    alias = f"cluster-tpl-{TOKEN}"
    base_packages = catalog_spec("base")["packages"]
    tpl = (
        TemplateBase()
        .from_base_image("debian:bookworm")
        .apt_install(*base_packages)  # the built-in base's first layer: in the blob store
        .run_cmd(["echo", f"built-{TOKEN}", ">", "/opt/marker"])
    )
    logs: list[str] = []
    info = Template.build(tpl, alias, on_build_logs=logs.append, **cluster.sdk(via=1))
    assert info.status == "completed", logs
    rec = cluster.store.get_template_by_alias(_team(cluster), alias)
    assert rec is not None and rec["state"] == "ready"
    layers = [str(k) for k in rec["layers"]]
    for key in layers:
        assert (EXPORT / "layers" / f"{key}.json").is_file(), key
    # Built on exactly one node: its top layer is "built" there and fetched everywhere else.
    top = layers[-1]
    caches = {n.instance: LayerCache(n.templates_dir) for n in cluster.nodes}
    made.extend(
        Sandbox.create(template=alias, timeout=120, **cluster.sdk(via=i % 2)) for i in range(3)
    )
    assert {cluster.node_of(s.sandbox_id).instance for s in made} == set(caches)
    for sbx in made:
        r = sbx.commands.run("cat /opt/marker")
        assert (r.exit_code, r.stdout) == (0, f"built-{TOKEN}\n"), r
    origins = sorted(_fetched(c, top) for c in caches.values())
    assert origins == [False, True, True], origins


def _team(cluster: Cluster) -> str:
    found = cluster.store.authenticate(cluster.key)
    assert found is not None
    return found["team_id"]


def test_a_live_volume_is_shared_by_sandboxes_on_different_nodes(
    cluster: Cluster, made: list[Sandbox]
) -> None:
    vol = Volumes.create(f"shared-{TOKEN}", **cluster.sdk()).volume_id
    try:
        attach = partial(VolumeAttachment, vol)
        a = Sandbox.create(
            template="python", timeout=120, volumes=[attach("/shared", mode="mount")],
            **cluster.sdk(via=0),
        )  # fmt: skip
        made.append(a)
        b = Sandbox.create(
            template="python", timeout=120, volumes=[attach("/shared", mode="mount")],
            **cluster.sdk(via=1),
        )  # fmt: skip
        made.append(b)
        ro = Sandbox.create(
            template="python", timeout=120, volumes=[attach("/ro", mode="mount-ro")],
            **cluster.sdk(via=0),
        )  # fmt: skip
        made.append(ro)
        assert len({cluster.node_of(s.sandbox_id).instance for s in made}) == 3
        assert a.commands.run("echo from-a > /shared/note").exit_code == 0
        assert b.files.read("/shared/note") == "from-a\n"  # another node sees it at once
        assert Volumes.files(vol, **cluster.sdk(via=1)).read("/note") == b"from-a\n"
        Volumes.files(vol, **cluster.sdk(via=0)).write("/from-api", b"api")
        assert a.files.read("/shared/from-api") == "api"
        assert ro.files.read("/ro/note") == "from-a\n"
        w = ro.commands.run("echo x > /ro/nope", user="root")
        assert w.exit_code != 0 and "Read-only file system" in w.stderr, w
        # Copy mode: the volume's files at create, a private copy afterwards.
        c = Sandbox.create(
            template="python", timeout=120, volumes=[attach("/copy", mode="copy")],
            **cluster.sdk(via=1),
        )  # fmt: skip
        made.append(c)
        assert c.files.read("/copy/note") == "from-a\n"
        c.files.write("/copy/note", "changed in the copy")
        assert Volumes.files(vol, **cluster.sdk()).read("/note") == b"from-a\n"
        assert (EXPORT / "volumes" / vol).is_dir()  # on the shared filesystem
    finally:
        for sbx in made:
            sbx.kill(wait=True)
        made.clear()
        Volumes.delete(vol, **cluster.sdk())
    assert not (EXPORT / "volumes" / vol).exists()


def test_a_snapshot_restores_on_another_node_after_its_node_is_lost(
    cluster: Cluster, made: list[Sandbox]
) -> None:
    sbx = cluster.create(via=0)
    sid = sbx.sandbox_id
    old = cluster.node_of(sid)
    made_file = (
        "mkdir -p /home/user/work && head -c 3000000 /dev/urandom > /home/user/work/data.bin"
        " && sha256sum /home/user/work/data.bin"
    )
    r = sbx.commands.run(made_file)
    assert r.exit_code == 0, r
    digest = r.stdout.split()[0]
    snap = sbx.snapshot()
    assert (EXPORT / "snapshots" / snap.snapshot_id / "fs.tar").is_file()

    old.agent.kill9()
    assert eventually(lambda: cluster.state(sid) is SandboxState.KILLED, 30)
    back = Sandbox.restore(sid, **cluster.sdk(via=1))
    made.append(back)
    new = cluster.node_of(sid)
    assert new is not old and cluster.state(sid) is SandboxState.RUNNING
    r = back.commands.run("sha256sum /home/user/work/data.bin")
    assert (r.exit_code, r.stdout.split()[0]) == (0, digest), r
    assert_egress(back)  # its policy came back with it
    assert sid in new.containers()

    # The old node comes back: it removes what it still held of the sandbox on its host,
    # and leaves the restored sandbox (the store places it elsewhere) alone.
    old.start_agent(cluster.store)
    assert eventually(lambda: sid not in old.containers(), 30)
    rec = cluster.store.get_sandbox(sid)
    assert rec is not None and rec.node_id == new.instance and rec.state is SandboxState.RUNNING
    again = Sandbox.connect(sid, **cluster.sdk(via=0))
    assert again.commands.run("echo alive").stdout == "alive\n"
    assert sid in new.containers()


def test_ports_of_a_sandbox_on_any_node_through_either_api_server(
    cluster: Cluster, made: list[Sandbox]
) -> None:
    sbx = Sandbox.create(template="python", timeout=300, **cluster.sdk(via=0))
    made.append(sbx)
    start_servers(sbx, (8000, "0.0.0.0"), (8001, "127.0.0.1"))
    key = {"X-API-Key": cluster.key}
    through_b = Sandbox.connect(sbx.sandbox_id, **cluster.sdk(via=1))
    for box in (sbx, through_b):
        got = httpx.get(box.get_host(8000) + "/echo/a%20b?x=1", headers=key, timeout=30)
        assert got.status_code == 200, got.text
        assert got.json()["path"] == "/echo/a%20b?x=1"
        assert "sandbox" in got.headers["content-security-policy"]
        loop = httpx.get(box.get_host(8001) + "/echo", headers=key, timeout=30)
        assert loop.status_code == 200 and loop.json()["method"] == "GET", loop.text
    size = 5 * 2**20
    block = bytes(range(256)) * 256
    up = httpx.post(
        through_b.get_host(8000) + "/up", content=block * (size // len(block)), headers=key,
        timeout=60,
    )  # fmt: skip
    assert up.json()["length"] == size, up.text
    down = httpx.get(through_b.get_host(8000) + f"/big/{size}", headers=key, timeout=60)
    assert down.content == (block * (size // len(block) + 1))[:size]
    closed = httpx.get(sbx.get_host(8765) + "/", headers=key, timeout=30)
    assert closed.status_code == 502
    assert closed.json()["message"] == f"nothing listens on port 8765 in sandbox {sbx.sandbox_id}"
    sock, ws, answer = ws_connect(
        through_b.get_host(8000) + f"/ws?token={sbx.traffic_access_token}", {}
    )
    with sock:
        assert isinstance(answer, AcceptConnection), answer
        sock.sendall(ws.send(TextMessage(data="over the tunnel")))
        assert ws_receive(sock, ws) == "echo:over the tunnel"
        sock.sendall(ws.send(CloseConnection(code=1000)))
