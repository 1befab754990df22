"""The dashboard's cookie sign-in and the team's key routes, over a real SQLite store and a
fake node: cookie flags, CSRF on every state-changing call, expiry (idle, absolute, revoked
key), team isolation, the static page's CSP, and /keys."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from declawd.api import keys, sandboxes
from declawd.api.errors import body_of, status_of
from declawd.dashboard import routes
from declawd.dashboard.session import COOKIE
from declawd.errors import DeclawdError, NotFound
from declawd.store import SandboxRecord, SandboxState
from declawd.store.db import MIGRATIONS, open_database
from declawd.store.keys import TeamsAndKeys
from declawd.store.records import Repository
from declawd.store.sandboxes import Sandboxes
from declawd.store.sessions import IDLE_S, MAX_AGE_S, TOUCH_EVERY_S, Sessions
from declawd.store.templates import Templates
from declawd.store.traffic import Traffic


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class DashStore(Sessions, TeamsAndKeys, Sandboxes, Templates, Traffic):
    """The store's mixins the dashboard touches, over the real migrations."""

    def __init__(self, target: Path | str, clock: Clock) -> None:
        Repository.__init__(self, open_database(target, MIGRATIONS), clock)


class FakeNode:
    def __init__(self, records: list[SandboxRecord]) -> None:
        self.records = {r.sandbox_id: r for r in records}
        self.killed: list[str] = []

    async def lookup(self, team_id: str, sandbox_id: str, need: Any = None) -> SandboxRecord:
        rec = self.records.get(sandbox_id)
        if rec is None or rec.team_id != team_id or sandbox_id in self.killed:
            raise NotFound(f"sandbox '{sandbox_id}' not found")
        return rec

    async def kill(self, sandbox_id: str, wait: bool = True) -> bool:
        self.killed.append(sandbox_id)
        return True


class FakeTemplates:
    def __init__(self, store: DashStore) -> None:
        self.store = store

    def get(self, team_id: str, template_id: str) -> dict[str, Any]:
        rec = self.store.get_template(template_id)
        if rec is None or rec["team_id"] not in (team_id, ""):
            raise NotFound(f"template '{template_id}' not found")
        return {"template_id": template_id, "builtin": rec["team_id"] == ""}

    def build_status(self, team_id: str, build_id: str) -> dict[str, Any]:
        rec = self.store.get_build(build_id)
        assert rec is not None and rec["team_id"] == team_id
        return {"status": rec["status"], "logs": rec["logs"]}


class World:
    def __init__(self, target: Path | str) -> None:
        self.clock = Clock()
        self.store = DashStore(target, self.clock)
        self.team_a = self.store.create_team("a")
        self.team_b = self.store.create_team("b")
        self.key_a_id, self.key_a = self.store.create_api_key(self.team_a, "ui")
        self.key_b_id, self.key_b = self.store.create_api_key(self.team_b, "other")
        for sid, team in (("sbx-aaaaaaaaaaaa", self.team_a), ("sbx-bbbbbbbbbbbb", self.team_b)):
            self.store.insert_sandbox(
                SandboxRecord(
                    sandbox_id=sid,
                    team_id=team,
                    state=SandboxState.RUNNING,
                    template_id="tpl-1",
                    template_alias="base",
                    runtime="runc",
                    created_at=self.clock.now,
                    started_at=self.clock.now,
                    timeout=300,
                    slot=1 if team == self.team_a else 2,
                )
            )
        self.node = FakeNode(
            [r for r in (self.store.get_sandbox("sbx-aaaaaaaaaaaa"),) if r]
            + [r for r in (self.store.get_sandbox("sbx-bbbbbbbbbbbb"),) if r]
        )
        app = FastAPI()
        app.state.services = SimpleNamespace(
            store=self.store, node=self.node, templates=FakeTemplates(self.store)
        )

        @app.exception_handler(DeclawdError)
        async def _error(request: Request, exc: DeclawdError) -> JSONResponse:
            return JSONResponse(body_of(exc), status_code=status_of(exc))

        for module in (sandboxes, keys, routes):
            app.include_router(module.router)
        self.app = app

    def client(self) -> TestClient:
        return TestClient(self.app, base_url="http://localhost")

    def signed_in(self, key: str | None = None) -> tuple[TestClient, str]:
        c = self.client()
        r = c.post("/dashboard/session", json={"api_key": key or self.key_a})
        assert r.status_code == 201, r.text
        return c, r.json()["csrf_token"]


@pytest.fixture
def world(db_target: Path | str) -> Iterator[World]:
    w = World(db_target)
    yield w
    w.store._db.close()


def test_sign_in_sets_an_httponly_strict_cookie_and_answers_the_csrf_token(world: World) -> None:
    c = world.client()
    r = c.post("/dashboard/session", json={"api_key": world.key_a})
    assert r.status_code == 201, r.text
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    flags = {p.strip().lower() for p in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= flags
    assert "secure" not in flags  # plain http (localhost): Secure would drop the cookie
    body = r.json()
    assert body["team_id"] == world.team_a and body["team_name"] == "a"
    assert body["key_id"] == world.key_a_id and world.key_a.startswith(body["key_prefix"])
    assert len(body["csrf_token"]) >= 32
    assert world.key_a not in r.text
    assert r.headers["cache-control"] == "no-store"
    # The cookie is a random id, not the key, and the database keeps only its hash.
    sid = c.cookies[COOKIE]
    assert sid != world.key_a and len(sid) >= 40
    rows = world.store._db.query("SELECT session_hash FROM dashboard_sessions")
    assert [r["session_hash"] for r in rows] != [sid] and len(rows) == 1


def test_cookie_is_secure_when_reached_over_https(world: World) -> None:
    c = TestClient(world.app, base_url="https://dash.example")
    r = c.post("/dashboard/session", json={"api_key": world.key_a})
    assert "secure" in r.headers["set-cookie"].lower()


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        ({"api_key": "dcw_" + "x" * 40}, "application/json", 401, "api_key: invalid or revoked"),
        ({}, "application/json", 400, "api_key: is required"),
        ({"api_key": 3}, "application/json", 400, "api_key: is required"),
        (None, "application/x-www-form-urlencoded", 400, "Content-Type: must be application/json"),
    ],
)
def test_sign_in_refuses_bad_input_naming_the_field(
    world: World, body: Any, content_type: str, status: int, message: str
) -> None:
    c = world.client()
    data = "api_key=" + world.key_a if body is None else __import__("json").dumps(body)
    r = c.post("/dashboard/session", content=data, headers={"Content-Type": content_type})
    assert r.status_code == status, r.text
    assert r.json()["message"].startswith(message)
    assert "set-cookie" not in r.headers


def test_cookie_authenticates_gets_and_session_route_returns_the_token(world: World) -> None:
    c, csrf = world.signed_in()
    r = c.get("/sandboxes")
    assert r.status_code == 200, r.text
    assert [s["sandbox_id"] for s in r.json()["sandboxes"]] == ["sbx-aaaaaaaaaaaa"]
    again = c.get("/dashboard/session")
    assert again.status_code == 200 and again.json()["csrf_token"] == csrf


def test_without_cookie_or_key_the_api_is_401(world: World) -> None:
    c = world.client()
    assert c.get("/sandboxes").status_code == 401
    r = c.get("/dashboard/session")
    assert r.status_code == 401 and r.json()["code"] == "no_session"


def test_state_changing_call_with_the_cookie_needs_the_csrf_token(world: World) -> None:
    c, csrf = world.signed_in()
    sid = "sbx-aaaaaaaaaaaa"
    missing = c.delete(f"/sandboxes/{sid}")
    assert missing.status_code == 403 and missing.json()["code"] == "csrf"
    assert "X-CSRF-Token" in missing.json()["message"]
    wrong = c.delete(f"/sandboxes/{sid}", headers={"X-CSRF-Token": csrf[:-1] + "x"})
    assert wrong.status_code == 403
    assert world.node.killed == []
    # A token of another session (another browser, same team) does not fit this one.
    _, other_csrf = world.signed_in()
    assert c.delete(f"/sandboxes/{sid}", headers={"X-CSRF-Token": other_csrf}).status_code == 403
    assert c.post("/keys", json={}, headers={"X-CSRF-Token": other_csrf}).status_code == 403
    ok = c.delete(f"/sandboxes/{sid}", headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200, ok.text
    assert world.node.killed == [sid]


def test_api_key_requests_need_no_csrf_token_even_with_a_cookie(world: World) -> None:
    c, _ = world.signed_in()
    r = c.delete("/sandboxes/sbx-aaaaaaaaaaaa", headers={"X-API-Key": world.key_a})
    assert r.status_code == 200, r.text


def test_a_session_sees_only_its_team(world: World) -> None:
    c, csrf = world.signed_in()
    other = "sbx-bbbbbbbbbbbb"
    assert c.get(f"/sandboxes/{other}").status_code == 404
    assert c.delete(f"/sandboxes/{other}", headers={"X-CSRF-Token": csrf}).status_code == 404
    assert world.node.killed == []
    listed = {k["key_id"] for k in c.get("/keys").json()["keys"]}
    assert listed == {world.key_a_id}
    r = c.delete(f"/keys/{world.key_b_id}", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 404
    assert world.store.authenticate(world.key_b) is not None
    b, _ = world.signed_in(world.key_b)
    assert [s["sandbox_id"] for s in b.get("/sandboxes").json()["sandboxes"]] == [other]


def test_session_slides_then_expires_when_idle(world: World) -> None:
    c, _ = world.signed_in()
    world.clock.now += IDLE_S - 10
    assert c.get("/sandboxes").status_code == 200  # used: the idle window restarts
    world.clock.now += IDLE_S - 10
    r = c.get("/dashboard/session")
    assert r.status_code == 200
    world.clock.now += IDLE_S + 1
    r = c.get("/sandboxes")
    assert r.status_code == 401 and r.json()["code"] == "session_expired"


def test_session_expires_at_its_absolute_age_however_used(world: World) -> None:
    c, _ = world.signed_in()
    step = IDLE_S / 2
    while world.clock.now + step < 1_700_000_000.0 + MAX_AGE_S:
        world.clock.now += step
        assert c.get("/sandboxes").status_code == 200
    world.clock.now = 1_700_000_000.0 + MAX_AGE_S + 1
    assert c.get("/sandboxes").status_code == 401


def test_last_seen_is_written_at_most_once_a_minute(world: World) -> None:
    c, _ = world.signed_in()

    def seen() -> float:
        return float(world.store._db.query("SELECT last_seen_at FROM dashboard_sessions")[0][0])

    start = seen()
    world.clock.now += TOUCH_EVERY_S / 2
    c.get("/sandboxes")
    assert seen() == start
    world.clock.now += TOUCH_EVERY_S
    c.get("/sandboxes")
    assert seen() == world.clock.now


def test_revoking_the_key_ends_its_sessions_at_once(world: World) -> None:
    c, _ = world.signed_in()
    world.store.revoke_api_key(world.key_a_id)
    assert c.get("/sandboxes").status_code == 401


def test_sign_out_needs_the_token_then_ends_the_session(world: World) -> None:
    c, csrf = world.signed_in()
    sid = c.cookies[COOKIE]
    assert c.delete("/dashboard/session").status_code == 403
    assert c.get("/sandboxes").status_code == 200
    r = c.delete("/dashboard/session", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200
    assert 'declawd_session=""' in r.headers["set-cookie"] or "Max-Age=0" in r.headers["set-cookie"]
    assert world.store.get_session(sid) is None
    replay = world.client()
    replay.cookies.set(COOKIE, sid)
    assert replay.get("/sandboxes").status_code == 401


def test_signing_in_again_replaces_the_old_session(world: World) -> None:
    c, _ = world.signed_in()
    old = c.cookies[COOKIE]
    c.post("/dashboard/session", json={"api_key": world.key_a})
    assert c.cookies[COOKIE] != old
    assert world.store.get_session(old) is None


def test_keys_routes_list_create_and_revoke_for_the_team(world: World) -> None:
    c, csrf = world.signed_in()
    hdr = {"X-CSRF-Token": csrf}
    world.clock.now += 1  # listed by creation time
    created = c.post("/keys", json={"name": "ci"}, headers=hdr)
    assert created.status_code == 201, created.text
    new = created.json()
    assert new["key"].startswith("dcw_") and new["key"].startswith(new["prefix"])
    assert new["name"] == "ci" and new["state"] == "active" and not new["current"]
    assert world.store.authenticate(new["key"]) == {
        "team_id": world.team_a,
        "key_id": new["key_id"],
    }
    listing = c.get("/keys").json()["keys"]
    assert [k["key_id"] for k in listing] == [world.key_a_id, new["key_id"]]
    assert all("key" not in k and "key_hash" not in k for k in listing)
    assert [k["current"] for k in listing] == [True, False]
    assert new["key"] not in c.get("/keys").text
    revoked = c.delete(f"/keys/{new['key_id']}", headers=hdr)
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    assert world.store.authenticate(new["key"]) is None
    again = c.delete(f"/keys/{new['key_id']}", headers=hdr)
    assert again.status_code == 200 and again.json()["revoked"] is False
    states = {k["key_id"]: k["state"] for k in c.get("/keys").json()["keys"]}
    assert states[new["key_id"]] == "revoked"


def test_the_key_of_the_current_session_or_request_cannot_be_revoked_by_it(world: World) -> None:
    c, csrf = world.signed_in()
    r = c.delete(f"/keys/{world.key_a_id}", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 409 and r.json()["code"] == "current_key"
    by_key = world.client().delete(f"/keys/{world.key_a_id}", headers={"X-API-Key": world.key_a})
    assert by_key.status_code == 409
    assert world.store.authenticate(world.key_a) is not None
    # With another key of the team it can.
    other_id, other = world.store.create_api_key(world.team_a, "second")
    r = world.client().delete(f"/keys/{world.key_a_id}", headers={"X-API-Key": other})
    assert r.status_code == 200 and r.json()["revoked"] is True
    assert other_id != world.key_a_id


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": 5}, "name: must be a string"),
        ({"name": "x" * 65}, "name: at most 64 characters"),
        ({"name": "a\nb"}, "name: must not contain control characters"),
    ],
)
def test_create_key_refuses_bad_names(world: World, body: dict[str, Any], message: str) -> None:
    r = world.client().post("/keys", json=body, headers={"X-API-Key": world.key_a})
    assert r.status_code == 400 and r.json()["message"] == message


def test_page_and_assets_are_served_with_a_strict_csp_and_no_inline_script(world: World) -> None:
    c = world.client()
    page = c.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    html = page.text
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline script in index.html"
    assert not re.search(r"\son[a-z]+=", html) and "style=" not in html
    srcs = re.findall(r'(?:src|href)="([^"#]+)"', html)
    assert srcs and all(s.startswith("/dashboard/assets/") for s in srcs), srcs
    for src in srcs:
        r = c.get(src)
        assert r.status_code == 200, src
        assert r.headers["x-content-type-options"] == "nosniff"
    js = c.get("/dashboard/assets/app.js")
    assert js.headers["content-type"].startswith("text/javascript")
    # Every module the entry imports, transitively, is served; none comes from elsewhere.
    pending, seen = ["app.js"], set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        text = c.get(f"/dashboard/assets/{name}").text
        assert not re.search(r"\.(inner|outer)HTML|insertAdjacentHTML|document\.write|eval\(", text)
        assert "http://" not in text and "https://" not in text, name
        pending += re.findall(r'from "\./([a-z]+\.js)"', text)
    assert {"api.js", "dom.js", "sandbox.js", "sandboxes.js", "templates.js", "keys.js"} <= seen


@pytest.mark.parametrize("name", ["../routes.py", "..%2Froutes.py", ".hidden", "nope.js"])
def test_only_shipped_assets_are_served(world: World, name: str) -> None:
    assert world.client().get(f"/dashboard/assets/{name}").status_code == 404


def test_template_builds_are_the_teams_with_their_logs(world: World) -> None:
    s = world.store
    s.insert_template({"template_id": "tpl-mine", "team_id": world.team_a, "state": "ready"})
    s.insert_template({"template_id": "tpl-theirs", "team_id": world.team_b, "state": "ready"})
    s.insert_build(
        {
            "build_id": "bld-1",
            "template_id": "tpl-mine",
            "team_id": world.team_a,
            "status": "failed",
            "logs": ["step 1", "boom"],
        }
    )
    world.clock.now += 5
    s.insert_build(
        {
            "build_id": "bld-2",
            "template_id": "tpl-mine",
            "team_id": world.team_a,
            "status": "completed",
            "logs": ["ok"],
        }
    )
    c, _ = world.signed_in()
    r = c.get("/dashboard/templates/tpl-mine/builds")
    assert r.status_code == 200, r.text
    out = r.json()
    assert [b["build_id"] for b in out["builds"]] == ["bld-2", "bld-1"]
    assert out["builds"][1]["logs"] == ["step 1", "boom"]
    assert out["builds"][1]["status"] == "failed"
    assert c.get("/dashboard/templates/tpl-theirs/builds").status_code == 404
