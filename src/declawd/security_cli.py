"""`declawd sandbox security get|set SANDBOX [FILE|-]`: a running sandbox's SecurityPolicy.

A thin shell over `declawd.client`: `get` prints the policy as the SDK's
`SecurityPolicy.to_dict()` JSON; `set` sends such a JSON object (a file, or stdin) and prints
the policy now in force. Connection settings come from DECLAW_DOMAIN / DECLAW_API_KEY (or the
flags), exactly as for the official SDK.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from declawd.client import DeclawdClient, DeclawdError

app = typer.Typer(no_args_is_help=True, help="Inspect and change running sandboxes.")
security = typer.Typer(
    no_args_is_help=True,
    help="Read or change a sandbox's security policy (transformations, audit, network) live.",
)
app.add_typer(security, name="security")


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


@security.command("get")
def get(
    sandbox: str = typer.Argument(..., help="sandbox id"),
    domain: str | None = typer.Option(None, help="server (default: $DECLAW_DOMAIN)"),
    api_key: str | None = typer.Option(None, help="API key (default: $DECLAW_API_KEY)"),
) -> None:
    """Print the sandbox's security policy as JSON, defaults filled in."""
    with DeclawdClient(api_key=api_key, domain=domain) as client:
        try:
            _print(client.get_security(sandbox))
        except DeclawdError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc


@security.command("set")
def set_(
    sandbox: str = typer.Argument(..., help="sandbox id"),
    file: str = typer.Argument(
        "-", help="JSON file of the policy, as SecurityPolicy.to_dict() writes it; - reads stdin"
    ),
    domain: str | None = typer.Option(None, help="server (default: $DECLAW_DOMAIN)"),
    api_key: str | None = typer.Option(None, help="API key (default: $DECLAW_API_KEY)"),
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
    with DeclawdClient(api_key=api_key, domain=domain) as client:
        try:
            _print(client.set_security(sandbox, policy))
        except DeclawdError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
