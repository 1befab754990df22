"""The custom policy's network package, asked about one connection before it is dialled.

Input (docs/governance.md): `input.action.destination` is `host:port` with the host name the
sandbox resolved (or the IP when it used none; IPv6 as `[addr]:port`), next to `host`,
`ip`, `port`, `protocol`, and `input.sandbox.id`. Pure apart from the Rego evaluation.
"""

from __future__ import annotations

from typing import Any

from declawd.guard.custom import CustomPolicy, Verdict

PACKAGE = "declaw.platform.network"


def destination(name: str | None, ip: str, port: int) -> str:
    host = name or ip
    if ":" in host:
        host = f"[{host}]"
    return f"{host.lower()}:{port}"


def network_input(
    *, sandbox_id: str, name: str | None, ip: str, port: int, protocol: str = "tcp"
) -> dict[str, Any]:
    return {
        "action": {
            "type": "network",
            "destination": destination(name, ip, port),
            "host": (name or ip).lower(),
            "ip": ip,
            "port": port,
            "protocol": protocol,
        },
        "sandbox": {"id": sandbox_id},
    }


def check_network(
    policy: CustomPolicy,
    *,
    sandbox_id: str,
    name: str | None,
    ip: str,
    port: int,
    protocol: str = "tcp",
) -> Verdict:
    return policy.deny(
        PACKAGE,
        network_input(sandbox_id=sandbox_id, name=name, ip=ip, port=port, protocol=protocol),
    )
