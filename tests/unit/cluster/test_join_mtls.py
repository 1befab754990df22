"""Join and heartbeat over real TLS: the CA pin, the single-use token, and that every
route but `ca`/`join` needs a client certificate of the cluster CA."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import httpx
import pytest

from declawd.cluster import agent
from declawd.cluster import ca as cca
from declawd.cluster.control import control_app
from declawd.cluster.tls import tls_server
from declawd.config import Settings
from declawd.errors import Unreachable
from declawd.store import Store


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_join_register_heartbeat_over_mtls(tmp_path: Path) -> None:
    ca = cca.init_ca(tmp_path / "ca")
    store = Store(tmp_path / "declawd.db")
    settings = Settings(state_dir=tmp_path / "node", node_id="node-a", node_name="node-a")
    server_ident = cca.issue_to_files(
        ca, tmp_path / "ca", "server", "cp", ["127.0.0.1"], cca.datetime.timedelta(hours=1)
    )
    port = _port()
    server = tls_server(
        control_app(settings, store, ca), server_ident, "127.0.0.1", port, require_client=False
    )
    serving = asyncio.get_running_loop().create_task(server.serve())
    url = f"https://127.0.0.1:{port}"
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        token = agent.JoinToken(store.create_join_token(60), ca.pin)
        with pytest.raises(Unreachable, match="not the join token's"):
            await agent.join(settings, url, agent.JoinToken(token.secret, "0" * 64))
        ident = await agent.join(settings, url, token)
        assert cca.common_name(cca.x509.load_pem_x509_certificate(ident.cert.read_bytes())) == (
            "node-a"
        )
        with pytest.raises(Unreachable, match="already used"):
            await agent.join(settings, url, token)
        # No client certificate: refused on every route but ca and join.
        async with httpx.AsyncClient(
            verify=ssl.create_default_context(cafile=str(ident.ca))
        ) as anon:
            resp = await anon.post(f"{url}/internal/v1/heartbeat", json={})
            assert resp.status_code == 403
        node = agent.NodeAgent(settings, url, None)
        await node.register()
        answer = await node._call("/heartbeat", {"capacity": {"sandboxes": 2}})
        assert answer == {"state": "up"}
        assert store.get_node("node-a").capacity == {"sandboxes": 2}  # type: ignore[union-attr]
        await agent.renew(settings, url, ident)
        assert cca.common_name(cca.x509.load_pem_x509_certificate(ident.cert.read_bytes())) == (
            "node-a"
        )
        # A certificate from another CA is not accepted by the TLS layer at all.
        other = cca.new_ca()
        rogue = cca.issue_to_files(
            other, tmp_path, "rogue", "node-a", [], cca.datetime.timedelta(hours=1)
        )
        (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
        async with httpx.AsyncClient(verify=rogue.client_context()) as c:
            with pytest.raises(httpx.HTTPError):
                await c.post(f"{url}/internal/v1/heartbeat", json={})
    finally:
        server.should_exit = True
        await serving
        store.close()
