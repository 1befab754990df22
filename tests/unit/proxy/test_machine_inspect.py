"""Inspected connections replayed without sockets: the sandbox and the upstream are real
TLS ends in memory (trustme certificates), bytes moved between them and the machine by hand,
and a fake HTTP layer in the middle."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

import pytest
import trustme

from declawd.egress.policy import EgressPolicy
from declawd.egress.proxy import Interception, SandboxView, TlsEnd, TlsFailure, Verdict
from declawd.egress.proxy import commands as cmd
from declawd.inspect import model
from declawd.inspect.model import InspectContext, InspectionPolicy, VaultBinding, VaultScope
from tests.unit.proxy.support import (
    ALPN,
    OPENAI,
    POLICY,
    SBX,
    TRANSFORM,
    FakeLayer,
    LayerFactory,
    Leaves,
    Replay,
    client_ctx,
    server_ctx,
)

HOST = "api.openai.com"
REQUEST = b"GET / HTTP/1.1\r\nHost: api.openai.com\r\nX-Say: hello\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Wire:
    """A sandbox TLS client and an upstream TLS server around one machine."""

    replay: Replay
    sandbox: TlsEnd
    upstream: TlsEnd | None
    connect: bool = True
    to_sandbox: bytearray = field(default_factory=bytearray)
    to_upstream: bytearray = field(default_factory=bytearray)
    upstream_failure: TlsFailure | None = None
    sandbox_failure: TlsFailure | None = None
    done: int = 0

    def start(self) -> None:
        self.replay.send(cmd.ClientData(self.sandbox.pending()))
        self.pump()

    def pump(self) -> None:
        """Deliver every command's bytes to its peer, and their answers back, until quiet."""
        while self.done < len(self.replay.log):
            command = self.replay.log[self.done]
            self.done += 1
            if isinstance(command, cmd.Dial):
                self.replay.send(
                    cmd.UpstreamConnected() if self.connect else cmd.UpstreamFailed("refused")
                )
            elif isinstance(command, cmd.SendClient):
                try:
                    self.to_sandbox += self.sandbox.feed(command.data)
                except TlsFailure as failure:
                    self.sandbox_failure = failure
                if out := self.sandbox.pending():
                    self.replay.send(cmd.ClientData(out))
            elif isinstance(command, cmd.SendUpstream) and self.upstream is not None:
                try:
                    self.to_upstream += self.upstream.feed(command.data)
                except TlsFailure as failure:
                    self.upstream_failure = failure
                if out := self.upstream.pending():
                    self.replay.send(cmd.UpstreamData(out))

    def sandbox_sends(self, data: bytes) -> None:
        self.sandbox.send(data)
        self.replay.send(cmd.ClientData(self.sandbox.pending()))
        self.pump()

    def upstream_sends(self, data: bytes) -> None:
        assert self.upstream is not None
        self.upstream.send(data)
        self.replay.send(cmd.UpstreamData(self.upstream.pending()))
        self.pump()


def inspected(
    sandbox_ca: trustme.CA,
    upstream_ca: trustme.CA,
    *,
    inspection: InspectionPolicy = TRANSFORM,
    policy: EgressPolicy = POLICY,
    dst: tuple[str, int] = (OPENAI, 443),
    sandbox_alpn: list[str] | None = None,
    upstream_alpn: list[str] | None = None,
    upstream_cert_hosts: tuple[str, ...] = (HOST,),
    trusted_upstream: bool = True,
    connect: bool = True,
    layer: LayerFactory | None = None,
) -> tuple[Wire, LayerFactory, Leaves]:
    factory = layer or LayerFactory()
    leaves = Leaves(sandbox_ca)
    verify = client_ctx(upstream_ca if trusted_upstream else trustme.CA())
    interception = Interception(leaves, verify, factory)
    verify.set_alpn_protocols(ALPN)  # what SniProxy does with the context it is given
    replay = Replay.of(SandboxView(SBX, policy, inspection), dst=dst, interception=interception)
    sandbox = TlsEnd.client(client_ctx(sandbox_ca, sandbox_alpn), HOST)
    upstream = TlsEnd.server(server_ctx(upstream_ca, *upstream_cert_hosts, alpn=upstream_alpn))
    wire = Wire(replay, sandbox, upstream, connect=connect)
    wire.start()
    return wire, factory, leaves


def test_an_inspected_request_goes_through_the_layer_both_ways(
    sandbox_ca: trustme.CA, upstream_ca: trustme.CA
) -> None:
    wire, factory, leaves = inspected(sandbox_ca, upstream_ca)
    assert wire.sandbox.established and wire.upstream is not None and wire.upstream.established
    assert leaves.asked == [(SBX, HOST)]
    assert wire.replay.dials() == [cmd.Dial(OPENAI, 443, tls=True)]
    (layer,) = factory.made
    assert layer.context == InspectContext(SBX, HOST, "https", OPENAI, 443, "h1", "h1", None)
    assert layer.policy == TRANSFORM
    wire.sandbox_sends(REQUEST)
    assert bytes(wire.to_upstream) == REQUEST.replace(b"hello", b"HELLO")
    wire.upstream_sends(RESPONSE)
    assert bytes(wire.to_sandbox) == RESPONSE
    assert wire.replay.audits() == [("allow", "sni_allowed")]
    http = [c.audit for c in wire.replay.log if isinstance(c, cmd.AuditHttp)]
    assert http == [model.HttpAudit({"url": f"https://{HOST}/"})]


def test_the_layer_learns_each_sides_alpn(sandbox_ca: trustme.CA, upstream_ca: trustme.CA) -> None:
    wire, factory, _ = inspected(
        sandbox_ca, upstream_ca, sandbox_alpn=ALPN, upstream_alpn=["http/1.1"]
    )
    assert wire.sandbox.alpn == "h2"
    assert (factory.made[0].context.client_proto, factory.made[0].context.upstream_proto) == (
        "h2",
        "h1",
    )
    wire, factory, _ = inspected(
        sandbox_ca, upstream_ca, sandbox_alpn=["http/1.1"], upstream_alpn=ALPN
    )
    assert (factory.made[0].context.client_proto, factory.made[0].context.upstream_proto) == (
        "h1",
        "h2",
    )


@pytest.mark.parametrize(
    ("trusted", "hosts", "detail"),
    [
        (False, (HOST,), "unable to get local issuer certificate"),
        (True, ("other.example.org",), "Hostname mismatch"),
    ],
)
def test_an_upstream_whose_certificate_does_not_verify_gets_the_sandbox_a_502(
    sandbox_ca: trustme.CA,
    upstream_ca: trustme.CA,
    trusted: bool,
    hosts: tuple[str, ...],
    detail: str,
) -> None:
    wire, factory, _ = inspected(
        sandbox_ca, upstream_ca, trusted_upstream=trusted, upstream_cert_hosts=hosts
    )
    assert wire.sandbox.established  # the sandbox side still completes, with our leaf
    assert cmd.DropUpstream() in wire.replay.log
    assert wire.upstream_failure is not None  # our alert reached it
    (layer,) = factory.made
    assert layer.context.upstream_proto is None
    assert layer.context.upstream_error is not None
    assert layer.context.upstream_error.startswith("certificate verify failed: ")
    assert detail in layer.context.upstream_error
    assert wire.replay.audits() == [("allow", "sni_allowed"), ("deny", "upstream_tls_failed")]
    sent_up = len(wire.to_upstream)
    wire.sandbox_sends(REQUEST)
    assert bytes(wire.to_sandbox).startswith(b"HTTP/1.1 502 Bad Gateway")
    assert len(wire.to_upstream) == sent_up == 0  # never a byte of plaintext upstream
    assert wire.replay.log[-1] == cmd.CloseBoth()
    assert wire.sandbox.peer_closed  # close_notify, then FIN


def test_an_unreachable_upstream_gets_the_sandbox_a_502(
    sandbox_ca: trustme.CA, upstream_ca: trustme.CA
) -> None:
    wire, factory, _ = inspected(sandbox_ca, upstream_ca, connect=False)
    assert factory.made[0].context.upstream_error == "upstream unreachable: refused"
    assert wire.replay.audits()[-1] == ("deny", "upstream_unreachable")
    wire.sandbox_sends(REQUEST)
    assert b"upstream unreachable: refused" in wire.to_sandbox


def test_the_request_sent_before_the_upstream_verified_waits_for_the_layer(
    sandbox_ca: trustme.CA, upstream_ca: trustme.CA
) -> None:
    factory = LayerFactory()
    replay = Replay.of(
        SandboxView(SBX, POLICY, TRANSFORM),
        interception=Interception(Leaves(sandbox_ca), client_ctx(upstream_ca), factory),
    )
    sandbox = TlsEnd.client(client_ctx(sandbox_ca), HOST)
    wire = Wire(replay, sandbox, None)  # the upstream never answers its ClientHello
    wire.start()
    assert sandbox.established and factory.made == []
    assert cmd.PauseClient() in replay.log
    wire.sandbox_sends(REQUEST)
    assert factory.made == []
    assert replay.advance(10.0)[0] == cmd.Audit(Verdict(False, "upstream_tls_failed", HOST))
    (layer,) = factory.made
    assert layer.context.upstream_error == "upstream TLS handshake timed out"
    assert bytes(layer.seen_up) == REQUEST  # held, then given in one piece


def test_a_sandbox_that_never_finishes_its_handshake_is_reset_at_the_budget(
    sandbox_ca: trustme.CA, upstream_ca: trustme.CA
) -> None:
    replay = Replay.of(
        SandboxView(SBX, POLICY, TRANSFORM),
        interception=Interception(Leaves(sandbox_ca), client_ctx(upstream_ca), LayerFactory()),
    )
    sandbox = TlsEnd.client(client_ctx(sandbox_ca), HOST)
    replay.send(cmd.ClientData(sandbox.pending()))  # the hello, then silence
    assert replay.advance(9.9) == []
    assert replay.advance(0.1) == [
        cmd.Audit(Verdict(False, "tls_handshake_timeout", HOST)),
        cmd.ResetBoth(),
    ]


def test_a_sandbox_that_does_not_trust_our_leaf_is_audited(
    sandbox_ca: trustme.CA, upstream_ca: trustme.CA
) -> None:
    replay = Replay.of(
        SandboxView(SBX, POLICY, TRANSFORM),
        interception=Interception(Leaves(sandbox_ca), client_ctx(upstream_ca), LayerFactory()),
    )
    wire = Wire(replay, TlsEnd.client(client_ctx(upstream_ca), HOST), None)
    wire.start()
    assert wire.sandbox_failure is not None and wire.sandbox_failure.verify
    assert replay.audits()[-1] == ("deny", "client_tls_failed")
    assert replay.conn.closed


@pytest.mark.parametrize(
    ("inspection", "alpn", "why"),
    [
        (InspectionPolicy(), None, "nothing to inspect"),
        (
            InspectionPolicy(
                vault=(VaultBinding("K", "s1", "vault://t/e/k", (VaultScope("x\\.com"),)),)
            ),
            None,
            "no scope matches",
        ),
        (TRANSFORM, ["imap"], "not HTTP"),
    ],
)
def test_connections_nothing_applies_to_stay_passthrough_without_tls_objects(
    sandbox_ca: trustme.CA,
    upstream_ca: trustme.CA,
    inspection: InspectionPolicy,
    alpn: list[str] | None,
    why: str,
) -> None:
    factory = LayerFactory()
    replay = Replay.of(
        SandboxView(SBX, POLICY, inspection),
        interception=Interception(Leaves(sandbox_ca), client_ctx(upstream_ca), factory),
    )
    hello = TlsEnd.client(client_ctx(sandbox_ca, alpn), HOST).pending()
    replay.send(cmd.ClientData(hello), cmd.UpstreamConnected())
    assert replay.dials() == [cmd.Dial(OPENAI, 443, tls=False)], why
    assert replay.upstream_bytes() == hello
    assert replay.conn.session is None and factory.made == []


def test_a_vault_scope_matching_the_sni_is_inspected(
    sandbox_ca: trustme.CA, upstream_ca: trustme.CA
) -> None:
    vault = InspectionPolicy(
        vault=(VaultBinding("K", "s1", "vault://t/e/k", (VaultScope(r"api\.openai\.com"),)),)
    )
    _, factory, _ = inspected(sandbox_ca, upstream_ca, inspection=vault)
    assert [layer.context.host for layer in factory.made] == [HOST]


def test_an_open_policy_under_inspection_intercepts_any_name(
    sandbox_ca: trustme.CA, upstream_ca: trustme.CA
) -> None:
    wire, factory, _ = inspected(
        sandbox_ca, upstream_ca, policy=EgressPolicy.open(), dst=("198.51.100.7", 8443)
    )
    assert wire.replay.audits() == [("allow", "open")]
    assert factory.made[0].context.dst_port == 8443


def test_a_layer_that_raises_resets_only_its_connection(
    sandbox_ca: trustme.CA, upstream_ca: trustme.CA
) -> None:
    class Broken(FakeLayer):
        def client_data(self, data: bytes) -> list[model.HttpCommand]:
            raise RuntimeError("bug")

    class BrokenFactory(LayerFactory):
        def __call__(self, context: InspectContext, policy: InspectionPolicy) -> FakeLayer:
            return Broken(context, policy)

    wire, _, _ = inspected(sandbox_ca, upstream_ca, layer=BrokenFactory())
    wire.sandbox_sends(REQUEST)
    assert wire.replay.audits()[-1] == ("deny", "inspect_error")
    assert wire.replay.log[-1] == cmd.ResetBoth()


def test_the_layers_reset_is_audited_with_its_reason(
    sandbox_ca: trustme.CA, upstream_ca: trustme.CA
) -> None:
    class Refusing(FakeLayer):
        def client_data(self, data: bytes) -> list[model.HttpCommand]:
            return [model.ResetBoth("host_mismatch")]

    class RefusingFactory(LayerFactory):
        def __call__(self, context: InspectContext, policy: InspectionPolicy) -> FakeLayer:
            return Refusing(context, policy)

    wire, _, _ = inspected(sandbox_ca, upstream_ca, layer=RefusingFactory())
    wire.sandbox_sends(REQUEST)
    assert wire.replay.log[-2:] == [
        cmd.Audit(Verdict(False, "host_mismatch", HOST)),
        cmd.ResetBoth(),
    ]


def test_eofs_reach_the_layer_and_the_connection_closes_after_both(
    sandbox_ca: trustme.CA, upstream_ca: trustme.CA
) -> None:
    wire, factory, _ = inspected(sandbox_ca, upstream_ca)
    wire.sandbox_sends(REQUEST)
    wire.sandbox.close()
    wire.replay.send(cmd.ClientData(wire.sandbox.pending()))  # close_notify
    wire.pump()
    (layer,) = factory.made
    assert layer.eofs == ["client"]
    assert cmd.SendUpstreamEof() in wire.replay.log  # the fake layer's CloseUpstream
    assert not wire.replay.conn.closed  # the response may still come
    wire.upstream_sends(RESPONSE)
    wire.replay.send(cmd.UpstreamEof())
    assert layer.eofs == ["client", "upstream"]
    assert bytes(wire.to_sandbox) == RESPONSE
    assert wire.replay.conn.closed


# Plain HTTP --------------------------------------------------------------------------


def plain_http(factory: LayerFactory) -> Replay:
    return Replay.of(
        SandboxView(SBX, POLICY, TRANSFORM),
        dst=(OPENAI, 80),
        interception=Interception(http_layer=factory),
    )


def test_plain_http_goes_to_the_layer_with_each_head_checked_first() -> None:
    factory = LayerFactory()
    replay = plain_http(factory)
    replay.send(cmd.ClientData(REQUEST))
    assert replay.dials() == [cmd.Dial(OPENAI, 80, tls=False)]
    assert factory.made == []
    replay.send(cmd.UpstreamConnected())
    (layer,) = factory.made
    assert layer.context == InspectContext(SBX, HOST, "http", OPENAI, 80, "h1", "h1", None)
    assert replay.upstream_bytes() == REQUEST.replace(b"hello", b"HELLO")
    denied = b"GET / HTTP/1.1\r\nHost: evil.com\r\n\r\n"
    replay.send(cmd.ClientData(denied[:10]))
    replay.send(cmd.ClientData(denied[10:]))
    assert bytes(layer.seen_up) == REQUEST  # the denied head never reached the layer
    assert replay.audits() == [("allow", "host_allowed"), ("deny", "host_not_allowed")]
    assert replay.log[-1] == cmd.ResetBoth()


def test_plain_http_to_an_unreachable_upstream_is_answered_502_by_the_layer() -> None:
    factory = LayerFactory()
    replay = plain_http(factory)
    replay.send(cmd.ClientData(REQUEST), cmd.UpstreamFailed("connection refused"))
    assert factory.made[0].context.upstream_error == "upstream unreachable: connection refused"
    assert replay.client_bytes().startswith(b"HTTP/1.1 502 Bad Gateway")
    assert replay.audits() == [("allow", "host_allowed"), ("deny", "upstream_unreachable")]


def test_plain_http_to_a_vault_host_is_not_inspected_unless_the_operator_allows_it() -> None:
    scope = (VaultBinding("K", "s1", "vault://t/e/k", (VaultScope(r"api\.openai\.com"),)),)
    for plain_ok, inspected_ in ((False, False), (True, True)):
        factory = LayerFactory()
        replay = Replay.of(
            SandboxView(SBX, POLICY, InspectionPolicy(vault=scope, vault_plain_http=plain_ok)),
            dst=(OPENAI, 80),
            interception=Interception(http_layer=factory),
        )
        replay.send(cmd.ClientData(REQUEST), cmd.UpstreamConnected())
        assert bool(factory.made) is inspected_


def test_interception_needs_all_three_parts_for_tls(sandbox_ca: trustme.CA) -> None:
    factory = LayerFactory()
    replay = Replay.of(
        SandboxView(SBX, POLICY, TRANSFORM),
        interception=Interception(Leaves(sandbox_ca), None, factory),
    )
    replay.send(cmd.ClientData(TlsEnd.client(ssl.create_default_context(), HOST).pending()))
    assert replay.dials() == [cmd.Dial(OPENAI, 443, tls=False)]


@dataclass
class BackloggedLayer(FakeLayer):
    """A layer that reports bytes held for a peer whose h2 window is shut."""

    upstream_backlog: int = 0
    client_backlog: int = 0


@dataclass
class BackloggedFactory(LayerFactory):
    def __call__(self, context: InspectContext, policy: InspectionPolicy) -> FakeLayer:
        layer = BackloggedLayer(context, policy)
        self.made.append(layer)
        return layer


def test_a_peer_that_keeps_its_window_shut_stops_the_other_side_being_read() -> None:
    """Beyond the limit the machine stops reading the side that sends to the shut peer, and
    reads it again once the backlog drains."""
    factory = BackloggedFactory()
    replay = plain_http(factory)
    replay.send(cmd.ClientData(REQUEST), cmd.UpstreamConnected())
    (layer,) = factory.made
    assert isinstance(layer, BackloggedLayer)
    layer.upstream_backlog = 2 << 20  # the sandbox uploads, the upstream's window is shut
    assert cmd.PauseClient() in replay.send(cmd.UpstreamData(b"a"))
    layer.upstream_backlog = 0
    assert cmd.ResumeClient() in replay.send(cmd.UpstreamData(b"b"))
    layer.client_backlog = 2 << 20  # the upstream sends, the sandbox's window is shut
    assert cmd.PauseUpstream() in replay.send(cmd.UpstreamData(b"c"))
    layer.client_backlog = 0
    assert cmd.ResumeUpstream() in replay.send(cmd.UpstreamData(b"d"))
