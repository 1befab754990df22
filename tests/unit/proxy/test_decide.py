"""The pure verdicts, and the L4 rule for sandboxes under inspection (all their TCP comes
to the proxy, so it must answer exactly as the firewall would have)."""

from __future__ import annotations

import pytest

from declawd.egress.httpsniff import RequestHead
from declawd.egress.policy import EgressPolicy
from declawd.egress.proxy import SandboxView, Verdict, decide_http, decide_opaque, decide_tls
from declawd.egress.proxy.decide import speaks_http
from declawd.egress.resolved import ResolvedNames
from declawd.egress.sni import ClientHello
from tests.unit.proxy.support import OPENAI, POLICY, SBX, TRANSFORM, resolved_names

OPEN = EgressPolicy.open()
OPEN_BUT = EgressPolicy.parse([], ["198.51.100.0/24"])
CIDR_AND_NAMES = EgressPolicy.parse(["203.0.113.0/24", "api.openai.com"], ["0.0.0.0/0"])
EVIL = ClientHello(sni="evil.com")


def test_cidr_allowed_destination_needs_no_name() -> None:
    view = SandboxView(SBX, CIDR_AND_NAMES)
    head = RequestHead("GET", "/", "HTTP/1.1", host=None)
    assert decide_http(head, view, ResolvedNames(), OPENAI).reason == "cidr_allowed"
    assert decide_opaque(view, ResolvedNames(), OPENAI).allowed
    assert not decide_opaque(view, ResolvedNames(), "198.51.100.7").allowed


def test_opaque_requires_a_name_still_allowed() -> None:
    resolved = ResolvedNames()
    resolved.record(SBX, "evil.com", [OPENAI], 60)
    assert decide_opaque(SandboxView(SBX, POLICY), resolved, OPENAI).reason == "opaque_not_resolved"


def test_without_inspection_names_decide_even_on_open_or_cidr_allowed_addresses() -> None:
    # Such destinations never reach the proxy of a passthrough sandbox; nothing changed.
    assert decide_tls(EVIL, SandboxView(SBX, OPEN), ResolvedNames(), OPENAI) == Verdict(
        False, "sni_not_resolved", "evil.com"
    )
    assert decide_tls(EVIL, SandboxView(SBX, CIDR_AND_NAMES), ResolvedNames(), OPENAI) == Verdict(
        False, "sni_not_allowed", "evil.com"
    )


@pytest.mark.parametrize(
    ("policy", "dst", "expected"),
    [
        (OPEN, "198.51.100.7", Verdict(True, "open", "evil.com")),
        (OPEN_BUT, "203.0.113.99", Verdict(True, "open", "evil.com")),
        (OPEN_BUT, "198.51.100.7", Verdict(False, "deny_cidr", "evil.com")),
        (CIDR_AND_NAMES, "203.0.113.99", Verdict(True, "cidr_allowed", "evil.com")),
        # Deny-all without a CIDR for it: only the name checks can allow.
        (CIDR_AND_NAMES, "198.51.100.7", Verdict(False, "sni_not_allowed", "evil.com")),
        (POLICY, OPENAI, Verdict(False, "sni_not_allowed", "evil.com")),
    ],
)
def test_under_inspection_an_address_the_firewall_decides_is_decided_so_whatever_its_name(
    policy: EgressPolicy, dst: str, expected: Verdict
) -> None:
    view = SandboxView(SBX, policy, TRANSFORM)
    assert decide_tls(EVIL, view, ResolvedNames(), dst) == expected
    head = RequestHead(
        "GET", "http://other.net/", "HTTP/1.1", host="evil.com", authority="other.net"
    )
    http = decide_http(head, view, ResolvedNames(), dst)
    assert (http.allowed, http.name) == (expected.allowed, "evil.com")
    if expected.reason in ("open", "cidr_allowed", "deny_cidr"):
        assert http.reason == expected.reason
        assert decide_opaque(view, ResolvedNames(), dst) == Verdict(
            expected.allowed, expected.reason, None
        )


def test_under_inspection_names_still_work_under_a_domain_policy() -> None:
    view = SandboxView(SBX, POLICY, TRANSFORM)
    hello = ClientHello(sni="api.openai.com")
    assert decide_tls(hello, view, resolved_names(), OPENAI).reason == "sni_allowed"
    assert decide_tls(hello, view, ResolvedNames(), OPENAI).reason == "sni_not_resolved"
    assert decide_opaque(view, resolved_names(), OPENAI).reason == "opaque_resolved"


def test_connect_is_refused_even_where_the_firewall_would_pass() -> None:
    view = SandboxView(SBX, OPEN, TRANSFORM)
    head = RequestHead("CONNECT", "x.com:443", "HTTP/1.1", host="x.com", authority="x.com")
    assert decide_http(head, view, ResolvedNames(), OPENAI) == Verdict(
        False, "connect_refused", "x.com"
    )


@pytest.mark.parametrize(
    ("alpn", "http"),
    [((), True), (("h2", "http/1.1"), True), (("http/1.1",), True), (("imap",), False)],
)
def test_speaks_http_reads_the_offered_alpn(alpn: tuple[str, ...], http: bool) -> None:
    assert speaks_http(ClientHello(sni="x.com", alpn=alpn)) is http
