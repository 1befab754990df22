"""Vault injection in cluster mode, on the real cluster of test_cluster.py (its fixtures).

The master key is the control plane's alone: no node's state dir has `keys/vault.key`, and
each node's gateway runs with `--vault-socket` (its agent's socket), never `--vault-key`. A
secret made through the SDK's `VaultClient` and bound with `vault_refs` reaches the lab's
`/anything` (its request log is the witness of what left the node) from a sandbox on a
node; a rotation is seen on the next request, a delete sends the placeholder again. The
cost of a lookup through the node's socket (agent, mTLS, control plane, PostgreSQL) is
measured and printed.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import stat
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from declaw import Sandbox, VaultClient, VaultScope

from declawd.cluster.secrets import vault_socket_path
from declawd.lab.requestlog import read_requests
from declawd.vault.nodesource import NodeSecretSource
from tests.integration.test_cluster import (
    Cluster,
    NodeUnderTest,
    cluster,
    eventually,
)

__all__ = ["cluster"]  # the fixture, imported for its use here

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and containers"),
]

PLACEHOLDER = "declaw:vault-managed"
HOST = "api.openai.com"


@pytest.fixture(scope="module")
def vault(cluster: Cluster) -> Iterator[VaultClient]:
    with VaultClient(**cluster.sdk()) as v:  # API server A, whose internal API nodes call
        yield v


def _send(sbx: Sandbox, marker: str) -> None:
    """The sandbox sends its placeholder as a bearer token to the lab's echo."""
    url = f"https://{HOST}/anything?case={marker}"
    r = sbx.commands.run(
        "curl -sS --max-time 30 -o /dev/null -w '%{http_code}' "
        f'-H "Authorization: Bearer $OPENAI_API_KEY" {shlex.quote(url)}',
        timeout=60,
    )
    assert r.exit_code == 0 and r.stdout.strip() == "200", (r.stdout, r.stderr)


def _upstream_auth(node: NodeUnderTest, marker: str, since: float) -> str:
    """The Authorization header the lab received with `marker` (its request log)."""
    found: list[dict[str, object]] = []

    def seen() -> bool:
        found[:] = [
            r
            for r in read_requests(node.settings, host=HOST, since=since)
            if marker in json.dumps(r)
        ]
        return bool(found)

    assert eventually(seen, 15), f"the lab of {node.instance} never saw {marker}"
    headers = found[-1]["headers"]
    assert isinstance(headers, dict)
    return str(headers.get("authorization"))


def _gateway_argv(node: NodeUnderTest) -> list[str]:
    pid = (node.state_dir / "gateway" / "gateway.pid").read_text().strip()
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def _changes_within_two_requests(
    sbx: Sandbox, node: Any, t0: float, *, before: str, after: str
) -> None:
    """After a rotation or a delete the next request carries the new value, or, when the
    gateway answered it from memory on its event loop and re-checks in the background
    (docs/cluster.md), the old one; from the first request with the new value on, every
    request carries it; nothing else ever goes out. The re-check is one control-plane round
    trip, so the second request has it in practice; five are allowed."""
    seen: list[str] = []
    while f"Bearer {after}" not in seen[-1:]:
        assert len(seen) < 5, seen
        m = "m" + secrets.token_hex(6)
        _send(sbx, m)
        seen.append(_upstream_auth(node, m, t0))
        assert seen[-1] in (f"Bearer {before}", f"Bearer {after}"), seen
    m = "m" + secrets.token_hex(6)
    _send(sbx, m)
    assert _upstream_auth(node, m, t0) == f"Bearer {after}", seen


def test_vault_values_come_from_the_control_plane(cluster: Cluster, vault: VaultClient) -> None:
    c = cluster
    value = f"sk-cluster-{secrets.token_hex(12)}"
    rotated = f"sk-cluster-rotated-{secrets.token_hex(12)}"
    name = f"cl-openai-{secrets.token_hex(4)}"
    vault.create_secret(value, name=name, scopes=[VaultScope(r"api\.openai\.com", "bearer")])
    assert (Path(c.server.env["DECLAWD_STATE_DIR"]) / "keys" / "vault.key").exists()
    for node in c.nodes:
        assert not (node.state_dir / "keys" / "vault.key").exists(), node.instance
    sbx = Sandbox.create(
        template="python",
        timeout=300,
        vault_refs={"OPENAI_API_KEY": f"vault://default/prod/{name}"},
        **c.sdk(),
    )
    try:
        node = c.node_of(sbx.sandbox_id)
        argv = _gateway_argv(node)
        assert "--vault-socket" in argv and "--vault-key" not in argv, argv
        sock = vault_socket_path(node.settings)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600

        env = sbx.commands.run("printenv OPENAI_API_KEY", timeout=30).stdout.strip()
        assert env == PLACEHOLDER
        t0 = time.time()
        m = "m" + secrets.token_hex(6)
        _send(sbx, m)
        assert _upstream_auth(node, m, t0) == f"Bearer {value}"

        vault.rotate_secret(name, rotated)
        _changes_within_two_requests(sbx, node, t0, before=value, after=rotated)

        # The cost of a lookup through the node's socket, as the gateway makes it.
        source = NodeSecretSource(sock)
        try:
            secret_id = next(s.secret_id for s in vault.list_secrets() if s.name == name)
            times = []
            for _ in range(200):
                start = time.perf_counter()
                assert source.value(secret_id) == rotated
                times.append(time.perf_counter() - start)
        finally:
            source.close()
        times.sort()
        print(
            f"\nvault lookup via {node.instance}'s socket: median"
            f" {statistics.median(times) * 1e3:.2f} ms, p95 {times[189] * 1e3:.2f} ms,"
            f" max {times[-1] * 1e3:.2f} ms (200 lookups)"
        )

        vault.delete_secret(name)
        _changes_within_two_requests(sbx, node, t0, before=rotated, after=PLACEHOLDER)
    finally:
        sbx.kill()
    for n in c.nodes:
        assert not (n.state_dir / "keys" / "vault.key").exists(), n.instance
