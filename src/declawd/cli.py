"""The `declawd` command: one typer app that mounts the command group of each package.

Each group lives with the package it drives (`declawd.lab.cli`, `declawd.store.cli`, ...)
and is imported here like any module. Invariant: a group that fails to import makes
`declawd` itself fail with that error; it never turns into a silently missing command.
"""

from __future__ import annotations

import typer

from declawd import audit_cli, sandbox_cli
from declawd.api import cli as server_cli
from declawd.cluster.cli import cluster_app, node_app
from declawd.egress.cli import app as gateway_app
from declawd.lab.cli import app as lab_app
from declawd.store.cli import app as keys_app
from declawd.templates.cli import app as template_app

HELP = """Run declawd: sandboxes for AI-written code, driven by the official Declaw SDK.

Start the API server with `declawd server`, then try `declawd sandbox create` and
`declawd sandbox exec`. Give a team a key with `declawd keys create` and point the SDK (or
these commands) at the server with DECLAW_DOMAIN and DECLAW_API_KEY; with neither set, the
commands use the server on this machine and its dev key.
"""

app = typer.Typer(no_args_is_help=True, add_completion=False, help=HELP)

server_cli.register(app)
audit_cli.register(app)
app.add_typer(keys_app, name="keys")
app.add_typer(template_app, name="template")
app.add_typer(lab_app, name="lab")
app.add_typer(gateway_app, name="gateway")
app.add_typer(sandbox_cli.app, name="sandbox")
app.add_typer(cluster_app, name="cluster")
app.add_typer(node_app, name="node")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
