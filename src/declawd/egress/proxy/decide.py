"""The proxy's verdicts: pure functions of what the client sent, the sandbox's policy and its
own DNS answers. No I/O.

Invariant: a name the server will route by (SNI, Host, absolute-form target) is allowed only
if the policy allows it and this sandbox resolved the original destination for it; for a
sandbox under inspection (all its TCP comes here) an address the L4 firewall would accept or
refuse gets exactly that answer, whatever its name.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from declawd.egress.httpsniff import RequestHead
from declawd.egress.policy import EgressPolicy
from declawd.egress.resolved import ResolvedNames
from declawd.egress.sni import ClientHello, is_ip_literal
from declawd.inspect.model import InspectionPolicy

# ALPN ids of the protocols an inspected connection can carry; a client offering only
# others (imap, xmpp, dot...) speaks something the HTTP layer cannot read.
HTTP_ALPN = frozenset({"h2", "http/1.1", "http/1.0"})


@dataclass(frozen=True)
class SandboxView:
    """What the proxy needs to know about the sandbox behind a source address."""

    sandbox_id: str
    policy: EgressPolicy
    inspection: InspectionPolicy = field(default_factory=InspectionPolicy)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str
    name: str | None = None
    # A custom policy's deny messages (reason `custom_policy`), for the audit event.
    messages: tuple[str, ...] = ()


def _l4_verdict(view: SandboxView, dst_ip: str, name: str | None) -> Verdict | None:
    """The firewall's answer for a sandbox whose every TCP flow is redirected here (its
    policy needs inspection): None when only a name can decide (a deny-all policy)."""
    if not view.inspection.active:
        return None
    policy = view.policy
    l4 = policy.allows_address(dst_ip)
    if l4 is True:
        addr = ipaddress.ip_address(dst_ip)
        by_cidr = any(addr in n for n in policy.allow_cidrs_v4)
        return Verdict(True, "cidr_allowed" if by_cidr else "open", name)
    if l4 is False and policy.default_allows:
        return Verdict(False, "deny_cidr", name)  # nft's reason for the same refusal
    return None


def _name_verdict(
    name: str | None, kind: str, view: SandboxView, resolved: ResolvedNames, dst_ip: str
) -> Verdict:
    """Reasons read `no_<kind>`, `ip_literal_<kind>`, `<kind>_not_allowed`, `<kind>_not_resolved`."""
    if name is None or is_ip_literal(name):
        # Without a usable name only a CIDR rule could allow the address (those
        # normally bypass the proxy entirely).
        if view.policy.allows_address(dst_ip) is True:
            return Verdict(True, "cidr_allowed", name)
        return Verdict(False, f"no_{kind}" if name is None else f"ip_literal_{kind}", name)
    if not view.policy.name_allowed(name):
        return Verdict(False, f"{kind}_not_allowed", name)
    if not resolved.resolved_for(view.sandbox_id, name, dst_ip):
        return Verdict(False, f"{kind}_not_resolved", name)
    return Verdict(True, f"{kind}_allowed", name)


def decide_tls(
    hello: ClientHello, view: SandboxView, resolved: ResolvedNames, dst_ip: str
) -> Verdict:
    return _l4_verdict(view, dst_ip, hello.sni) or _name_verdict(
        hello.sni, "sni", view, resolved, dst_ip
    )


def decide_http(
    head: RequestHead, view: SandboxView, resolved: ResolvedNames, dst_ip: str
) -> Verdict:
    if head.is_connect:
        # Even where L4 would pass: a tunnel would carry traffic past inspection.
        return Verdict(False, "connect_refused", head.authority)
    l4 = _l4_verdict(view, dst_ip, head.host)
    if l4 is not None:
        return l4
    verdict = _name_verdict(head.host, "host", view, resolved, dst_ip)
    if not verdict.allowed or head.authority is None or head.authority == head.host:
        return verdict
    # An absolute-form target wins over Host at the server: it must pass on its own.
    verdict = _name_verdict(head.authority, "absolute_form", view, resolved, dst_ip)
    return Verdict(True, "host_allowed", head.host) if verdict.allowed else verdict


def decide_opaque(view: SandboxView, resolved: ResolvedNames, dst_ip: str) -> Verdict:
    """L4 trust: neither TLS nor HTTP passes only to an address resolved for an allowed name."""
    l4 = _l4_verdict(view, dst_ip, None)
    if l4 is not None:
        return l4
    name = resolved.any_allowed_name_for(view.sandbox_id, dst_ip, view.policy.name_allowed)
    if name is not None:
        return Verdict(True, "opaque_resolved", name)
    if view.policy.allows_address(dst_ip) is True:
        return Verdict(True, "cidr_allowed", None)
    return Verdict(False, "opaque_not_resolved", None)


def speaks_http(hello: ClientHello) -> bool:
    """Whether the client may speak HTTP over this TLS connection (no ALPN: it may)."""
    return not hello.alpn or any(p in HTTP_ALPN for p in hello.alpn)
