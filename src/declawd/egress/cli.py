"""`declawd gateway`: run the gateway daemon (resolver + proxy + audit) in the current netns.

The node launches `declawd gateway serve` inside the gateway netns via nsenter, detached,
and restarts it if it dies; this module only parses flags and runs the daemon's loop.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import typer

from declawd.addresses import DEFAULT_POOL, PROXY_PORT, RESOLVER_PORT

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Run the egress gateway daemon (the server starts it; not meant to be run by hand).",
)


@app.command()
def serve(
    state_dir: Path | None = typer.Option(None, "--state-dir", help="the server's state dir"),
    instance: str = typer.Option("declawd", "--instance", help="instance name (for logs)"),
    upstream_dns: str = typer.Option("", "--upstream-dns", help="ADDR or ADDR:PORT"),
    peek_timeout: float | None = typer.Option(None, "--peek-timeout", help="proxy peek, s"),
    handshake_timeout: float = typer.Option(
        10.0, "--handshake-timeout", help="proxy: finish ClientHello/request head, s"
    ),
    dns_flood_qps: float = typer.Option(
        2000.0, "--dns-flood-qps", help="resolver: refuse a sandbox above this rate, queries/s"
    ),
    dns_flood_window: float = typer.Option(
        5.0, "--dns-flood-window", help="resolver: window that rate is measured over, s"
    ),
    pool: str = typer.Option(DEFAULT_POOL, "--pool", help="sandbox address pool"),
    exempt: list[str] = typer.Option([], "--exempt", help="operator floor exemption (CIDR)"),
    dns_port: int = typer.Option(RESOLVER_PORT, "--dns-port", help="DNS port (UDP and TCP)"),
    proxy_port: int = typer.Option(PROXY_PORT, "--proxy-port", help="proxy port"),
    db_path: Path | None = typer.Option(None, "--db", help="audit db (default STATE/declawd.db)"),
    no_nflog: bool = typer.Option(False, "--no-nflog", help="do not read NFLOG group 7"),
    upstream_ca: Path | None = typer.Option(
        None, "--upstream-ca", help="CA bundle inspected upstreams are verified against"
    ),
    vault_key: Path | None = typer.Option(
        None, "--vault-key", help="vault master key (default STATE/keys/vault.key)"
    ),
    judge_url: str = typer.Option(
        "", "--judge-url", help="injection judge: OpenAI-compatible chat completions URL"
    ),
    judge_model: str = typer.Option("injection-judge", "--judge-model", help="judge's model"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log debug messages"),
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
        exempt=exempt,
        nflog=not no_nflog,
        db_path=db_path,
        upstream_ca=upstream_ca,
        vault_key=vault_key,
        judge_url=judge_url,
        judge_model=judge_model,
    )
    asyncio.run(GatewayDaemon(config).run())
