"""`declawd gateway`: run the gateway daemon (resolver + proxy + audit) in the current netns.

The node launches `declawd gateway serve` inside the gateway netns via nsenter, detached,
and restarts it if it dies; this module only parses flags and runs the daemon's loop.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

from declawd.addresses import DEFAULT_POOL, PROXY_PORT, RESOLVER_PORT

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Run the egress gateway daemon (the server starts it; not meant to be run by hand).",
)


@app.command()
def serve(
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir", help="The server's state directory (required).", show_default=False
        ),
    ] = None,
    instance: Annotated[
        str, typer.Option("--instance", help="Instance name (in log lines).")
    ] = "declawd",
    upstream_dns: Annotated[
        str,
        typer.Option("--upstream-dns", help="Upstream resolver as ADDR or ADDR:PORT (required)."),
    ] = "",
    peek_timeout: Annotated[
        float | None,
        typer.Option(
            "--peek-timeout",
            help="Proxy: seconds to wait for a client's first bytes.",
            show_default=False,
        ),
    ] = None,
    handshake_timeout: Annotated[
        float,
        typer.Option(
            "--handshake-timeout", help="Proxy: seconds to finish a ClientHello or request head."
        ),
    ] = 10.0,
    dns_flood_qps: Annotated[
        float,
        typer.Option(
            "--dns-flood-qps", help="Resolver: refuse a sandbox above this many queries/s."
        ),
    ] = 2000.0,
    dns_flood_window: Annotated[
        float,
        typer.Option("--dns-flood-window", help="Resolver: seconds that rate is measured over."),
    ] = 5.0,
    pool: Annotated[
        str, typer.Option("--pool", help="Sandbox address pool (CIDR).")
    ] = DEFAULT_POOL,
    exempt: Annotated[
        list[str] | None,
        typer.Option(
            "--exempt", help="Operator floor exemption as a CIDR (repeatable).", show_default=False
        ),
    ] = None,
    dns_port: Annotated[
        int, typer.Option("--dns-port", help="DNS port (UDP and TCP).")
    ] = RESOLVER_PORT,
    proxy_port: Annotated[int, typer.Option("--proxy-port", help="Proxy port.")] = PROXY_PORT,
    db_path: Annotated[
        Path | None,
        typer.Option(
            "--db", help="Audit database (default: <state-dir>/declawd.db).", show_default=False
        ),
    ] = None,
    database_url: Annotated[
        str,
        typer.Option(
            "--database-url",
            envvar="DECLAWD_DATABASE_URL",
            help="The store's postgresql:// URL: audit events go there.",
            show_default=False,
        ),
    ] = "",
    audit_spool: Annotated[
        Path | None,
        typer.Option(
            "--audit-spool",
            help="Cluster mode: audit events go to this SQLite file, which the node agent ships.",
            show_default=False,
        ),
    ] = None,
    no_nflog: Annotated[
        bool, typer.Option("--no-nflog", help="Do not read denied packets from NFLOG group 7.")
    ] = False,
    upstream_ca: Annotated[
        Path | None,
        typer.Option(
            "--upstream-ca",
            help="CA bundle inspected upstreams are verified against.",
            show_default=False,
        ),
    ] = None,
    vault_key: Annotated[
        Path | None,
        typer.Option(
            "--vault-key",
            help="Vault master key (default: <state-dir>/keys/vault.key).",
            show_default=False,
        ),
    ] = None,
    vault_socket: Annotated[
        Path | None,
        typer.Option(
            "--vault-socket",
            help="Cluster mode: ask the node agent's socket for vault values (no key here).",
            show_default=False,
        ),
    ] = None,
    judge_url: Annotated[
        str,
        typer.Option(
            "--judge-url", help="Injection judge: an OpenAI-compatible chat completions URL."
        ),
    ] = "",
    judge_model: Annotated[
        str, typer.Option("--judge-model", help="Model name sent to the injection judge.")
    ] = "injection-judge",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    """Serve sandbox DNS, the egress proxy, audit and the control socket in this netns."""
    from declawd.egress.gateway import GatewayConfig, GatewayDaemon, parse_upstream

    # Checked here rather than by `...` defaults: this typer/click pairing skips that check.
    if state_dir is None or not upstream_dns:
        raise typer.BadParameter("--state-dir and --upstream-dns are required")
    try:
        upstream = parse_upstream(upstream_dns)
    except ValueError as exc:
        raise typer.BadParameter(f"--upstream-dns: {exc}") from exc

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=f"%(asctime)s {instance}-gw %(name)s %(levelname)s %(message)s",
    )
    config = GatewayConfig(
        state_dir=state_dir,
        instance=instance,
        upstream_dns=upstream,
        dns_port=dns_port,
        proxy_port=proxy_port,
        peek_timeout=peek_timeout,
        handshake_timeout=handshake_timeout,
        dns_flood_qps=dns_flood_qps,
        dns_flood_window_s=dns_flood_window,
        pool=pool,
        exempt=exempt or [],
        nflog=not no_nflog,
        db_path=db_path,
        database_url=database_url,
        audit_spool=audit_spool,
        upstream_ca=upstream_ca,
        vault_key=vault_key,
        vault_socket=vault_socket,
        judge_url=judge_url,
        judge_model=judge_model,
    )
    asyncio.run(GatewayDaemon(config).run())
