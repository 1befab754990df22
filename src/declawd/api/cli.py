"""`declawd server` and `declawd down`: run the API server and the node on this machine."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from declawd.cli_options import Instance, StateDir, TemplatesDir


def register(app: typer.Typer) -> None:
    @app.command()
    def server(
        host: Annotated[
            str | None,
            typer.Option("--host", help="Listen address (default: 127.0.0.1).", show_default=False),
        ] = None,
        port: Annotated[
            int | None,
            typer.Option("--port", help="Listen port (default: 8080).", show_default=False),
        ] = None,
        state_dir: StateDir = None,
        templates_dir: TemplatesDir = None,
        instance: Instance = None,
        runtime: Annotated[
            str | None,
            typer.Option("--runtime", help="Default runtime: runc or runsc.", show_default=False),
        ] = None,
        lab: Annotated[
            bool | None,
            typer.Option(
                "--lab/--no-lab", help="Use the lab as the only upstream.", show_default=False
            ),
        ] = None,
        log_level: Annotated[
            str, typer.Option("--log-level", help="Log level: debug, info or warning.")
        ] = "info",
        cluster: Annotated[
            bool | None,
            typer.Option(
                "--cluster/--no-cluster",
                help="Be a control plane: sandboxes run on node agents (docs/cluster.md).",
                show_default=False,
            ),
        ] = None,
    ) -> None:
        """Run the API server the Declaw SDK talks to, and the sandboxes it starts here."""
        import uvicorn

        from declawd.api.app import create_app
        from declawd.cli_options import settings_from_env
        from declawd.host.limits import raise_host_limits

        logging.basicConfig(
            level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        settings = settings_from_env(
            host=host,
            port=port,
            state_dir=state_dir,
            templates_dir=templates_dir,
            instance=instance,
            runtime=runtime,
            lab=lab,
            cluster=cluster,
        )
        # Before the app (and with it the gateway daemon, which inherits the rlimit) starts.
        raise_host_limits(settings.pool)
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=log_level.lower(),
            access_log=log_level.lower() == "debug",
            timeout_graceful_shutdown=5,
        )

    @app.command()
    def down(state_dir: StateDir = None, instance: Instance = None) -> None:
        """Kill every sandbox of this instance and remove its gateway (stop the server first)."""
        import asyncio

        from declawd.cli_options import settings_from_env
        from declawd.node.node import UPSTREAM_FILE, Node
        from declawd.store import open_store
        from declawd.volumes.host import unprotect

        settings = settings_from_env(state_dir=state_dir, instance=instance)
        # Undo the upstream the gateway was made with, whatever this shell's settings say.
        recorded = settings.gateway_dir / UPSTREAM_FILE
        if recorded.exists():
            settings.lab = recorded.read_text().strip() == "lab"

        async def run() -> int:
            node = Node.on_this_machine(settings, open_store(settings))
            killed = await node.destroy_all()
            # The volumes directory's own guard mount (volumes/host.py) goes last.
            unprotect(settings.volumes_dir)
            return killed

        typer.echo(f"killed {asyncio.run(run())} sandboxes; gateway removed")
