"""`declawd server` and `declawd down`: run the API server and the node on this machine."""

from __future__ import annotations

import logging
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def server(
        host: str = typer.Option(None, help="listen address (default 127.0.0.1)"),
        port: int = typer.Option(None, help="listen port (default 8080)"),
        state_dir: Path = typer.Option(None, help="state directory (default /var/lib/declawd)"),
        templates_dir: Path = typer.Option(
            None, help="template layers (default <state-dir>/templates)"
        ),
        instance: str = typer.Option(None, help="name prefix for namespaces and cgroups"),
        runtime: str = typer.Option(None, help="default runtime: runc or runsc"),
        lab: bool = typer.Option(None, "--lab/--no-lab", help="use the lab as the only upstream"),
        log_level: str = typer.Option("info", help="debug, info, warning"),
    ) -> None:
        """Run the API server the Declaw SDK talks to, and the sandboxes it starts here."""
        import uvicorn

        from declawd.api.app import create_app
        from declawd.config import Settings

        logging.basicConfig(
            level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        settings = Settings.from_env(
            host=host,
            port=port,
            state_dir=state_dir,
            templates_dir=templates_dir,
            instance=instance,
            runtime=runtime,
            lab=lab,
        )
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=log_level.lower(),
            access_log=log_level.lower() == "debug",
            timeout_graceful_shutdown=5,
        )

    @app.command()
    def down(
        state_dir: Path = typer.Option(None, help="state directory (default /var/lib/declawd)"),
        instance: str = typer.Option(None, help="name prefix for namespaces and cgroups"),
    ) -> None:
        """Kill every sandbox of this instance and remove its gateway (stop the server first)."""
        import asyncio

        from declawd.config import Settings
        from declawd.node.node import UPSTREAM_FILE, Node
        from declawd.store import Store
        from declawd.volumes.host import unprotect

        settings = Settings.from_env(state_dir=state_dir, instance=instance)
        # Undo the upstream the gateway was made with, whatever this shell's settings say.
        recorded = settings.gateway_dir / UPSTREAM_FILE
        if recorded.exists():
            settings.lab = recorded.read_text().strip() == "lab"

        async def run() -> int:
            node = Node.on_this_machine(settings, Store(settings.db_path))
            killed = await node.destroy_all()
            # The volumes directory's own guard mount (volumes/host.py) goes last.
            unprotect(settings.volumes_dir)
            return killed

        typer.echo(f"killed {asyncio.run(run())} sandboxes; gateway removed")
