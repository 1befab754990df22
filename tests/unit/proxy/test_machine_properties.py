"""Properties of the connection machine over generated event sequences: any split of a
ClientHello or an HTTP stream, interleaved with upstream events, timers, back-pressure,
early EOFs and resets. The machine never raises, never sends a client byte upstream before
its verdict (nor an unchecked request head), emits nothing after its end, and always ends."""

from __future__ import annotations

import itertools

import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from declawd.egress.proxy import Interception, SandboxView, TlsEnd
from declawd.egress.proxy import commands as cmd
from tests.unit.proxy.support import (
    OPENAI,
    POLICY,
    SBX,
    TRANSFORM,
    LayerFactory,
    Leaves,
    Replay,
    as_records,
    client_ctx,
    client_hello,
    server_ctx,
)

HELLO = as_records(client_hello("api.openai.com"), 120)
ALLOWED = b"POST /a HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 4\r\n\r\nbody"
DENIED = b"GET /b HTTP/1.1\r\nHost: evil.com\r\n\r\n"

# Weighted towards what moves a connection on (bytes, a connect), so the interesting
# orderings (a head cut while spliced, bytes while dialling) come often.
ACTIONS = st.sampled_from(
    ["client"] * 6
    + ["connect"] * 3
    + ["fail", "timer", "updata", "upeof", "eof", "blocked", "drained"]
    + ["upblocked", "updrained", "cut"]
)
ENDINGS = st.sampled_from([cmd.ClientReset(), cmd.ClientClosed(), cmd.UpstreamReset()])


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % len(data) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def run(replay: Replay, pieces: list[bytes], actions: list[str], ending: cmd.Event) -> None:
    """Play the actions as an adapter could (a connect only after a dial), then end."""
    pending = list(pieces)
    connected = client_eof = False
    for action in actions:
        dialled = bool(replay.dials())
        if action == "client" and pending and not client_eof:
            replay.send(cmd.ClientData(pending.pop(0)))
        elif action == "connect" and dialled and not connected:
            connected = True
            replay.send(cmd.UpstreamConnected())
        elif action == "fail" and dialled and not connected:
            connected = True
            replay.send(cmd.UpstreamFailed("refused"))
        elif action == "timer":
            replay.advance(60.0)
        elif action == "updata" and connected:
            replay.send(cmd.UpstreamData(b"\x17\x03\x03\x00\x01x"))
        elif action == "upeof" and connected:
            replay.send(cmd.UpstreamEof())
        elif action == "eof" and not client_eof:
            client_eof = True
            replay.send(cmd.ClientEof())
        elif action == "cut":
            replay.send(cmd.PolicyCut(lambda *_: True))
        elif action in ("blocked", "drained", "upblocked", "updrained"):
            replay.send(
                {
                    "blocked": cmd.ClientWriteBlocked(),
                    "drained": cmd.ClientWriteDrained(),
                    "upblocked": cmd.UpstreamWriteBlocked(),
                    "updrained": cmd.UpstreamWriteDrained(),
                }[action]
            )
    replay.send(ending)


def check_order(replay: Replay) -> None:
    """Upstream bytes only after an allow verdict and a dial; nothing after the end."""
    allowed = dialled = False
    ended = False
    for command in replay.log:
        assert not ended, f"{command} after the end"
        if isinstance(command, cmd.Audit) and command.verdict.allowed:
            allowed = True
        elif isinstance(command, cmd.Dial):
            assert allowed
            dialled = True
        elif isinstance(command, cmd.SendUpstream):
            assert allowed and dialled
        ended = isinstance(command, cmd.TERMINAL)
    assert replay.conn.closed and ended


@settings(max_examples=400, deadline=None)
@given(st.lists(st.integers(0, 10_000), max_size=12), st.lists(ACTIONS, max_size=40), ENDINGS)
def test_any_split_and_interleaving_of_a_hello(
    cuts: list[int], actions: list[str], ending: cmd.Event
) -> None:
    replay = Replay.of()
    run(replay, chunks(HELLO, cuts), actions, ending)
    check_order(replay)
    # Passthrough: what went upstream is a prefix of what the client sent, from its start.
    assert HELLO.startswith(replay.upstream_bytes()) or replay.upstream_bytes().startswith(HELLO)
    # Silence (or an EOF) before the first byte makes an opaque stream: L4 trust, by design.
    reasons = {r for _, r in replay.audits()}
    assert reasons <= {"sni_allowed", "opaque_resolved", "incomplete", "peek_timeout"}


@settings(max_examples=400, deadline=None)
@given(st.lists(st.integers(0, 10_000), max_size=12), st.lists(ACTIONS, max_size=40), ENDINGS)
def test_a_denied_request_head_never_goes_upstream_however_it_is_cut(
    cuts: list[int], actions: list[str], ending: cmd.Event
) -> None:
    replay = Replay.of(dst=(OPENAI, 80))
    run(replay, chunks(ALLOWED + DENIED, cuts), actions, ending)
    check_order(replay)
    audits = replay.audits()
    if audits[:1] == [("allow", "opaque_resolved")]:
        return  # silence first: an opaque stream, never parsed (L4 trust, by design)
    assert ALLOWED.startswith(replay.upstream_bytes())
    assert set(audits) <= {
        ("allow", "host_allowed"),
        ("deny", "host_not_allowed"),
        ("deny", "incomplete"),
        ("deny", "peek_timeout"),
    }


@settings(max_examples=400, deadline=None)
@given(st.lists(ACTIONS, max_size=30), ENDINGS)
def test_a_silent_client_always_ends(actions: list[str], ending: cmd.Event) -> None:
    replay = Replay.of(dst=(OPENAI, 25))
    run(replay, [], actions, ending)
    check_order(replay)


SANDBOX_CA = trustme.CA()
UPSTREAM_CA = trustme.CA()
REQUEST = b"GET / HTTP/1.1\r\nHost: api.openai.com\r\nX-Say: hello\r\n\r\n"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 100_000), max_size=16), st.booleans())
def test_an_inspected_session_is_indifferent_to_how_tls_bytes_are_cut(
    cuts: list[int], early: bool
) -> None:
    """The sandbox's flights cut anywhere (and its request sent before or after the
    upstream verified): the layer gets the request exactly once, whole."""
    factory = LayerFactory()
    replay = Replay.of(
        SandboxView(SBX, POLICY, TRANSFORM),
        interception=Interception(Leaves(SANDBOX_CA), client_ctx(UPSTREAM_CA), factory),
    )
    sandbox = TlsEnd.client(client_ctx(SANDBOX_CA), "api.openai.com")
    upstream = TlsEnd.server(server_ctx(UPSTREAM_CA, "api.openai.com"))
    sent_request = False
    done = 0
    replay.send(*[cmd.ClientData(p) for p in chunks(sandbox.pending(), cuts)])
    for _ in range(200):
        if done == len(replay.log):
            if sandbox.established and not sent_request:
                sandbox.send(REQUEST)
                sent_request = True
                replay.send(*[cmd.ClientData(p) for p in chunks(sandbox.pending(), cuts)])
                continue
            break
        command = replay.log[done]
        done += 1
        if isinstance(command, cmd.Dial):
            replay.send(cmd.UpstreamConnected())
        elif isinstance(command, cmd.SendClient):
            sandbox.feed(command.data)
            if out := sandbox.pending():
                replay.send(*[cmd.ClientData(p) for p in chunks(out, cuts)])
            if early and sandbox.established and not sent_request:
                sandbox.send(REQUEST)
                sent_request = True
                replay.send(*[cmd.ClientData(p) for p in chunks(sandbox.pending(), cuts)])
        elif isinstance(command, cmd.SendUpstream):
            upstream.feed(command.data)
            if out := upstream.pending():
                replay.send(cmd.UpstreamData(out))
    (layer,) = factory.made
    assert bytes(layer.seen_up) == REQUEST
    assert not replay.conn.closed
    replay.send(cmd.ClientReset())
    check_order(replay)
