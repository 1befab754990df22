"""`declawd template ...`: build the catalog locally, or build/list/delete via the server.

`ensure-builtin` and `gc` need no server (make runs the first before the server exists);
`build`, `list` and `delete` talk to a running server, found as by every command: the flags,
DECLAW_DOMAIN / DECLAW_API_KEY, else this machine's server and its dev key.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from declawd.cli_options import (
    ApiKey,
    AsJson,
    Domain,
    StateDir,
    TemplatesDir,
    resolve_connection,
    settings_from_env,
)
from declawd.client import base_url
from declawd.config import Settings

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Build, list and delete the templates sandboxes start from.",
)
console = Console(stderr=True)


def _settings(state_dir: Path | None, templates_dir: Path | None) -> Settings:
    return settings_from_env(state_dir=state_dir, templates_dir=templates_dir)


@app.command("ensure-builtin")
def ensure_builtin(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Built-ins to build (default: all).", show_default=False),
    ] = None,
    state_dir: StateDir = None,
    templates_dir: TemplatesDir = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Print the full build log.")
    ] = False,
) -> None:
    """Build the built-in templates on this machine (no server needed; cached layers are reused)."""
    from declawd.templates.catalog import catalog_names
    from declawd.templates.local import build_builtin_layers

    wanted = names or list(catalog_names())
    unknown = [n for n in wanted if n not in catalog_names()]
    if unknown:
        console.print(
            f"[red]unknown built-in(s): {', '.join(unknown)}; known: {', '.join(catalog_names())}"
        )
        raise typer.Exit(2)
    settings = _settings(state_dir, templates_dir)
    tail: list[str] = []
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("templates", total=None)

        def log(line: str) -> None:
            tail.append(line)
            del tail[:-40]
            if verbose or line.startswith(("step ", "== ", "base image")):
                progress.console.print(line, markup=False, highlight=False)
            else:
                progress.update(task, description=_short(line))

        def on_step(index: int, total: int, label: str, state: str) -> None:
            progress.update(task, total=total, completed=index - (state == "start"))
            if state == "start":
                progress.update(task, description=_short(label))

        try:
            results = asyncio.run(build_builtin_layers(settings, wanted, log, on_step))
        except Exception as exc:
            progress.stop()
            for line in tail[-20:]:
                console.print(line, markup=False, highlight=False)
            console.print(f"[red]build failed: {exc}")
            raise typer.Exit(1) from None
    for r in results:
        res = r.result
        console.print(
            f"[green]{r.name}[/]: {len(res.keys)} layers ({res.cached_steps} cached), "
            f"{res.size_bytes / 1e6:.0f} MB, {res.seconds:.1f}s"
        )


def _short(text: str, width: int = 60) -> str:
    text = text.strip().replace("[", "(")
    return text if len(text) <= width else text[: width - 3] + "..."


# --- commands that talk to a running server ---------------------------------------------


def _client(domain: str | None, api_key: str | None) -> httpx.Client:
    conn = resolve_connection(domain, api_key)
    base = conn.domain if conn.domain.startswith(("http://", "https://")) else base_url(conn.domain)
    return httpx.Client(base_url=base, headers={"X-API-Key": conn.api_key}, timeout=60.0)


def _check(resp: httpx.Response) -> Any:
    if resp.status_code >= 400:
        try:
            message = resp.json().get("message", resp.text)
        except ValueError:
            message = resp.text
        console.print(f"[red]{resp.status_code}: {message}", highlight=False)
        raise typer.Exit(1)
    return resp.json() if resp.content else None


def _tar_context(directory: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(directory.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    return buf.getvalue()


def new_log_lines(previous: list[str], current: list[str]) -> list[str]:
    """Lines of `current` not yet shown, given the `previous` snapshot (handles trimming)."""
    from declawd.templates.buildlog import TRUNCATED_LINE

    if not current or current[0] != TRUNCATED_LINE:
        return current[len(previous) :]
    if previous and previous[-1] in current:
        idx = len(current) - 1 - current[::-1].index(previous[-1])
        return current[idx + 1 :]
    return current[1:]


@app.command("build")
def build(
    file: Annotated[
        Path,
        typer.Argument(help="Extended spec (JSON), see docs/templates.md.", show_default=False),
    ],
    alias: Annotated[str, typer.Option("--alias", help="Alias of the new template.")],
    context: Annotated[
        Path | None,
        typer.Option("--context", help="Build context directory for copies.", show_default=False),
    ] = None,
    poll: Annotated[float, typer.Option("--poll", help="Seconds between status polls.")] = 1.0,
    domain: Domain = None,
    api_key: ApiKey = None,
) -> None:
    """Build a template on the server from a spec file and stream its log."""
    spec = json.loads(file.read_text())
    if not isinstance(spec, dict):
        console.print("[red]spec: must be a JSON object")
        raise typer.Exit(2)
    ctx_dir = context or (file.parent / spec.pop("context") if "context" in spec else None)
    with _client(domain, api_key) as client:
        if spec.get("copies") or "COPY" in str(spec.get("dockerfile", "")).upper():
            if ctx_dir is None or not ctx_dir.is_dir():
                console.print("[red]copies need a build context: pass --context DIR")
                raise typer.Exit(2)
            body = _tar_context(ctx_dir)
            spec["context_id"] = _check(client.put("/templates/contexts", content=body))[
                "context_id"
            ]
            console.print(f"uploaded context {ctx_dir} ({len(body) / 1e6:.1f} MB)")
        info = _check(client.post("/templates/build", json={"template": spec, "alias": alias}))
        console.print(f"build {info['build_id']} of template {info['template_id']}")
        shown: list[str] = []
        with console.status("building...") as status:
            while True:
                st = _check(client.get(f"/templates/builds/{info['build_id']}"))
                logs = list(st.get("logs") or [])
                for line in new_log_lines(shown, logs):
                    console.print(line, markup=False, highlight=False)
                    if line.startswith("step "):
                        status.update(_short(line))
                shown = logs
                if st["status"] != "building":
                    break
                time.sleep(poll)
    if st["status"] != "completed":
        console.print(f"[red]build {info['build_id']} {st['status']}")
        raise typer.Exit(1)
    console.print(f"[green]template {info['template_id']} ({alias}) ready")


@app.command("list")
def list_templates(as_json: AsJson = False, domain: Domain = None, api_key: ApiKey = None) -> None:
    """List the templates your API key can use, with their size and build time."""
    with _client(domain, api_key) as client:
        body = _check(client.get("/templates"))
    if as_json:
        typer.echo(json.dumps(body["templates"], indent=2))
        return
    table = Table("id", "alias", "state", "size", "build", "created")
    for t in body["templates"]:
        table.add_row(
            t["template_id"],
            t.get("alias") or "",
            t["state"],
            f"{(t.get('size_bytes') or 0) / 1e6:.0f} MB",
            f"{t['build_seconds']:.0f}s" if t.get("build_seconds") is not None else "",
            t.get("created_at") or "",
        )
    Console().print(table)
    disk = body.get("disk") or {}
    if disk:
        free = (disk.get("filesystem") or {}).get("free_bytes", 0)
        Console().print(
            f"layer cache {disk.get('templates_path')}: {disk.get('layers', 0)} layers, "
            f"{disk.get('layers_bytes', 0) / 1e6:.0f} MB; {free / 1e9:.1f} GB free"
        )


@app.command("delete")
def delete(
    template: Annotated[str, typer.Argument(help="Template id or alias.", show_default=False)],
    domain: Domain = None,
    api_key: ApiKey = None,
) -> None:
    """Delete a template (refused while sandboxes use it)."""
    with _client(domain, api_key) as client:
        _check(client.delete(f"/templates/{template}"))
    console.print(f"deleted {template}")


@app.command("gc")
def gc(
    state_dir: StateDir = None,
    templates_dir: TemplatesDir = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would go; remove nothing.")
    ] = False,
    local_only: Annotated[
        bool,
        typer.Option(
            "--local-only", help="Clean this host's layer cache only, not the blob store."
        ),
    ] = False,
) -> None:
    """Remove cached layers that no template uses (run on the server's machine); with a
    shared blob store (DECLAWD_BLOB_DIR, not on a node), its unused layers and contexts too."""
    from declawd.store import open_store
    from declawd.templates.service import TemplateService

    settings = _settings(state_dir, templates_dir)
    with open_store(settings) as store:
        # an hour of grace: a server's build in progress has layers no record names yet
        out = TemplateService(settings, store).gc(
            min_age_s=3600, dry_run=dry_run, shared=False if local_only else None
        )
    verb, freed = ("would remove", "would free") if dry_run else ("removed", "freed")
    console.print(
        f"{verb} {out['removed_layers']} layers, {freed} {out['freed_bytes'] / 1e6:.0f} MB"
    )
    if out["shared"]:
        console.print(
            f"blob store: {verb} {out['removed_published']} layers and "
            f"{out['removed_contexts']} build contexts, {freed} "
            f"{(out['freed_published_bytes'] + out['freed_context_bytes']) / 1e6:.0f} MB"
        )
