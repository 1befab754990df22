"""`declawd sandbox ...`: create, list, inspect, use and kill sandboxes from a terminal.

Every Declaw route goes through the official SDK (`declaw`), exactly as a program would call
it; `security` (our extension) goes through `declawd.client`. A sandbox is addressed by id
without `connect`, so looking at a paused sandbox never resumes it. Invariant: a failed call
prints one `error:` line on stderr and exits non-zero (255 for `exec` and `shell`, whose own
exit status is otherwise the remote command's).
"""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from declaw import PtySize, Sandbox, SandboxQuery, SandboxState
from declaw.api.client import ApiClient, get_shared_client
from declaw.connection_config import ConnectionConfig
from declaw.exceptions import SandboxError

from declawd import security_cli
from declawd.cli_options import (
    DEV_KEY_FILE,
    ApiKey,
    AsJson,
    Connection,
    Domain,
    is_loopback,
    resolve_connection,
    settings_from_env,
)
from declawd.sandbox_shell import attach, exit_status, terminal_size

RUNTIME_KEY = "declaw.runtime"
RUNTIMES = ("runc", "runsc")
LIST_STATES = ("live", "running", "paused", "creating", "killed")
CLIENT_FAILURE = 255  # exec and shell, as ssh: a failed call (or a remote exit 255)

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Create, list, inspect, use and kill sandboxes.",
)
files = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="List, read and copy the files of a sandbox.",
)
app.add_typer(files, name="files")
app.add_typer(security_cli.security, name="security")

SandboxId = Annotated[str, typer.Argument(help="Sandbox id (sbx-...).", show_default=False)]
User = Annotated[str, typer.Option("--user", help="User inside the sandbox.")]


# --- pure helpers -------------------------------------------------------------------------


def parse_pairs(values: Sequence[str], option: str) -> dict[str, str]:
    """K=V strings as a dict (pure); a value may itself contain '='."""
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{value!r} is not KEY=VALUE", param_hint=option)
        pairs[key] = rest
    return pairs


def command_line(words: Sequence[str]) -> str:
    """One word is a shell command line as typed; several are a command and its arguments,
    quoted so the shell in the sandbox sees exactly these words (pure)."""
    if not words:
        raise typer.BadParameter("give the command to run", param_hint="COMMAND")
    return words[0] if len(words) == 1 else shlex.join(words)


def age(started_at: str | None, now: datetime) -> str:
    """How long ago an ISO time was, as 42s, 5m, 3h or 2d (pure)."""
    if not started_at:
        return "-"
    try:
        then = datetime.fromisoformat(started_at.replace("Z", "+00:00"))
    except ValueError:
        return "-"
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def sandbox_rows(sandboxes: Sequence[dict[str, Any]], now: datetime) -> list[str]:
    """The `list` table: a header and one line per sandbox (pure)."""
    lines = [
        f"{'SANDBOX ID':<18} {'STATE':<9} {'TEMPLATE':<16} {'RUNTIME':<8} {'AGE':>5} "
        f"{'CPUS':>4} {'MEMORY':>8}"
    ]
    for s in sandboxes:
        template = s.get("alias") or s.get("name") or s.get("template_id") or "-"
        memory = f"{s['memory_mb']} MiB" if s.get("memory_mb") is not None else "-"
        lines.append(
            f"{s.get('sandbox_id', '-'):<18} {s.get('state', '-'):<9} {template:<16} "
            f"{s.get('runtime') or '-':<8} {age(s.get('started_at'), now):>5} "
            f"{s.get('cpu_count') if s.get('cpu_count') is not None else '-':>4} {memory:>8}"
        )
    return lines


def info_lines(view: dict[str, Any], now: datetime) -> list[str]:
    """`info` as `key: value` lines (pure)."""
    network = view.get("network") or {}
    lines = [
        f"sandbox:  {view.get('sandbox_id')}",
        f"state:    {view.get('state')}",
        f"template: {view.get('alias') or view.get('name') or '-'} ({view.get('template_id')})",
        f"runtime:  {view.get('runtime') or '-'}",
        f"started:  {view.get('started_at') or '-'} ({age(view.get('started_at'), now)} ago)",
        f"ends:     {view.get('end_at') or '-'}",
        f"cpus:     {view.get('cpu_count', '-')}",
        f"memory:   {view.get('memory_mb', '-')} MiB",
    ]
    for key in ("allow_out", "deny_out"):
        if network.get(key):
            lines.append(f"{key + ':':<9} {', '.join(network[key])}")
    for key, value in sorted((view.get("metadata") or {}).items()):
        lines.append(f"metadata: {key}={value}")
    return lines


def pool_rows(summary: dict[str, Any]) -> list[str]:
    """`pools` lines: one per pool, then what they use against the budget (pure)."""
    lines = [f"{'TEMPLATE':<20} {'RUNTIME':<7} {'READY':>5} {'TARGET':>6} {'FILLING':>7}"]
    for p in summary.get("pools") or []:
        lines.append(
            f"{p['template']:<20} {p['runtime']:<7} {p['ready']:>5} {p['target']:>6}"
            f" {p['filling']:>7}" + (f"  ({p['failures']} failed)" if p.get("failures") else "")
        )
    if len(lines) == 1:
        lines = ["no warm pools (DECLAWD_WARM_POOL is off, or no template it names is ready)"]
    mib = 1 << 20
    lines.append(
        f"{summary.get('parked', 0)} pooled sandboxes use "
        f"{summary.get('memory_bytes', 0) / mib:.0f} MiB of a "
        f"{summary.get('budget_bytes', 0) / mib:.0f} MiB budget"
    )
    return lines


def entry_rows(entries: Sequence[dict[str, Any]]) -> list[str]:
    """`files ls` lines: type, size, path (pure)."""
    return [f"{e['type']:<4} {e.get('size', 0):>12} {e['path']}" for e in entries]


# --- SDK plumbing ---------------------------------------------------------------------------


def _connection(domain: str | None, api_key: str | None) -> Connection:
    conn = resolve_connection(domain, api_key)
    if not conn.api_key:
        hint = ""
        if is_loopback(conn.domain):
            path = settings_from_env().keys_dir / DEV_KEY_FILE
            hint = f", or make the local server's dev key {path} readable"
        raise typer.BadParameter(
            f"no API key for {conn.domain}: pass --api-key or set DECLAW_API_KEY{hint}",
            param_hint="--api-key",
        )
    return conn


def _config(conn: Connection) -> ConnectionConfig:
    return ConnectionConfig(api_key=conn.api_key, domain=conn.domain)


def _api(conn: Connection) -> ApiClient:
    return get_shared_client(_config(conn))


def _sandbox(conn: Connection, sandbox_id: str) -> Sandbox:
    """A handle on the sandbox without a request (`connect` would resume a paused one)."""
    config = _config(conn)
    return Sandbox(
        sandbox_id=sandbox_id, connection_config=config, client=get_shared_client(config)
    )


def _view(conn: Connection, sandbox_id: str) -> dict[str, Any]:
    data = _api(conn).get(f"/sandboxes/{sandbox_id}").json()
    return data if isinstance(data, dict) else {"sandbox_id": sandbox_id}


@contextlib.contextmanager
def _reported(status: int = 1) -> Iterator[None]:
    """SDK and transport errors as one `error:` line and exit `status`."""
    try:
        yield
    except SandboxError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(status) from None
    except httpx.HTTPStatusError as exc:
        typer.echo(f"error: HTTP {exc.response.status_code}: {_message(exc.response)}", err=True)
        raise typer.Exit(status) from None
    except (httpx.HTTPError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(status) from None


def _message(resp: httpx.Response) -> str:
    try:
        resp.read()
        return str(resp.json().get("message") or resp.text)
    except (ValueError, AttributeError, httpx.HTTPError):
        return resp.reason_phrase


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


# --- commands -------------------------------------------------------------------------------


@app.command()
def create(
    template: Annotated[
        str, typer.Option("--template", "-t", help="Template id or alias to start from.")
    ] = "base",
    timeout: Annotated[
        int | None,
        typer.Option(
            "--timeout",
            help="Lifetime in seconds (default: the server's, 300).",
            min=1,
            show_default=False,
        ),
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env", "-e", help="Environment variable KEY=VALUE (repeatable).", show_default=False
        ),
    ] = None,
    metadata: Annotated[
        list[str] | None,
        typer.Option(
            "--metadata",
            "-m",
            help="Metadata KEY=VALUE to tag it with (repeatable).",
            show_default=False,
        ),
    ] = None,
    allow_out: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-out",
            help="Allow egress to this domain, *.suffix, IP or CIDR (repeatable).",
            show_default=False,
        ),
    ] = None,
    deny_out: Annotated[
        list[str] | None,
        typer.Option(
            "--deny-out",
            help="Deny egress to this destination (repeatable; 0.0.0.0/0 denies all else).",
            show_default=False,
        ),
    ] = None,
    runtime: Annotated[
        str | None,
        typer.Option(
            "--runtime",
            help="Isolation: runc or runsc (gVisor); default the server's.",
            show_default=False,
        ),
    ] = None,
    as_json: AsJson = False,
    domain: Domain = None,
    api_key: ApiKey = None,
) -> None:
    """Start a sandbox and print its id (with --json, the whole sandbox)."""
    envs = parse_pairs(env or [], "--env")
    tags = parse_pairs(metadata or [], "--metadata")
    if runtime is not None:
        if runtime not in RUNTIMES:
            raise typer.BadParameter("must be runc or runsc", param_hint="--runtime")
        if tags.get(RUNTIME_KEY, runtime) != runtime:
            raise typer.BadParameter(
                f"--metadata {RUNTIME_KEY}={tags[RUNTIME_KEY]} contradicts it",
                param_hint="--runtime",
            )
        tags[RUNTIME_KEY] = runtime
    network = {k: v for k, v in (("allow_out", allow_out), ("deny_out", deny_out)) if v}
    conn = _connection(domain, api_key)
    with _reported():
        sbx = Sandbox.create(
            template=template,
            timeout=timeout,
            metadata=tags or None,
            envs=envs or None,
            network=network or None,
            api_key=conn.api_key,
            domain=conn.domain,
        )
    if not as_json:
        typer.echo(sbx.sandbox_id)
        return
    with _reported():
        view = _view(conn, sbx.sandbox_id)
    token = getattr(sbx, "traffic_access_token", None)
    if token and "traffic_access_token" not in view:
        view["traffic_access_token"] = token
    _print_json(view)


@app.command("list")
def list_sandboxes(
    state: Annotated[
        list[str] | None,
        typer.Option(
            "--state",
            "-s",
            help="Only this state: live, running, paused, creating or killed (repeatable; "
            "default live).",
            show_default=False,
        ),
    ] = None,
    metadata: Annotated[
        list[str] | None,
        typer.Option(
            "--metadata",
            "-m",
            help="Only sandboxes tagged KEY=VALUE (repeatable).",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", help="Show at most this many sandboxes.", min=1)
    ] = 1000,
    as_json: AsJson = False,
    domain: Domain = None,
    api_key: ApiKey = None,
) -> None:
    """List your team's sandboxes with their state, template, runtime, age, CPUs and memory."""
    states = state or ["live"]
    unknown = [s for s in states if s not in LIST_STATES]
    if unknown:
        raise typer.BadParameter(
            f"unknown state {unknown[0]!r}; one of {', '.join(LIST_STATES)}", param_hint="--state"
        )
    query = SandboxQuery(
        metadata=parse_pairs(metadata or [], "--metadata") or None,
        state=[SandboxState(s) for s in states],
    )
    conn = _connection(domain, api_key)
    found: list[dict[str, Any]] = []
    token: str | None = None
    with _reported():
        while len(found) < limit:
            page = Sandbox.list(
                query=query,
                limit=min(limit - len(found), 1000),
                next_token=token,
                api_key=conn.api_key,
                domain=conn.domain,
            )
            found.extend(page.get("sandboxes") or [])
            token = page.get("next_token")
            if not token:
                break
    found = found[:limit]
    if as_json:
        _print_json(found)
        return
    for line in sandbox_rows(found, datetime.now(UTC)):
        typer.echo(line)


@app.command()
def pools(as_json: AsJson = False, domain: Domain = None, api_key: ApiKey = None) -> None:
    """Show the server's warm pools: per template and runtime, sandboxes ready to be
    claimed by a create, the target, and their memory against the budget."""
    conn = _connection(domain, api_key)
    with _reported():
        summary = _api(conn).get("/pools").json()
    if as_json:
        _print_json(summary)
        return
    for line in pool_rows(summary):
        typer.echo(line)


@app.command()
def info(
    sandbox_id: SandboxId,
    as_json: AsJson = False,
    domain: Domain = None,
    api_key: ApiKey = None,
) -> None:
    """Show one sandbox: state, template, runtime, times, resources, egress and metadata."""
    conn = _connection(domain, api_key)
    with _reported():
        view = _view(conn, sandbox_id)
    if as_json:
        _print_json(view)
        return
    for line in info_lines(view, datetime.now(UTC)):
        typer.echo(line)


@app.command("exec", context_settings={"allow_interspersed_args": False})
def exec_(
    sandbox_id: SandboxId,
    command: Annotated[
        list[str],
        typer.Argument(
            help="A shell command line as one argument, or a command and its arguments.",
            show_default=False,
        ),
    ],
    cwd: Annotated[
        str | None,
        typer.Option("--cwd", help="Working directory (an absolute path).", show_default=False),
    ] = None,
    user: User = "user",
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env", "-e", help="Environment variable KEY=VALUE (repeatable).", show_default=False
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", help="Stop the command after this many seconds (0: never).", min=0
        ),
    ] = 60,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print {stdout, stderr, exit_code} as JSON.")
    ] = False,
    domain: Domain = None,
    api_key: ApiKey = None,
) -> None:
    """Run a command in the sandbox, print its output and exit with its exit code.

    Options go before the sandbox id; everything after it is the command.
    """
    line = command_line(command)
    envs = parse_pairs(env or [], "--env")
    conn = _connection(domain, api_key)
    with _reported(CLIENT_FAILURE):
        result = _sandbox(conn, sandbox_id).commands.run(
            line, envs=envs or None, user=user, cwd=cwd, timeout=timeout
        )
    if as_json:
        _print_json(result.to_dict())
    else:
        sys.stdout.write(result.stdout)
        sys.stdout.flush()
        sys.stderr.write(result.stderr)
        sys.stderr.flush()
    raise typer.Exit(exit_status(result.exit_code))


@app.command()
def shell(
    sandbox_id: SandboxId,
    cwd: Annotated[
        str | None,
        typer.Option(
            "--cwd", help="Start in this directory (an absolute path).", show_default=False
        ),
    ] = None,
    user: User = "user",
    timeout: Annotated[
        float,
        typer.Option("--timeout", help="End the shell after this many seconds (0: never).", min=0),
    ] = 0,
    domain: Domain = None,
    api_key: ApiKey = None,
) -> None:
    """Open an interactive shell in the sandbox; exit with the shell's exit status."""
    conn = _connection(domain, api_key)
    with _reported(CLIENT_FAILURE):
        handle = _sandbox(conn, sandbox_id).pty.create(
            size=terminal_size(sys.stdin.fileno()) if sys.stdin.isatty() else PtySize(),
            user=user,
            cwd=cwd,
            timeout=timeout,
        )
        status = attach(handle)
    raise typer.Exit(status)


@app.command()
def kill(
    sandbox_ids: Annotated[
        list[str], typer.Argument(help="Ids of the sandboxes to kill.", show_default=False)
    ],
    domain: Domain = None,
    api_key: ApiKey = None,
) -> None:
    """Kill sandboxes and wait until each is gone; a snapshot of one can still restore it."""
    conn = _connection(domain, api_key)
    failed = False
    for sid in sandbox_ids:
        try:
            killed = Sandbox.kill_by_id(sid, wait=True, connection_config=_config(conn))
        except SandboxError as exc:
            typer.echo(f"error: {sid}: {exc}", err=True)
            failed = True
            continue
        if killed:
            typer.echo(f"killed {sid}")
        else:
            typer.echo(f"error: {sid}: not killed", err=True)
            failed = True
    if failed:
        raise typer.Exit(1)


# --- files ----------------------------------------------------------------------------------


@files.command("ls")
def files_ls(
    sandbox_id: SandboxId,
    path: Annotated[str, typer.Argument(help="Directory in the sandbox.")] = "/home/user",
    depth: Annotated[
        int, typer.Option("--depth", help="Levels of subdirectories to list.", min=1)
    ] = 1,
    user: User = "user",
    as_json: AsJson = False,
    domain: Domain = None,
    api_key: ApiKey = None,
) -> None:
    """List a directory of the sandbox: type, size and path of each entry."""
    conn = _connection(domain, api_key)
    with _reported():
        entries = [e.to_dict() for e in _sandbox(conn, sandbox_id).files.list(path, depth, user)]
    if as_json:
        _print_json(entries)
        return
    for line in entry_rows(entries):
        typer.echo(line)


@files.command("cat")
def files_cat(
    sandbox_id: SandboxId,
    path: Annotated[str, typer.Argument(help="File in the sandbox.", show_default=False)],
    user: User = "user",
    domain: Domain = None,
    api_key: ApiKey = None,
) -> None:
    """Print a file of the sandbox, byte for byte."""
    conn = _connection(domain, api_key)
    with _reported():
        data = _sandbox(conn, sandbox_id).files.read(path, format="bytes", user=user)
    sys.stdout.buffer.write(bytes(data))
    sys.stdout.buffer.flush()


@files.command("put")
def files_put(
    sandbox_id: SandboxId,
    local: Annotated[
        str, typer.Argument(help="Local file to upload; - reads stdin.", show_default=False)
    ],
    remote: Annotated[
        str, typer.Argument(help="Path to write in the sandbox.", show_default=False)
    ],
    user: User = "user",
    domain: Domain = None,
    api_key: ApiKey = None,
) -> None:
    """Copy a local file into the sandbox (any bytes), replacing what is there."""
    try:
        data = sys.stdin.buffer.read() if local == "-" else Path(local).read_bytes()
    except OSError as exc:
        raise typer.BadParameter(f"{local}: {exc.strerror}", param_hint="LOCAL") from None
    conn = _connection(domain, api_key)
    with _reported():
        written = _sandbox(conn, sandbox_id).files.write(remote, data, user=user)
    typer.echo(f"{written.path} ({len(data)} bytes)")


@files.command("get")
def files_get(
    sandbox_id: SandboxId,
    remote: Annotated[str, typer.Argument(help="File in the sandbox.", show_default=False)],
    local: Annotated[
        str, typer.Argument(help="Local path to write; - writes stdout.", show_default=False)
    ],
    user: User = "user",
    domain: Domain = None,
    api_key: ApiKey = None,
) -> None:
    """Copy a file out of the sandbox (any bytes) to a local path."""
    conn = _connection(domain, api_key)
    with _reported():
        data = bytes(_sandbox(conn, sandbox_id).files.read(remote, format="bytes", user=user))
    if local == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        Path(local).write_bytes(data)
    except OSError as exc:
        raise typer.BadParameter(f"{local}: {exc.strerror}", param_hint="LOCAL") from None
    typer.echo(f"{local} ({len(data)} bytes)")
