"""Test helper: the GatewayConfig that `declawd gateway serve` builds from the node's argv."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from declawd.config import Settings
from declawd.egress import gateway
from declawd.node.gatewayd import GatewayDaemon
from declawd.upstream import choose_upstream


def gateway_argv(settings: Settings) -> list[str]:
    """The command line the node starts the gateway daemon with."""
    return GatewayDaemon(settings, choose_upstream(settings))._command_line()


def parsed_config(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> gateway.GatewayConfig:
    """Run the real `declawd gateway serve` parser on the node's argv; its config."""
    configs: list[gateway.GatewayConfig] = []

    class Captured:
        def __init__(self, config: gateway.GatewayConfig) -> None:
            configs.append(config)

        async def run(self) -> None:
            return None

    monkeypatch.setattr(gateway, "GatewayDaemon", Captured)
    from declawd.cli import app

    result = CliRunner().invoke(app, argv[argv.index("gateway") :])
    assert result.exit_code == 0, result.output
    assert len(configs) == 1
    return configs[0]
