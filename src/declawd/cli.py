"""The `declawd` command: server, keys, templates, lab, gateway daemon, audit.

Each sub-command group lives with the package it drives (e.g. `declawd.lab.cli`) and is
imported lazily so that `declawd --help` stays fast and one broken group cannot hide the rest.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

# (command group name, module path, attribute) — each module defines a typer.Typer.
_GROUPS = [
    ("keys", "declawd.store.cli", "app"),
    ("template", "declawd.templates.cli", "app"),
    ("lab", "declawd.lab.cli", "app"),
    ("gateway", "declawd.egress.cli", "app"),
    ("audit", "declawd.audit_cli", "app"),
]


def _register_groups() -> None:
    for name, module, attr in _GROUPS:
        try:
            sub = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
        app.add_typer(sub, name=name)


def _register_commands() -> None:
    try:
        server_cli = importlib.import_module("declawd.api.cli")
    except ImportError:
        return
    server_cli.register(app)


_register_groups()
_register_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
