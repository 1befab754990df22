"""The `declawd` command line: help written for its users, and groups that fail loudly."""

from __future__ import annotations

import importlib
import re
import sys
import types
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import click
import pytest
import typer
from typer.testing import CliRunner

from declawd import audit_cli
from declawd.client import AuditEvent

COMMANDS = (
    "server",
    "down",
    "audit",
    "keys",
    "template",
    "lab",
    "gateway",
    "sandbox",
    "cluster",
    "node",
)
# words that describe how the code is built, not what a command does for its user; a
# dotted `declawd.x` names a Python module (the file declawd.db is fine)
IMPLEMENTATION_WORDS = re.compile(r"lazily|import|module|typer|declawd\.(?!db\b)\w")


@pytest.fixture
def app() -> typer.Typer:
    from declawd.cli import app

    return app


@pytest.fixture
def cli(app: typer.Typer) -> click.Group:
    """The click command tree typer builds from `app`, to read each command's texts."""
    group = typer.main.get_command(app)
    assert isinstance(group, click.Group)
    return group


def _walk(
    command: click.Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, click.Command]]:
    yield " ".join(("declawd", *path)), command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _walk(sub, (*path, name))


def test_top_level_help_lists_every_command_with_what_it_does(
    app: typer.Typer, cli: click.Group
) -> None:
    assert sorted(cli.commands) == sorted(COMMANDS)
    result = CliRunner().invoke(app, ["--help"], prog_name="declawd", terminal_width=200)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name in COMMANDS:
        summary = cli.commands[name].get_short_help_str(limit=200)
        assert summary[:1].isupper() and not summary.startswith("`"), (name, summary)
        # the listing shows the name and its one-line summary on the same row
        assert any(f" {name} " in line and summary[:30] in line for line in lines), (name, summary)
    assert not IMPLEMENTATION_WORDS.search(result.output.lower()), result.output


def test_every_help_text_is_for_users(cli: click.Group) -> None:
    for path, command in _walk(cli):
        texts = [command.help or ""] + [
            getattr(p, "help", None) or "" for p in command.params if p.name != "help"
        ]
        assert texts[0].strip(), f"{path} has no help"
        for text in texts:
            found = IMPLEMENTATION_WORDS.search(text.lower())
            assert found is None, (path, found, text)
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert getattr(param, "help", None), f"{path} {param.opts[0]} has no help"


@pytest.mark.parametrize("path", [[], *([c] for c in COMMANDS)])
def test_each_help_page_renders(app: typer.Typer, path: list[str]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], prog_name="declawd")
    assert result.exit_code == 0, result.output
    assert "Usage: declawd" in result.output


def test_audit_usage_is_one_command_taking_a_sandbox(app: typer.Typer, cli: click.Group) -> None:
    assert not isinstance(cli.commands["audit"], click.Group)
    result = CliRunner().invoke(app, ["audit", "--help"], prog_name="declawd")
    assert result.exit_code == 0, result.output
    usage = next(line.strip() for line in result.output.splitlines() if "Usage:" in line)
    assert usage == "Usage: declawd audit [OPTIONS] SANDBOX"


class FakeClient:
    """Stands in for DeclawdClient: records how `declawd audit` called it."""

    calls: list[tuple[str, dict[str, Any]]] = []
    events: list[AuditEvent] = []

    def __init__(self, **kwargs: Any) -> None:
        self.calls.append(("init", kwargs))

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def audit(self, sandbox_id: str, **kwargs: Any) -> list[AuditEvent]:
        self.calls.append(("audit", {"sandbox_id": sandbox_id, **kwargs}))
        return self.events

    def audit_stream(self, sandbox_id: str, **kwargs: Any) -> list[AuditEvent]:
        self.calls.append(("stream", {"sandbox_id": sandbox_id, **kwargs}))
        return self.events


def _event(kind: str, verdict: str, name: str) -> AuditEvent:
    return AuditEvent(
        time=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        sandbox_id="sbx-1",
        kind=kind,
        verdict=verdict,
        name=name,
        port=443,
        protocol="tcp",
    )


def test_audit_options_may_follow_the_sandbox(
    app: typer.Typer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_cli, "DeclawdClient", FakeClient)
    monkeypatch.setattr(FakeClient, "calls", [])
    monkeypatch.setattr(
        FakeClient,
        "events",
        [_event("connection", "deny", "evil.com"), _event("connection", "allow", "ok.com")],
    )
    result = CliRunner().invoke(
        app, ["audit", "sbx-1", "--verdict", "deny", "--domain", "h:1"], prog_name="declawd"
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "2025-01-02T03:04:05.000+00:00  connection deny  evil.com:443/tcp"
    ]
    assert FakeClient.calls == [
        ("init", {"api_key": None, "domain": "h:1"}),
        (
            "audit",
            {"sandbox_id": "sbx-1", "since": None, "verdict": "deny", "kind": None, "limit": 1000},
        ),
    ]
    FakeClient.calls.clear()
    result = CliRunner().invoke(app, ["audit", "sbx-1", "-f"], prog_name="declawd")
    assert result.exit_code == 0, result.output
    assert len(result.output.splitlines()) == 2
    assert FakeClient.calls[1] == ("stream", {"sandbox_id": "sbx-1", "from_start": True})


@pytest.mark.parametrize(
    ("module", "replacement"),
    [
        ("declawd.lab.cli", None),  # the module itself cannot be imported
        ("declawd.egress.cli", types.ModuleType("declawd.egress.cli")),  # it has no `app`
    ],
)
def test_a_group_that_fails_to_import_fails_the_whole_command(
    monkeypatch: pytest.MonkeyPatch, module: str, replacement: types.ModuleType | None
) -> None:
    monkeypatch.setitem(sys.modules, module, replacement)
    monkeypatch.delitem(sys.modules, "declawd.cli", raising=False)
    with pytest.raises(ImportError, match=module.replace(".", r"\.")):
        importlib.import_module("declawd.cli")
