"""`declawd cluster ...` (the control plane's CA and join tokens) and `declawd node ...`
(a node agent, and its drain)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from declawd.cli_options import Instance, StateDir, TemplatesDir, settings_from_env

cluster_app = typer.Typer(no_args_is_help=True, help="The cluster CA, join tokens and nodes.")
node_app = typer.Typer(help="Run this machine's node agent in a cluster (docs/cluster.md).")

ControlPlane = Annotated[
    str,
    typer.Option(
        "--control-plane", help="The control plane's internal API, https://HOST:8443.",
        envvar="DECLAWD_CONTROL_PLANE",
    ),
]  # fmt: skip


@cluster_app.command("init")
def init(state_dir: StateDir = None) -> None:
    """Make the cluster CA (ca.crt, ca.key) in DECLAWD_CLUSTER_CA_DIR."""
    from declawd.cluster.ca import init_ca

    settings = settings_from_env(state_dir=state_dir)
    try:
        ca = init_ca(settings.cluster_ca_path)
    except FileExistsError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(f"cluster CA made in {settings.cluster_ca_path} (sha256 {ca.pin})")


@cluster_app.command("join-token")
def join_token(
    ttl: Annotated[float, typer.Option("--ttl", help="Seconds the token is valid.")] = 3600.0,
    state_dir: StateDir = None,
) -> None:
    """Print a single-use join token for one new node (only its hash is stored)."""
    from declawd.cluster.ca import load_ca
    from declawd.store import open_store

    settings = settings_from_env(state_dir=state_dir)
    if ttl <= 0:
        raise typer.BadParameter("--ttl: must be a positive number of seconds")
    ca = load_ca(settings.cluster_ca_path)
    with open_store(settings) as store:
        secret = store.create_join_token(ttl)
    typer.echo(f"{secret}.{ca.pin}")


@cluster_app.command("nodes")
def nodes(state_dir: StateDir = None) -> None:
    """The registered nodes: id, name, state, seconds since the last heartbeat, sandboxes."""
    import time

    from declawd.store import open_store

    settings = settings_from_env(state_dir=state_dir)
    with open_store(settings) as store:
        for n in store.list_nodes():
            ago = time.time() - n.last_seen
            sandboxes = n.capacity.get("sandboxes", 0)
            typer.echo(f"{n.node_id}\t{n.name}\t{n.state}\t{ago:.0f}s\t{sandboxes}\t{n.url}")


@node_app.callback(invoke_without_command=True)
def node(
    ctx: typer.Context,
    control_plane: ControlPlane = "",
    join_token_file: Annotated[
        Path | None, typer.Option("--join-token-file", help="The join token, on first start.")
    ] = None,
    listen: Annotated[
        str | None, typer.Option("--listen", help="HOST:PORT of this node's internal API.")
    ] = None,
    node_name: Annotated[
        str | None, typer.Option("--node-name", help="Its name (default: DECLAWD_NODE_NAME).")
    ] = None,
    state_dir: StateDir = None,
    templates_dir: TemplatesDir = None,
    instance: Instance = None,
    lab: Annotated[
        bool | None,
        typer.Option(
            "--lab/--no-lab", help="Use the lab as the only upstream.", show_default=False
        ),
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="Log level: debug, info or warning.")
    ] = "info",
) -> None:
    """Run the node agent: join, reconcile, serve the internal API, heartbeat."""
    if ctx.invoked_subcommand is not None:
        return
    import asyncio

    from declawd.cluster.agent import NodeAgent
    from declawd.host.limits import raise_host_limits

    if not control_plane:
        raise typer.BadParameter("--control-plane is required")
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides: dict[str, object] = {}
    if listen:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise typer.BadParameter(f"--listen: HOST:PORT, not {listen!r}")
        overrides.update(node_address=host, node_port=int(port))
    settings = settings_from_env(
        state_dir=state_dir,
        templates_dir=templates_dir,
        instance=instance,
        lab=lab,
        node_name=node_name,
        **overrides,
    )
    raise_host_limits(settings.pool)
    asyncio.run(NodeAgent(settings, control_plane, join_token_file).run())


@node_app.command("drain")
def drain(control_plane: ControlPlane = "", state_dir: StateDir = None) -> None:
    """Stop new placements on this node (its running sandboxes go on until they end)."""
    from declawd.cluster.agent import drain as ask_drain

    if not control_plane:
        raise typer.BadParameter("--control-plane is required")
    settings = settings_from_env(state_dir=state_dir)
    typer.echo(ask_drain(settings, control_plane)["state"])
