"""`declawd keys`: create, list and revoke API keys in the instance's database.

Works against the state directory's SQLite file (or DECLAWD_DATABASE_URL) directly (no server needed) and is safe while the
server runs: a revocation is seen by the server's very next authentication.
The plaintext of a key is printed once, at creation, and never stored.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from declawd.cli_options import AsJson, StateDir, settings_from_env
from declawd.store.errors import AmbiguousKey, Duplicate
from declawd.store.store import Store, open_store

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Create, list and revoke API keys (on this machine; no server needed).",
)


def _open(state_dir: Path | None) -> Store:
    # DECLAWD_DATABASE_URL, when set, names the server's PostgreSQL database.
    return open_store(settings_from_env(state_dir=state_dir))


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@app.command()
def create(
    team: Annotated[str, typer.Option("--team", help="Team name; created if new.")],
    name: Annotated[str, typer.Option("--name", help="Label for the key.")] = "",
    state_dir: StateDir = None,
) -> None:
    """Create a key for TEAM and print it (shown only this once)."""
    with _open(state_dir) as store:
        found = store.get_team_by_name(team)
        if found is not None:
            team_id = found["team_id"]
        else:
            try:
                team_id = store.create_team(team)
            except Duplicate:  # another process created it just now
                again = store.get_team_by_name(team)
                assert again is not None
                team_id = again["team_id"]
        key_id, plaintext = store.create_api_key(team_id, name=name)
    typer.echo(f"created {key_id} for team {team} ({team_id}); store this key now:", err=True)
    typer.echo(plaintext)


@app.command("list")
def list_keys(
    team: Annotated[
        str | None, typer.Option("--team", help="Only this team.", show_default=False)
    ] = None,
    as_json: AsJson = False,
    state_dir: StateDir = None,
) -> None:
    """List keys (ids and prefixes only; key material is never shown again)."""
    with _open(state_dir) as store:
        team_id = None
        if team is not None:
            found = store.get_team_by_name(team)
            if found is None:
                typer.echo(f"no team named {team!r}", err=True)
                raise typer.Exit(1)
            team_id = found["team_id"]
        keys = store.list_api_keys(team_id)
    if as_json:
        typer.echo(json.dumps([dict(k) for k in keys], indent=2, default=str))
        return
    header = f"{'KEY ID':<17} {'PREFIX':<13} {'TEAM':<16} {'NAME':<16} {'CREATED':<21} REVOKED"
    typer.echo(header)
    for k in keys:
        typer.echo(
            f"{k['key_id']:<17} {k['prefix']:<13} {k['team_name']:<16} {k['name']:<16} "
            f"{_when(k['created_at']):<21} {_when(k['revoked_at'])}"
        )


@app.command()
def revoke(
    key: Annotated[
        str,
        typer.Argument(
            metavar="KEY_ID_OR_PREFIX", help="Key id or listed prefix.", show_default=False
        ),
    ],
    state_dir: StateDir = None,
) -> None:
    """Revoke a key by its id or its listed prefix; effective immediately."""
    with _open(state_dir) as store:
        try:
            revoked = store.revoke_api_key(key)
        except AmbiguousKey as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(1) from exc
    if not revoked:
        typer.echo(f"no active key matches {key!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key}")
