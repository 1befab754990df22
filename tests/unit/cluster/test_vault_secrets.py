"""Vault values for a node's gateway: the control plane's route over real mTLS, the agent's
broker and unix socket, and the gateway's `NodeSecretSource`.

The route answers only a secret bound to a live sandbox on the calling node, one 404 for
every other case; `unchanged` without the value for a current version. The broker sees a
rotation on the next lookup and forgets a deleted secret. The source asks the socket off
the loop, and on the loop answers what it holds while it re-checks in the background.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from declawd.cluster import ca as cca
from declawd.cluster.control import control_app
from declawd.cluster.secrets import SecretBroker, serve_secrets
from declawd.cluster.tls import tls_server
from declawd.config import Settings
from declawd.inspect.model import VaultBinding
from declawd.store import SandboxRecord, SandboxState, Store
from declawd.vault import VaultService, attach, master_key_path
from declawd.vault.nodesource import NodeSecretSource
from declawd.vault.service import NewSecret

VALUE = "sk-node-0123456789abcdef"
ROTATED = "sk-node-rotated-fedcba9876"
SCOPE = {"domain_regex": r"api\.openai\.com", "injection_type": "bearer"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class World:
    url: str
    store: Store
    svc: VaultService
    team: str
    node_a: cca.Identity
    node_b: cca.Identity
    secrets: dict[str, str]  # name -> secret id


def _sandbox(store: Store, sandbox_id: str, team: str, node_id: str, state: SandboxState) -> None:
    store.insert_sandbox(
        SandboxRecord(
            sandbox_id=sandbox_id,
            team_id=team,
            state=state,
            template_id="tpl-base",
            template_alias="base",
            runtime="runc",
            created_at=1.0,
            timeout=300,
            node_id=node_id,
        )
    )


def _bind(store: Store, sandbox_id: str, secret_id: str) -> None:
    attach(store, sandbox_id, [VaultBinding("OPENAI_API_KEY", secret_id, "vault://x", ())])


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    ca = cca.init_ca(tmp_path / "ca")
    settings = Settings(state_dir=tmp_path / "cp")
    store = Store(tmp_path / "declawd.db")
    svc = VaultService(store, master_key_path(settings.keys_dir))
    team = store.create_team("default")
    svc.ensure_environment(team, "prod")
    ids = {
        name: svc.create_secret(team, NewSecret("prod", VALUE, name=name, scopes=[SCOPE])).secret_id
        for name in ("mine", "theirs", "killed", "unbound", "released")
    }
    _sandbox(store, "sbx-a", team, "node-a", SandboxState.RUNNING)
    _sandbox(store, "sbx-b", team, "node-b", SandboxState.RUNNING)
    _sandbox(store, "sbx-k", team, "node-a", SandboxState.KILLED)  # lost: not yet released
    _sandbox(store, "sbx-r", team, "node-a", SandboxState.RUNNING)
    store.update_sandbox("sbx-r", released=True)
    _bind(store, "sbx-a", ids["mine"])
    _bind(store, "sbx-b", ids["theirs"])
    _bind(store, "sbx-k", ids["killed"])
    _bind(store, "sbx-r", ids["released"])
    hour = datetime.timedelta(hours=1)
    server_ident = cca.issue_to_files(ca, tmp_path / "ca", "server", "cp", ["127.0.0.1"], hour)
    node_a = cca.issue_to_files(ca, tmp_path / "ca", "node-a", "node-a", [], hour)
    node_b = cca.issue_to_files(ca, tmp_path / "ca", "node-b", "node-b", [], hour)
    port = _port()
    server = tls_server(
        control_app(settings, store, ca), server_ident, "127.0.0.1", port, require_client=False
    )
    serving = asyncio.get_running_loop().create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        yield World(f"https://127.0.0.1:{port}", store, svc, team, node_a, node_b, ids)
    finally:
        server.should_exit = True
        await serving
        store.close()


async def _ask(
    w: World, ident: cca.Identity, secret_id: str, version: int | None
) -> httpx.Response:
    async with httpx.AsyncClient(verify=ident.client_context()) as c:
        return await c.post(
            f"{w.url}/internal/v1/vault/secret", json={"secret_id": secret_id, "version": version}
        )


async def test_a_node_gets_only_the_secrets_of_its_own_live_sandboxes(world: World) -> None:
    w = world
    resp = await _ask(w, w.node_a, w.secrets["mine"], None)
    assert resp.status_code == 200 and resp.json() == {"version": 1, "value": VALUE}
    refused = [
        await _ask(w, w.node_a, w.secrets["theirs"], None),  # another node's sandbox
        await _ask(w, w.node_a, w.secrets["killed"], None),  # a killed sandbox
        await _ask(w, w.node_a, w.secrets["released"], None),  # a released one
        await _ask(w, w.node_a, w.secrets["unbound"], None),  # bound to nothing
        await _ask(w, w.node_a, "vs-does-not-exist", None),
    ]
    assert {r.status_code for r in refused} == {404}
    assert len({r.text for r in refused}) == 1  # never says which check failed
    assert VALUE not in "".join(r.text for r in refused)
    # The other node gets its own.
    resp = await _ask(w, w.node_b, w.secrets["theirs"], None)
    assert resp.json() == {"version": 1, "value": VALUE}
    # No client certificate: refused before any lookup.
    async with httpx.AsyncClient(
        verify=ssl.create_default_context(cafile=str(w.node_a.ca))
    ) as anon:
        resp = await anon.post(
            f"{w.url}/internal/v1/vault/secret", json={"secret_id": w.secrets["mine"]}
        )
    assert resp.status_code == 403


async def test_a_current_version_is_answered_unchanged_without_the_value(world: World) -> None:
    w = world
    resp = await _ask(w, w.node_a, w.secrets["mine"], 1)
    assert resp.json() == {"version": 1, "unchanged": True}
    resp = await _ask(w, w.node_a, w.secrets["mine"], 7)  # not what the row holds
    assert resp.json() == {"version": 1, "value": VALUE}
    # An unbound secret is a 404 whatever version the caller claims.
    assert (await _ask(w, w.node_a, w.secrets["unbound"], 1)).status_code == 404


async def test_the_broker_sees_a_rotation_then_a_delete_on_the_next_lookup(world: World) -> None:
    w = world
    broker = SecretBroker(w.url, w.node_a)
    try:
        sid = w.secrets["mine"]
        assert await broker.lookup(sid) == (1, VALUE)
        assert await broker.lookup(sid) == (1, VALUE)  # unchanged: from memory
        w.svc.rotate(w.team, sid, ROTATED)
        assert await broker.lookup(sid) == (2, ROTATED)
        assert await broker.lookup(w.secrets["theirs"]) is None
        w.svc.delete(w.team, sid)
        assert await broker.lookup(sid) is None
        assert "cached=0" in repr(broker) and ROTATED not in repr(broker)
        # The sandbox killed: its secret is no longer this node's.
        other = w.secrets["unbound"]
        _bind(w.store, "sbx-a", other)
        assert await broker.lookup(other) == (1, VALUE)
        w.store.update_sandbox("sbx-a", state=SandboxState.KILLED)
        assert await broker.lookup(other) is None
    finally:
        await broker.close()


async def test_an_unreachable_control_plane_answers_no_value(tmp_path: Path) -> None:
    ca = cca.init_ca(tmp_path / "ca")
    ident = cca.issue_to_files(
        ca, tmp_path / "ca", "node-a", "node-a", [], datetime.timedelta(hours=1)
    )
    broker = SecretBroker(f"https://127.0.0.1:{_port()}", ident)
    try:
        assert await broker.lookup("vs-x") is None
    finally:
        await broker.close()


# The socket and the gateway's source ----------------------------------------------------
class FakeLookup:
    """What the broker would answer, settable; counts the lookups."""

    def __init__(self) -> None:
        self.values: dict[str, tuple[int, str]] = {"vs-1": (1, VALUE)}
        self.calls = 0

    async def __call__(self, secret_id: str) -> tuple[int, str] | None:
        self.calls += 1
        return self.values.get(secret_id)


async def test_the_socket_is_private_and_the_source_is_fresh_off_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cluster" / "vault.sock"
    fake = FakeLookup()
    server = await serve_secrets(fake, path)
    source = NodeSecretSource(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

        def worker() -> list[str | None]:  # a proxy worker thread: no running loop
            first = source.value("vs-1")
            fake.values["vs-1"] = (2, ROTATED)
            second = source.value("vs-1")
            del fake.values["vs-1"]
            return [first, second, source.value("vs-1"), source.value("vs-none")]

        assert await asyncio.to_thread(worker) == [VALUE, ROTATED, None, None]
        assert fake.calls == 4
        assert ROTATED not in repr(source)
    finally:
        source.close()
        server.close()
        await server.wait_closed()


async def test_on_the_loop_the_source_answers_from_memory_and_rechecks(tmp_path: Path) -> None:
    path = tmp_path / "vault.sock"
    fake = FakeLookup()
    server = await serve_secrets(fake, path)
    source = NodeSecretSource(path)
    try:
        # Never seen: the first lookup waits for the answer (in a thread here, since this
        # test's loop also runs the fake agent; the gateway's loop would wait in place).
        assert await asyncio.to_thread(source.value, "vs-1") == VALUE
        fake.values["vs-1"] = (2, ROTATED)
        assert source.value("vs-1") == VALUE  # on the loop: no round trip ...
        deadline = time.monotonic() + 5
        while source.value("vs-1") != ROTATED:  # ... and the re-check brings the rotation
            assert time.monotonic() < deadline, "the rotation was never picked up"
            await asyncio.sleep(0.01)
        del fake.values["vs-1"]
        deadline = time.monotonic() + 5
        while source.value("vs-1") is not None:  # a delete drops it the same way
            assert time.monotonic() < deadline, "the delete was never picked up"
            await asyncio.sleep(0.01)
    finally:
        source.close()
        server.close()
        await server.wait_closed()


async def test_no_agent_means_no_value_until_one_listens(tmp_path: Path) -> None:
    path = tmp_path / "vault.sock"
    source = NodeSecretSource(path, timeout=1.0)
    try:
        assert await asyncio.to_thread(source.value, "vs-1") is None  # nothing listens
        server = await serve_secrets(FakeLookup(), path)
        try:
            assert await asyncio.to_thread(source.value, "vs-1") == VALUE
        finally:
            server.close()
            await server.wait_closed()
    finally:
        source.close()


def test_a_cluster_node_starts_its_gateway_with_the_socket_and_no_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from declawd.cluster.secrets import vault_socket_path
    from declawd.egress.gateway import GatewayDaemon
    from tests.unit.gateway_cli import gateway_argv, parsed_config

    node = Settings(state_dir=tmp_path / "n", instance="dcunit", node_id="node-a", lab=True)
    argv = gateway_argv(node)
    assert "--vault-key" not in argv
    config = parsed_config(argv, monkeypatch)
    assert (
        config.vault_socket == vault_socket_path(node) == tmp_path / "n" / "cluster" / "vault.sock"
    )
    daemon = GatewayDaemon(config)
    assert isinstance(daemon.vault, NodeSecretSource)
    daemon.vault.close()
    # The single-process server keeps the key and the SQLite reader.
    single = Settings(state_dir=tmp_path / "s", instance="dcunit", lab=True)
    argv = gateway_argv(single)
    assert "--vault-socket" not in argv
    assert parsed_config(argv, monkeypatch).vault_socket is None
