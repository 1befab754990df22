"""A node's gateway daemon audits into the store's database (found by test_cluster.py).

On PostgreSQL the daemon gets the store's URL in its environment (not on its command
line, which `ps` shows) and `declawd gateway serve` writes audit events there; on SQLite
it keeps writing the state dir's file. A cluster node's daemon writes the agent's spool
(cluster/auditspool.py) and gets no store URL.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from declawd.cluster.auditspool import audit_spool_path
from declawd.cluster.secrets import vault_socket_path
from declawd.config import Settings
from declawd.node.gatewayd import STORE_URL_ENV, GatewayDaemon
from declawd.upstream import choose_upstream
from tests.unit.gateway_cli import gateway_argv, parsed_config

URL = "postgresql://declawd:secret@/declawd?host=/run/postgresql"


def test_store_url_goes_to_the_daemon_by_environment_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(state_dir=tmp_path, database_url=URL)
    daemon = GatewayDaemon(settings, choose_upstream(settings))
    assert daemon._env()[STORE_URL_ENV] == URL
    assert not [a for a in gateway_argv(settings) if "secret" in a]
    monkeypatch.setenv(STORE_URL_ENV, URL)
    assert parsed_config(gateway_argv(settings), monkeypatch).audit_target == URL


def test_sqlite_store_keeps_the_state_dir_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STORE_URL_ENV, URL)  # a stray one in the node's own environment
    settings = Settings(state_dir=tmp_path)
    assert STORE_URL_ENV not in GatewayDaemon(settings, choose_upstream(settings))._env()
    monkeypatch.delenv(STORE_URL_ENV)
    config = parsed_config(gateway_argv(settings), monkeypatch)
    assert config.audit_target == tmp_path / "declawd.db"


def test_cluster_node_daemon_audits_to_the_agent_spool_not_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its netns may not reach the store: no URL at all, the spool the agent ships instead.
    settings = Settings(state_dir=tmp_path, database_url=URL, node_id="node-1")
    assert STORE_URL_ENV not in GatewayDaemon(settings, choose_upstream(settings))._env()
    monkeypatch.setenv(STORE_URL_ENV, URL)  # even a stray one loses to the spool
    config = parsed_config(gateway_argv(settings), monkeypatch)
    assert config.audit_target == audit_spool_path(settings)
    assert config.vault_socket == vault_socket_path(settings)
