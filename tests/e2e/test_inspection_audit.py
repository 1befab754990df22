"""Request audit, live policy changes and bad input of content inspection.

Audit: one `http` event per inspected request carrying the SDK's `AuditEntry` field names
exactly plus ours, with exact counts; `audit=False` stops them while network decisions stay;
values of env vars matching `mask_patterns` never appear in any event (they still reach the
upstream: masking is for the audit). Live: `GET`/`PUT /sandboxes/{id}/security` through our
client; a transformation added to a running sandbox applies to its next connection, a PUT
without `network` leaves the network policy, one with it replaces it, a bad PUT changes
nothing. Bad input: every refusal's status and the field its message names first.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography import x509
from declaw import ALL_TRAFFIC, NetworkPolicy, Sandbox, SecurityPolicy, VaultClient

from declawd.client import BadRequest, DeclawdClient
from declawd.lab.ca import ca_cert_path
from tests.e2e.conftest import new_team_key
from tests.e2e.test_inspection import (
    ALLOWED,
    H1_HOST,
    H2_HOST,
    RULES,
    SENT,
    assert_rewritten_both_ways,
    create,
    echo,
    eventually,
    inspecting,
    marker,
    probe,
    seen_upstream,
    settings,
)

pytestmark = pytest.mark.e2e

AUDIT_ENTRY_FIELDS = (  # declaw.security.audit.AuditEntry, exactly
    "timestamp",
    "method",
    "url",
    "status_code",
    "direction",
    "pii_redactions",
    "injection_blocks",
    "transformations_applied",
)
OUR_FIELDS = ("vault_injections", "bytes_out", "bytes_in")


@pytest.fixture(scope="module")
def client(server: dict[str, str]) -> Iterator[DeclawdClient]:
    with DeclawdClient(api_key=server["key"], domain=server["domain"]) as cl:
        yield cl


def _http_events(client: DeclawdClient, sandbox_id: str) -> list[dict[str, Any]]:
    return [e.model_dump(mode="json") for e in client.audit(sandbox_id, kind="http")]


def _event_for(client: DeclawdClient, sandbox_id: str, m: str) -> dict[str, Any]:
    """The one http event of the request marked `m` (waits for the batch to land)."""
    got = eventually(lambda: [e for e in _http_events(client, sandbox_id) if m in e["url"]])
    assert len(got) == 1, got
    event: dict[str, Any] = got[0]
    return event


# --- request audit -------------------------------------------------------------------------


def test_one_http_event_per_request_with_sdk_field_names(
    server: dict[str, str], client: DeclawdClient
) -> None:
    s = create(security=inspecting(ALLOWED))
    try:
        t0 = datetime.now(UTC)
        m1, m2, m3 = marker(), marker(), marker()
        # text/plain: the byte counts are exact (no JSON re-serialisation in between)
        posted = probe(
            s,
            f"urllib_post('https://{H1_HOST}/anything?case={m1}', data='say hello-out', ctype='text/plain')",
        )
        assert echo(posted)["body"] == "say rewritten-out"
        assert echo(probe(s, f"curl('http://{H1_HOST}/anything?case={m2}', data=None)"))
        assert echo(probe(s, f"curl('https://{H2_HOST}/anything?case={m3}', http='2')"))

        first = _event_for(client, s.sandbox_id, m1)
        assert set(AUDIT_ENTRY_FIELDS) | set(OUR_FIELDS) <= set(first), first
        assert {k: first[k] for k in (*AUDIT_ENTRY_FIELDS[1:], *OUR_FIELDS)} == {
            "method": "POST",
            "url": f"https://{H1_HOST}/anything?case={m1}",
            "status_code": 200,
            "direction": "outbound",
            "pii_redactions": 0,
            "injection_blocks": 0,
            "transformations_applied": 1,  # "hello-out" once; the echo holds no "pong-in"
            "vault_injections": 0,
            "bytes_out": len("say rewritten-out"),
            "bytes_in": len(posted["text"].encode()),
        }, first
        stamp = datetime.fromisoformat(first["timestamp"].replace("Z", "+00:00"))
        assert t0 - timedelta(seconds=5) <= stamp <= datetime.now(UTC), first
        assert (first["kind"], first["verdict"], first["reason"]) == ("http", "allow", "inspected")
        assert (first["name"], first["protocol"]) == (H1_HOST, "https")

        plain = _event_for(client, s.sandbox_id, m2)
        assert (
            plain["url"] == f"http://{H1_HOST}/anything?case={m2}" and plain["protocol"] == "http"
        )
        assert (plain["method"], plain["bytes_out"], plain["transformations_applied"]) == (
            "GET",
            0,
            0,
        )
        h2 = _event_for(client, s.sandbox_id, m3)
        assert (h2["name"], h2["status_code"], h2["method"]) == (H2_HOST, 200, "POST")
        # "hello-out" going; "pong-in" coming back in the echo's body text and its json
        assert h2["transformations_applied"] == 3, h2
    finally:
        s.kill(wait=True)


def test_audit_disabled_stops_http_events_not_network_ones(
    server: dict[str, str], client: DeclawdClient
) -> None:
    quiet = create(security=inspecting(ALLOWED, audit=False))
    try:
        loud = create(security=inspecting(ALLOWED))
        try:
            m, t0 = marker(), time.time()
            assert_rewritten_both_ways(
                probe(quiet, f"curl('https://{H1_HOST}/anything?case={m}')"), H1_HOST, m, t0
            )
            # The gateway writes every sandbox's events through one ordered writer: once the
            # later request of `loud` is visible, any event of `quiet` would be too.
            later = marker()
            assert echo(probe(loud, f"curl('https://{H1_HOST}/anything?case={later}')"))
            _event_for(client, loud.sandbox_id, later)
            assert _http_events(client, quiet.sandbox_id) == []
            events = list(client.audit(quiet.sandbox_id))
            assert ("dns", "allow", H1_HOST) in {(e.kind, e.verdict, e.name) for e in events}
            assert any(e.kind == "connection" and e.verdict == "allow" for e in events), events
        finally:
            loud.kill(wait=True)
    finally:
        quiet.kill(wait=True)


def test_masked_env_values_never_in_any_audit_event(
    server: dict[str, str], client: DeclawdClient
) -> None:
    value = "sk-live-123" + secrets.token_hex(6)
    s = create(
        security=inspecting(ALLOWED), envs={"MY_API_KEY": value, "PLAIN_SETTING": "visible-123"}
    )
    try:
        m, t0 = marker(), time.time()
        url = f"https://{H1_HOST}/anything?case={m}&k="
        got = probe(
            s, f"curl({url!r} + os.environ['MY_API_KEY'] + '&p=' + os.environ['PLAIN_SETTING'])"
        )
        assert echo(got)["query"]["k"] == [value]  # it did go upstream: masking is audit-only
        (rec,) = seen_upstream(H1_HOST, m, t0)
        assert value in rec["target"]
        event = _event_for(client, s.sandbox_id, m)
        masked = urllib.parse.unquote(event["url"])
        assert masked == f"https://{H1_HOST}/anything?case={m}&k=***&p=visible-123", event
        everything = [e.model_dump(mode="json") for e in client.audit(s.sandbox_id, limit=1000)]
        assert len(everything) > 1 and value not in json.dumps(everything)
    finally:
        s.kill(wait=True)


# --- live change ---------------------------------------------------------------------------


def _issuer_is_lab(s: Sandbox) -> bool:
    """Whether a new connection to api.openai.com shows the lab's own certificate."""
    got = probe(s, f"tls_peer({H1_HOST!r})")
    assert "error" not in got, got
    lab = x509.load_pem_x509_certificate(ca_cert_path(settings()).read_bytes())
    leaf = x509.load_der_x509_certificate(base64.b64decode(got["der"]))
    return bool(leaf.issuer == lab.subject)


def test_security_changed_live_applies_to_next_connection(
    server: dict[str, str], client: DeclawdClient
) -> None:
    network = NetworkPolicy(allow_out=ALLOWED, deny_out=[ALL_TRAFFIC])
    s = create(security=SecurityPolicy(network=network))
    try:
        assert client.get_security(s.sandbox_id)["transformations"] == []
        m = marker()
        assert echo(probe(s, f"curl('https://{H1_HOST}/anything?case={m}')"))["json"] == SENT
        assert _issuer_is_lab(s)

        wanted = SecurityPolicy(transformations=RULES).to_dict()  # no "network" key
        assert "network" not in wanted
        client.set_security(s.sandbox_id, wanted)
        stored = client.get_security(s.sandbox_id)
        assert stored["transformations"] == [r.to_dict() for r in RULES]
        net = client.get_network(s.sandbox_id)
        assert (net.allow_out, net.deny_out) == (ALLOWED, [ALL_TRAFFIC])  # left as it was
        m, t0 = marker(), time.time()
        assert_rewritten_both_ways(
            probe(s, f"curl('https://{H1_HOST}/anything?case={m}')"), H1_HOST, m, t0
        )
        assert not _issuer_is_lab(s)

        # A bad PUT is refused naming the field, and changes nothing.
        bad = {"transformations": [{"match": "(?<=a)b", "replace": "x", "direction": "outbound"}]}
        with pytest.raises(BadRequest) as refused:
            client.set_security(s.sandbox_id, bad)
        assert refused.value.status == 400
        assert refused.value.message.startswith("transformations[0].match: "), refused.value.message
        assert client.get_security(s.sandbox_id)["transformations"] == [r.to_dict() for r in RULES]

        # With `network`, the network policy is replaced as PUT /network does.
        narrowed = {**wanted, "network": {"allow_out": [H1_HOST], "deny_out": [ALL_TRAFFIC]}}
        client.set_security(s.sandbox_id, narrowed)
        assert client.get_network(s.sandbox_id).allow_out == [H1_HOST]
        # (an inspecting sandbox's TCP all reaches the proxy, which refuses at the hello)
        assert "error" in probe(s, "tls_peer('example.com')")
        assert "error" not in probe(s, f"tls_peer({H1_HOST!r})")

        # Dropping the rules: the next connection is passthrough again.
        client.set_security(s.sandbox_id, SecurityPolicy().to_dict())
        assert _issuer_is_lab(s)
        m = marker()
        assert echo(probe(s, f"curl('https://{H1_HOST}/anything?case={m}')"))["json"] == SENT
    finally:
        s.kill(wait=True)


# --- bad input -----------------------------------------------------------------------------


def _create_body(policy: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"template": "python", "timeout": 300, **extra}
    if policy is not None:
        body["security"] = {"policy_json": json.dumps(policy)}
    return body


def _rule(**kw: Any) -> dict[str, Any]:
    return {"transformations": [{"match": "ok", "replace": "x", "direction": "outbound", **kw}]}


T = "security.policy_json.transformations[0]"
CREATE_CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("regex-unbalanced", _create_body(_rule(match="(")), 400, f"{T}.match: "),
    ("regex-lookbehind", _create_body(_rule(match="(?<=a)b")), 400, f"{T}.match: "),
    ("regex-empty", _create_body(_rule(match="")), 400, f"{T}.match: "),
    ("regex-too-long", _create_body(_rule(match="a" * 1001)), 400, f"{T}.match: "),
    ("replace-not-string", _create_body(_rule(replace=5)), 400, f"{T}.replace: "),
    ("direction-bad", _create_body(_rule(direction="sideways")), 400, f"{T}.direction: "),
    ("ref-malformed", _create_body(vault_refs={"OPENAI_API_KEY": "not-a-ref"}), 400, "vault_refs.OPENAI_API_KEY: "),
    ("ref-not-string", _create_body(vault_refs={"OPENAI_API_KEY": 5}), 400, "vault_refs.OPENAI_API_KEY: "),
    ("ref-unknown", _create_body(vault_refs={"OPENAI_API_KEY": "vault://default/prod/no-such-secret"}), 404, "vault_refs.OPENAI_API_KEY: "),
]  # fmt: skip


def _live_ids(api: httpx.Client) -> set[str]:
    return {s["sandbox_id"] for s in api.get("/sandboxes").json()["sandboxes"]}


@pytest.mark.parametrize(
    ("body", "status", "prefix"), [c[1:] for c in CREATE_CASES], ids=[c[0] for c in CREATE_CASES]
)
def test_create_refused_naming_the_field(
    api: httpx.Client, body: dict[str, Any], status: int, prefix: str
) -> None:
    before = _live_ids(api)
    r = api.post("/sandboxes", json=body)
    assert r.status_code == status, r.text
    assert r.json()["message"].startswith(prefix), r.text
    assert _live_ids(api) <= before  # nothing was created


def _team_id(h: httpx.Client) -> str:
    teams = h.get("/teams").json()["teams"]
    return str(next(t["team_id"] for t in teams if t["name"] == "default"))


@pytest.fixture(scope="module")
def vault(server: dict[str, str]) -> Iterator[VaultClient]:
    with VaultClient(api_key=server["key"], domain=server["domain"]) as v:
        yield v


def test_vault_refs_of_other_team_or_clashing_env_refused(
    server: dict[str, str], api: httpx.Client, vault: VaultClient
) -> None:
    name = "insp-bad-" + secrets.token_hex(4)
    scope = {"domain_regex": r"api\.openai\.com"}
    other_key = new_team_key("insp-other")
    with VaultClient(api_key=other_key, domain=server["domain"]) as theirs:
        theirs.create_secret("sk-theirs-" + secrets.token_hex(8), name=name, scopes=[scope])
        try:
            with httpx.Client(base_url=server["url"], headers={"X-API-Key": other_key}) as h:
                their_team = _team_id(h)
            for ref in (f"vault://{their_team}/prod/{name}", f"vault://default/prod/{name}"):
                r = api.post("/sandboxes", json=_create_body(vault_refs={"OPENAI_API_KEY": ref}))
                assert r.status_code == 404, r.text
                assert r.json()["message"].startswith("vault_refs.OPENAI_API_KEY: "), r.text
        finally:
            theirs.delete_secret(name)
    vault.create_secret("sk-ours-" + secrets.token_hex(8), name=name, scopes=[scope])
    try:
        ref = f"vault://default/prod/{name}"
        body = _create_body(vault_refs={"OPENAI_API_KEY": ref}, envs={"OPENAI_API_KEY": "x"})
        r = api.post("/sandboxes", json=body)
        assert r.status_code == 400, r.text
        assert r.json()["message"].startswith("vault_refs.OPENAI_API_KEY: "), r.text
    finally:
        vault.delete_secret(name)


def test_secret_create_refused_naming_the_field(api: httpx.Client) -> None:
    api.post("/teams", json={"name": "default"})  # idempotent, as the SDK does it
    team = _team_id(api)
    api.post(f"/teams/{team}/environments", json={"name": "prod"})
    url = f"/teams/{team}/vault/secrets"
    good = {"environment": "prod", "value": "sk-test-" + secrets.token_hex(8)}
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({**good, "value": "v" * (64 * 1024 + 1), "scopes": [{"domain_regex": "x"}]}, 413, "value: "),
        ({**good, "value": "", "scopes": [{"domain_regex": "x"}]}, 400, "value: "),
        ({**good, "scopes": [{"domain_regex": "x", "injection_type": "sigv4"}]}, 400, "scopes[0].injection_type: "),
        ({**good, "scopes": [{"domain_regex": "x", "injection_type": "header"}]}, 400, "scopes[0].header_name: "),
        ({**good, "scopes": [{"domain_regex": "("}]}, 400, "scopes[0].domain_regex: "),
    ]  # fmt: skip
    names_before = {s["name"] for s in api.get(url).json()["secrets"]}
    for body, status, prefix in cases:
        r = api.post(url, json={**body, "name": "insp-refused-" + secrets.token_hex(4)})
        assert r.status_code == status, (body.get("scopes"), r.text)
        assert r.json()["message"].startswith(prefix), r.text
        if body["value"]:
            assert str(body["value"]) not in r.text  # a value is never echoed back
    assert {s["name"] for s in api.get(url).json()["secrets"]} == names_before
