"""The options every `declawd` command spells the same way, and how a command finds its server.

One style for the whole command line (docs/cli.md): long options with dashes declared with
`Annotated`, help texts that are sentences, `--json` on every listing. Invariant: with no
--domain and no DECLAW_DOMAIN a command talks to the server on this machine, never to the
hosted service (the SDK's own default), and the local dev key is only sent to a loopback address.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from declawd.config import Settings

DEV_KEY_FILE = "dev-api-key"

Domain = Annotated[
    str | None,
    typer.Option(
        "--domain",
        help="Server as HOST:PORT (default: $DECLAW_DOMAIN, else this machine's server).",
        show_default=False,
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        help="API key (default: $DECLAW_API_KEY, else the local server's dev key).",
        show_default=False,
    ),
]
StateDir = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="State directory (default: $DECLAWD_STATE_DIR or /var/lib/declawd).",
        show_default=False,
    ),
]
TemplatesDir = Annotated[
    Path | None,
    typer.Option(
        "--templates-dir",
        help="Template layers directory (default: <state-dir>/templates).",
        show_default=False,
    ),
]
Instance = Annotated[
    str | None,
    typer.Option(
        "--instance",
        help="Instance name, the prefix of namespaces and cgroups (default: declawd).",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


@dataclass(frozen=True)
class Connection:
    """Where a command sends its requests: `domain` as the SDK takes it, and the key ("" when
    none was found: the server then answers 401 and says so)."""

    domain: str
    api_key: str


def settings_from_env(**overrides: object) -> Settings:
    """`Settings.from_env`, with a bad DECLAWD_* value reported as a usage error."""
    try:
        return Settings.from_env(**overrides)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def local_domain(settings: Settings) -> str:
    """HOST:PORT of this machine's server as `declawd server` would listen (pure)."""
    host = settings.host
    if host in ("", "0.0.0.0", "::", "::1"):
        host = "localhost"
    return f"{host}:{settings.port}"


def is_loopback(domain: str) -> bool:
    """Whether the HOST of HOST[:PORT] is this machine (pure)."""
    host, sep, tail = domain.rpartition(":")
    if not sep or not tail.isdigit():
        host = domain
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dev_key(settings: Settings) -> str:
    """The key `declawd server` wrote for team "default", or "" if it cannot be read."""
    try:
        return (settings.keys_dir / DEV_KEY_FILE).read_text().strip()
    except OSError:
        return ""


def resolve_connection(
    domain: str | None,
    api_key: str | None,
    environ: Mapping[str, str] | None = None,
) -> Connection:
    """The flags first, then DECLAW_DOMAIN / DECLAW_API_KEY, then the local server and the dev
    key it wrote under its state directory (DECLAWD_STATE_DIR)."""
    env = os.environ if environ is None else environ
    settings: Settings | None = None
    resolved = domain or env.get("DECLAW_DOMAIN") or ""
    if not resolved:
        settings = settings_from_env()
        resolved = local_domain(settings)
    key = api_key or env.get("DECLAW_API_KEY") or ""
    if not key and is_loopback(resolved):
        key = dev_key(settings or settings_from_env())
    return Connection(resolved, key)
