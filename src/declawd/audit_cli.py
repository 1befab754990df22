"""`declawd audit SANDBOX`: a sandbox's network audit events, one line each.

A thin shell over `declawd.client`: the paged route, or with `--follow` the SSE stream from
the first event on (no gap, no repeat) until Ctrl-C or the sandbox ends. Connection settings come
from DECLAW_DOMAIN / DECLAW_API_KEY (or the flags), exactly as for the official SDK.
"""

from __future__ import annotations

from datetime import datetime

import typer

from declawd.client import AuditEvent, DeclawdClient, DeclawdError

# A group whose callback is the command, so `declawd audit SANDBOX --follow` parses as one
# command line when the lead mounts it with add_typer (options may follow the argument).
app = typer.Typer(
    add_completion=False, help=__doc__, context_settings={"allow_interspersed_args": True}
)


def format_event(e: AuditEvent) -> str:
    """One plain line: time, kind, verdict, destination, reason (pure, for tests)."""
    dest = e.name or ""
    if e.address:
        dest = f"{dest} {e.address}".strip()
    if e.port is not None:
        dest += f":{e.port}"
    if e.protocol:
        dest += f"/{e.protocol}"
    return (
        f"{e.time.isoformat(timespec='milliseconds')}  {e.kind:<10} {e.verdict:<5} "
        f"{dest or '-':<40} {e.reason or ''}".rstrip()
    )


def _epoch(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise typer.BadParameter(
            "must be an ISO-8601 time or a unix timestamp", param_hint="--since"
        ) from exc


def _matches(e: AuditEvent, verdict: str | None, kind: str | None, start: float | None) -> bool:
    return (
        (verdict is None or e.verdict == verdict)
        and (kind is None or e.kind == kind)
        and (start is None or e.time.timestamp() >= start)
    )


@app.callback(invoke_without_command=True)
def audit(
    sandbox: str = typer.Argument(..., help="sandbox id"),
    follow: bool = typer.Option(False, "--follow", "-f", help="stream live events"),
    verdict: str | None = typer.Option(None, help="allow | deny"),
    kind: str | None = typer.Option(None, help="dns | connection"),
    since: str | None = typer.Option(None, help="ISO-8601 time or unix timestamp"),
    domain: str | None = typer.Option(None, help="server (default: $DECLAW_DOMAIN)"),
    api_key: str | None = typer.Option(None, help="API key (default: $DECLAW_API_KEY)"),
) -> None:
    """Print the sandbox's audit events; --follow keeps streaming new ones."""
    with DeclawdClient(api_key=api_key, domain=domain) as client:
        try:
            if follow:
                # from the first event, so nothing between a page query and the stream is lost
                events = client.audit_stream(sandbox, from_start=True)
            else:
                events = client.audit(sandbox, since=since, verdict=verdict, kind=kind, limit=1000)
            start = _epoch(since) if since else None
            for event in events:
                if not _matches(event, verdict, kind, start):
                    continue
                typer.echo(format_event(event))
        except KeyboardInterrupt:
            return
        except DeclawdError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
