"""`declawd template ...`: build the catalog locally, or build/list/delete via the server.

`ensure-builtin` needs no server (make runs it before the server exists); the others talk
to a running server over HTTP with DECLAW_DOMAIN / DECLAW_API_KEY, like the SDK does.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

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

from declawd.config import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
console = Console(stderr=True)


def _settings(state_dir: Path | None, templates_dir: Path | None) -> Settings:
    return Settings.from_env(state_dir=state_dir, templates_dir=templates_dir)


@app.command("ensure-builtin")
def ensure_builtin(
    names: Annotated[
        list[str] | None, typer.Argument(help="built-ins to build (default: all)")
    ] = None,
    state_dir: Annotated[Path | None, typer.Option(help="state directory")] = None,
    templates_dir: Annotated[Path | None, typer.Option(help="templates directory")] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="print the full build log")
    ] = False,
) -> None:
    """Build the built-in templates' layers into the templates dir (cached layers are reused)."""
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
