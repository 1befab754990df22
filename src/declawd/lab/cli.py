"""`declawd lab`: run the simulated internet (`serve`), tear it down (`down`), show the CA
(`ca-path`) and what its hosts received (`requests`).

Thin commands over `declawd.lab.process`; settings come from the same DECLAWD_* env vars as
the server, with the `--instance` and `--state-dir` overrides every command spells the same.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from declawd.cli_options import AsJson, Instance, StateDir, settings_from_env
from declawd.config import Settings

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Run the lab: a simulated internet for tests and demos.",
)


def _settings(instance: str | None, state_dir: Path | None) -> Settings:
    return settings_from_env(instance=instance, state_dir=state_dir)


@app.command()
def serve(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="Lab config JSON (default: the built-in lab).", show_default=False
        ),
    ] = None,
    instance: Instance = None,
    state_dir: StateDir = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the lab netns on exit.")] = False,
) -> None:
    """Run the lab in the foreground (netns <instance>-lab) until Ctrl-C or SIGTERM."""
    from declawd.lab.config import LabConfigError, load_config
    from declawd.lab.process import LabError
    from declawd.lab.process import serve as run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = _settings(instance, state_dir)
    try:
        lab_config = load_config(config if config is not None else settings.lab_config)
    except LabConfigError as exc:
        typer.echo(f"lab config error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        run(settings, lab_config, keep=keep)
    except LabError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None


@app.command()
def down(instance: Instance = None, state_dir: StateDir = None) -> None:
    """Stop this instance's running lab, if any, and delete the lab netns."""
    from declawd.lab.process import lab_down

    lab_down(_settings(instance, state_dir))


@app.command("ca-path")
def ca_path(
    instance: Instance = None,
    state_dir: StateDir = None,
    bundle: Annotated[
        bool, typer.Option("--bundle", help="Print the path of the system + lab CA bundle.")
    ] = False,
) -> None:
    """Print the path of the lab's CA certificate (PEM), creating the CA if needed."""
    from declawd.lab.ca import ca_bundle_path, ca_cert_path, ensure_ca

    settings = _settings(instance, state_dir)
    ensure_ca(settings)
    typer.echo(str(ca_bundle_path(settings) if bundle else ca_cert_path(settings)))


def _epoch(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise typer.BadParameter(
            "must be an ISO-8601 time or a unix timestamp", param_hint="--since"
        ) from None


def format_request(entry: dict) -> str:
    """One plain line: time, host, client, method, target, status, body size (pure)."""
    at = datetime.fromtimestamp(float(entry.get("time", 0))).isoformat(timespec="milliseconds")
    size = entry.get("body_size")
    return (
        f"{at}  {entry.get('host', '-'):<24} {entry.get('client', '-'):<15} "
        f"{entry.get('http_version', '-'):<8} {entry.get('method', '-'):<6} "
        f"{entry.get('target', '-')}  {entry.get('status', '-')}  "
        f"{'-' if size is None else size} B"
    )


@app.command()
def requests(
    host: Annotated[
        str | None,
        typer.Option("--host", help="Only this lab host (its config name).", show_default=False),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="Only from this ISO-8601 time or unix timestamp.", show_default=False
        ),
    ] = None,
    as_json: AsJson = False,
    instance: Instance = None,
    state_dir: StateDir = None,
) -> None:
    """Print the requests lab hosts received (the request log), oldest first."""
    from declawd.lab.config import LabConfigError
    from declawd.lab.requestlog import read_requests

    settings = _settings(instance, state_dir)
    try:
        entries = read_requests(settings, host, _epoch(since) if since else None)
    except LabConfigError as exc:
        raise typer.BadParameter(exc.message, param_hint="--host") from None
    if as_json:
        typer.echo(json.dumps(entries, indent=1))
        return
    for entry in entries:
        typer.echo(format_request(entry))
