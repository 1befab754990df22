"""Vault injection, scrubbing and audit masking (declaw-api.md §12.2), pure and on the wire."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import pytest

from declawd.inspect.exchange import Exchange
from declawd.inspect.messages import RequestHead
from declawd.inspect.model import PLACEHOLDER, InspectionPolicy, VaultBinding, VaultScope
from declawd.inspect.pipeline import Pipeline
from declawd.inspect.vaultinject import Scrubber, inject, mask_url, request_host, set_query
from tests.unit.inspect.httpwire import Resp, Secrets, Seen, Wire, ctx

SECRET = "sk-live/4f+9=abc"


def policy(*scopes: VaultScope, **kw: object) -> InspectionPolicy:
    binding = VaultBinding("OPENAI_API_KEY", "sec-1", "vault://t/prod/openai", tuple(scopes))
    return InspectionPolicy(vault=(binding,), **kw)  # type: ignore[arg-type]


def run(scope: VaultScope, headers: list[tuple[str, str]], target: str = "/v1", **kw: object):
    c = ctx(host=str(kw.pop("host", "api.example.com")), scheme=str(kw.pop("scheme", "https")))
    return inject(
        target,
        headers,
        authority=str(kw.pop("authority", "api.example.com")),
        ctx=c,
        policy=policy(scope, **kw),
        secrets=Secrets({"sec-1": SECRET}),
    )


PLACEHOLDER_AUTH = [("authorization", f"Bearer {PLACEHOLDER}"), ("accept", "*/*")]


def test_bearer_replaces_the_placeholder() -> None:
    r = run(VaultScope(r"api\.example\.com"), PLACEHOLDER_AUTH)
    assert r.headers == [("accept", "*/*"), ("authorization", f"Bearer {SECRET}")]
    assert r.count == 1
    assert r.injected == (SECRET,)


def test_empty_injection_type_is_bearer() -> None:
    r = run(VaultScope(r"api\.example\.com", injection_type=""), [])
    assert r.headers == [("authorization", f"Bearer {SECRET}")]


def test_header_with_prefix_and_extra_headers() -> None:
    scope = VaultScope(
        r".*\.example\.com",
        injection_type="header",
        header_name="X-Api-Key",
        value_prefix="Key ",
        extra_headers={"Anthropic-Version": "2023-06-01"},
    )
    r = run(scope, [("x-api-key", PLACEHOLDER), ("anthropic-version", "old")])
    assert r.headers == [("x-api-key", f"Key {SECRET}"), ("anthropic-version", "2023-06-01")]


def test_basic_is_base64_of_user_and_secret() -> None:
    r = run(VaultScope(r"api\.example\.com", injection_type="basic", basic_username="bob"), [])
    token = base64.b64encode(f"bob:{SECRET}".encode()).decode()
    assert r.headers == [("authorization", f"Basic {token}")]


def test_query_sets_params_with_template_or_value() -> None:
    scope = VaultScope(
        r"api\.example\.com",
        injection_type="query",
        query_params={"key": "", "auth": "token {value}", "sig": "{secret}!"},
    )
    r = run(scope, [], target=f"/v1?a=1&key={PLACEHOLDER}&b=2&key=again")
    enc = quote(SECRET, safe="")
    assert r.target == (
        f"/v1?a=1&key={enc}&b=2&auth={quote('token ' + SECRET, safe='')}&sig={enc}%21"
    )
    assert r.headers == []
    assert r.count == 1


def test_scope_must_fully_match_the_connection_host() -> None:
    r = run(VaultScope(r"example\.com"), PLACEHOLDER_AUTH)
    assert r.headers == PLACEHOLDER_AUTH
    assert r.count == 0
    assert not r.scrubber


def test_placeholder_to_a_host_other_than_the_verified_one_goes_unchanged() -> None:
    # The scope matches the TLS host, but the request's Host names another site.
    r = run(VaultScope(r"api\.example\.com"), PLACEHOLDER_AUTH, authority="evil.example.org")
    assert r.headers == PLACEHOLDER_AUTH
    assert r.count == 0
    assert r.scrubber  # what comes back is still scrubbed


def test_host_port_and_case_are_ignored() -> None:
    r = run(VaultScope(r"api\.example\.com"), [], authority="API.Example.com:443")
    assert r.count == 1
    assert request_host("[::1]:8443") == "::1"
    assert request_host("Example.COM.") == "example.com"


def test_plain_http_only_when_the_operator_allows_it() -> None:
    scope = VaultScope(r"api\.example\.com")
    assert run(scope, [], scheme="http").count == 0
    assert run(scope, [], scheme="http", vault_plain_http=True).count == 1


def test_a_deleted_secret_is_skipped() -> None:
    c = ctx()
    r = inject(
        "/",
        [],
        authority="api.example.com",
        ctx=c,
        policy=policy(VaultScope(r"api\.example\.com")),
        secrets=Secrets({}),
    )
    assert (r.count, r.headers) == (0, [])


def test_a_value_that_cannot_be_a_header_is_not_injected() -> None:
    c = ctx()
    r = inject(
        "/",
        PLACEHOLDER_AUTH,
        authority="api.example.com",
        ctx=c,
        policy=policy(VaultScope(r"api\.example\.com")),
        secrets=Secrets({"sec-1": "abc\r\nX-Evil: 1"}),
    )
    assert (r.count, r.headers) == (0, PLACEHOLDER_AUTH)


def test_result_repr_holds_no_secret() -> None:
    r = run(VaultScope(r"api\.example\.com", injection_type="basic", basic_username="u"), [])
    assert SECRET not in repr(r)
    assert SECRET not in repr(r.scrubber)


def test_set_query_keeps_other_params_byte_for_byte() -> None:
    assert set_query("/p?x=%2F+y&k=1", {"k": "v w"}) == "/p?x=%2F+y&k=v%20w"
    assert set_query("/p", {"k": "v"}) == "/p?k=v"


# Scrubbing -----------------------------------------------------------------------------


def test_scrub_replaces_plain_urlencoded_and_basic_forms() -> None:
    scope = VaultScope(r"api\.example\.com", injection_type="basic", basic_username="bob")
    s = run(scope, []).scrubber
    b64 = base64.b64encode(f"bob:{SECRET}".encode()).decode()
    text = f"a {SECRET} b {quote(SECRET, safe='')} c {b64} d"
    assert s.apply(text) == f"a {PLACEHOLDER} b {PLACEHOLDER} c {PLACEHOLDER} d"
    assert s.headers([("x-echo", SECRET)]) == [("x-echo", PLACEHOLDER)]


@pytest.mark.parametrize("cut", range(1, 25))
def test_stream_scrub_catches_a_secret_split_anywhere(cut: int) -> None:
    s = Scrubber([SECRET])
    text = f"xx {SECRET} yy {SECRET}"
    stream = s.stream()
    out = [stream.feed(text[:cut]), stream.feed(text[cut:]), stream.flush()]
    assert "".join(out) == f"xx {PLACEHOLDER} yy {PLACEHOLDER}"
    assert all(SECRET not in part for part in out)


def test_stream_scrub_holds_back_less_than_a_secret() -> None:
    stream = Scrubber([SECRET]).stream()
    released = stream.feed("hello world, this is long enough")
    assert released == "hello world, this is long enough"[: -(len(SECRET) - 1)]


# Audit URLs ----------------------------------------------------------------------------


def test_mask_url_hides_injected_and_masked_values() -> None:
    pol = InspectionPolicy(masked_values=("hunter22", "1"))
    url = f"https://h/p?key={quote(SECRET, safe='')}&pw=hunter22&n=1&q=x-hunter22-y&z=11"
    assert mask_url(url, pol, [SECRET]) == "https://h/p?key=***&pw=***&n=***&q=***&z=11"
    assert mask_url("https://h/hunter22/x", pol, []) == "https://h/***/x"


# On the wire ---------------------------------------------------------------------------


def echo_headers(seen: Seen) -> Resp:
    body = json.dumps({"headers": dict(seen.headers), "url": seen.target}).encode()
    return Resp(
        200,
        [("content-type", "application/json"), ("x-seen", seen.header("authorization") or "")],
        body,
    )


@pytest.mark.parametrize("client,upstream", [("h1", "h1"), ("h2", "h2"), ("h2", "h1")])
def test_secret_reaches_the_upstream_and_its_echo_never_the_sandbox(
    client: str, upstream: str
) -> None:
    scope = VaultScope(r"api\.example\.com", injection_type="basic", basic_username="bob")
    w = Wire(
        ctx(client, upstream),
        policy(scope),
        secrets=Secrets({"sec-1": SECRET}),
        handler=echo_headers,
    )
    got = w.client.request("GET", "/v1/me", [("authorization", f"Basic {PLACEHOLDER}")])
    w.pump()
    b64 = base64.b64encode(f"bob:{SECRET}".encode()).decode()
    assert w.upstream.seen[0].header("authorization") == f"Basic {b64}"
    assert got.status == 200 and got.ended
    assert got.header("x-seen") == f"Basic {PLACEHOLDER}"
    assert got.json()["headers"]["authorization"] == f"Basic {PLACEHOLDER}"  # type: ignore[index]
    [audit] = w.audits
    assert audit.record["vault_injections"] == 1
    raw = json.dumps(audit.record)
    assert SECRET not in raw and b64 not in raw


def test_query_secret_is_masked_in_the_audit_url() -> None:
    scope = VaultScope(r"api\.example\.com", injection_type="query", query_params={"key": ""})
    w = Wire(ctx(), policy(scope), secrets=Secrets({"sec-1": SECRET}), handler=echo_headers)
    w.client.request("GET", f"/v1?key={PLACEHOLDER}&x=1", [])
    w.pump()
    assert w.upstream.seen[0].target == f"/v1?key={quote(SECRET, safe='')}&x=1"
    assert w.audits[0].record["url"] == "https://api.example.com/v1?key=***&x=1"


def test_placeholder_to_a_host_outside_the_scope_goes_out_as_the_placeholder() -> None:
    w = Wire(
        ctx(host="other.example.net"),
        policy(VaultScope(r"api\.example\.com")),
        secrets=Secrets({"sec-1": SECRET}),
        handler=echo_headers,
    )
    w.client.request(
        "GET", "/", [("authorization", f"Bearer {PLACEHOLDER}")], host="other.example.net"
    )
    w.pump()
    assert w.upstream.seen[0].header("authorization") == f"Bearer {PLACEHOLDER}"
    assert w.audits[0].record["vault_injections"] == 0


def test_nothing_that_carries_the_injected_request_shows_the_secret_in_repr() -> None:
    scope = VaultScope(r"api\.example\.com", injection_type="query", query_params={"k": ""})
    pipeline = Pipeline(ctx(), policy(scope), Secrets({"sec-1": SECRET}))
    head = RequestHead("GET", "https", "api.example.com", "/v1?k=x", [("authorization", "x")])
    state, sent = pipeline.request(head)
    assert quote(SECRET, safe="") in sent.target
    x = Exchange(1, head, 0.0, state=state, request=sent)
    for obj in (state, sent, x):
        assert SECRET not in repr(obj) and quote(SECRET, safe="") not in repr(obj)
