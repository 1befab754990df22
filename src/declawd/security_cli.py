"""`declawd sandbox security get|set SANDBOX [FILE|-]`: a running sandbox's SecurityPolicy.

A thin shell over `declawd.client`: `get` prints the policy as the SDK's
`SecurityPolicy.to_dict()` JSON; `set` sends such a JSON object (a file, or stdin) and prints
the policy now in force. The server is found as by every command (`declawd.cli_options`);
the group is mounted under `declawd sandbox` by `declawd.sandbox_cli`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from declawd.cli_options import ApiKey, Domain, resolve_connection
from declawd.client import DeclawdClient, DeclawdError

security = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Read or change a sandbox's security policy (transformations, audit, network) live.",
)

SandboxId = Annotated[str, typer.Argument(help="Sandbox id (sbx-...).", show_default=False)]


def read_policy(text: str, source: str) -> dict[str, Any]:
    """The JSON object of a policy file (pure); BadParameter says what is wrong with it."""
    try:
        policy = json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{source}: not JSON ({exc})", param_hint="FILE") from exc
    if not isinstance(policy, dict):
        raise typer.BadParameter(f"{source}: must be a JSON object", param_hint="FILE")
    return policy


def _print(policy: dict[str, Any]) -> None:
    typer.echo(json.dumps(policy, indent=2))


def _client(domain: str | None, api_key: str | None) -> DeclawdClient:
    conn = resolve_connection(domain, api_key)
    return DeclawdClient(api_key=conn.api_key or None, domain=conn.domain)


@security.command("get")
def get(
    sandbox: SandboxId,
    domain: Domain = None,
    api_key: ApiKey = None,
) -> None:
    """Print the sandbox's security policy as JSON, defaults filled in."""
    with _client(domain, api_key) as client:
        try:
            _print(client.get_security(sandbox))
        except DeclawdError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc


@security.command("set")
def set_(
    sandbox: SandboxId,
    file: Annotated[
        str,
        typer.Argument(
            help="JSON file of the policy, as SecurityPolicy.to_dict() writes it; - reads stdin."
        ),
    ] = "-",
    domain: Domain = None,
    api_key: ApiKey = None,
) -> None:
    """Replace the sections the JSON carries, live, and print the policy now in force.

    Sections left out keep their value; without "network" the egress policy stays as it is.
    """
    source = "stdin" if file == "-" else file
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
    except OSError as exc:
        raise typer.BadParameter(f"{source}: {exc.strerror}", param_hint="FILE") from exc
    policy = read_policy(text, source)
    with _client(domain, api_key) as client:
        try:
            _print(client.set_security(sandbox, policy))
        except DeclawdError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
