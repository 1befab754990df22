"""`declawd audit SANDBOX`: a sandbox's audit events (DNS, connections, inspected requests), one
line each.

A thin shell over `declawd.client`: the paged route, or with `--follow` the SSE stream from
the first event on (no gap, no repeat) until Ctrl-C or the sandbox ends. The server is found
as by every command: the flags, DECLAW_DOMAIN / DECLAW_API_KEY, else this machine's server.
`register` mounts it as a single command, so its usage line is `declawd audit SANDBOX`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from declawd.cli_options import ApiKey, Domain, resolve_connection
from declawd.client import AuditEvent, DeclawdClient, DeclawdError


def _http_line(e: AuditEvent) -> str:
    """An inspected request: method, URL (secrets already masked), status, what was done."""
    counters = [
        f"{label}={n}"
        for label, n in (
            ("transformations", e.transformations_applied),
            ("vault", e.vault_injections),
            ("pii", e.pii_redactions),
            ("injection_blocks", e.injection_blocks),
        )
        if n
    ]
    status = str(e.status_code) if e.status_code else "-"
    return " ".join([f"{e.method or '-'} {e.url or e.name or '-'}", status, *counters])


def format_event(e: AuditEvent) -> str:
    """One plain line: time, kind, verdict, destination, reason (pure, for tests)."""
    if e.kind == "http":
        return (
            f"{e.time.isoformat(timespec='milliseconds')}  {e.kind:<10} {e.verdict:<5} "
            f"{_http_line(e)}  {e.reason or ''}".rstrip()
        )
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


def audit(
    sandbox: Annotated[str, typer.Argument(help="Sandbox id (sbx-...).", show_default=False)],
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="From the first event on, keep printing new ones."),
    ] = False,
    verdict: Annotated[
        str | None, typer.Option("--verdict", help="Only allow or only deny.", show_default=False)
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind",
            help="Only dns, only connection or only http (inspected request) events.",
            show_default=False,
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="Only from this ISO-8601 time or unix timestamp.", show_default=False
        ),
    ] = None,
    domain: Domain = None,
    api_key: ApiKey = None,
) -> None:
    """Print a sandbox's audit events (DNS answers, connections, inspected requests), one per line.

    Each line shows the time, kind, verdict (allow or deny), destination and reason; an
    inspected request shows its method, URL, status and what was changed in it.
    With --follow the command keeps streaming new events until Ctrl-C or the sandbox ends.
    """
    conn = resolve_connection(domain, api_key)
    with DeclawdClient(api_key=conn.api_key or None, domain=conn.domain) as client:
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


def register(app: typer.Typer) -> None:
    """Mount `audit` on the `declawd` command as one command: `declawd audit SANDBOX`."""
    app.command("audit")(audit)
