"""`declawd sandbox security get|set` and the `http` lines of `declawd audit`, with a fake
client: JSON in and out, a bad file refused before any call, errors on stderr."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from declawd import security_cli
from declawd.audit_cli import format_event
from declawd.client import AuditEvent, BadRequest


class FakeClient:
    calls: list[tuple[str, Any]] = []
    fail = False

    def __init__(self, **kwargs: Any) -> None:
        self.calls.append(("init", kwargs))

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def get_security(self, sandbox_id: str) -> dict[str, Any]:
        self.calls.append(("get", sandbox_id))
        return {"audit": {"enabled": True}}

    def set_security(self, sandbox_id: str, policy: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("set", (sandbox_id, policy)))
        if self.fail:
            raise BadRequest(400, "transformations[0].match: must not be empty")
        return {**policy, "done": True}


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    monkeypatch.setattr(security_cli, "DeclawdClient", FakeClient)
    monkeypatch.setattr(FakeClient, "calls", [])
    monkeypatch.setattr(FakeClient, "fail", False)
    from declawd.cli import app

    return app


def run(app: typer.Typer, *args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(app, ["sandbox", "security", *args], input=stdin)


def test_get_prints_the_policy_as_json(app: typer.Typer) -> None:
    result = run(app, "get", "sbx-1", "--domain", "h:1")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"audit": {"enabled": True}}
    assert FakeClient.calls == [("init", {"api_key": None, "domain": "h:1"}), ("get", "sbx-1")]


def test_set_sends_a_file_or_stdin_and_prints_the_answer(app: typer.Typer, tmp_path: Path) -> None:
    policy = {"transformations": [{"match": "a", "replace": "b"}]}
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy))
    result = run(app, "set", "sbx-1", str(path))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {**policy, "done": True}
    result = run(app, "set", "sbx-1", stdin=json.dumps({"audit": False}))
    assert result.exit_code == 0, result.output
    assert [c for c in FakeClient.calls if c[0] == "set"] == [
        ("set", ("sbx-1", policy)),
        ("set", ("sbx-1", {"audit": False})),
    ]


@pytest.mark.parametrize(
    ("text", "why"), [("{not json", "stdin: not JSON"), ("[1]", "stdin: must be a JSON object")]
)
def test_set_refuses_what_is_not_a_json_object_before_calling(
    app: typer.Typer, text: str, why: str
) -> None:
    result = run(app, "set", "sbx-1", "-", stdin=text)
    assert result.exit_code == 2
    assert why in result.output
    assert FakeClient.calls == []


def test_a_refused_policy_is_an_error_on_stderr(app: typer.Typer) -> None:
    FakeClient.fail = True
    result = run(app, "set", "sbx-1", stdin="{}")
    assert result.exit_code == 1
    assert "transformations[0].match: must not be empty" in result.output


def test_an_http_audit_line_shows_the_request_and_what_was_done() -> None:
    event = AuditEvent(
        time=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        sandbox_id="sbx-1",
        kind="http",
        verdict="allow",
        reason="inspected",
        name="api.openai.com",
        method="POST",
        url="https://api.openai.com/v1/chat",
        status_code=200,
        transformations_applied=2,
        vault_injections=1,
        pii_redactions=0,
    )
    assert format_event(event) == (
        "2025-01-02T03:04:05.000+00:00  http       allow POST https://api.openai.com/v1/chat"
        " 200 transformations=2 vault=1  inspected"
    )
