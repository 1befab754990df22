"""The connection machine replayed without sockets: passthrough phases, every refusal
reason, both clocks on a fake clock, EOFs and resets at each phase, back-pressure."""

from __future__ import annotations

import pytest

from declawd.egress.proxy import SandboxView, Verdict
from declawd.egress.proxy import commands as cmd
from declawd.egress.sni import MAX_PEEK_BYTES
from tests.unit.proxy.support import (
    OPENAI,
    OTHER,
    POLICY,
    SBX,
    UNRESOLVED,
    Replay,
    as_records,
    client_hello,
)

HELLO = client_hello("api.openai.com")
GET_A = b"GET /a HTTP/1.1\r\nHost: api.openai.com\r\n\r\n"


def allowed_tls() -> Replay:
    replay = Replay.of()
    replay.send(cmd.ClientData(HELLO))
    return replay


# TLS ---------------------------------------------------------------------------------


def test_an_allowed_hello_is_dialled_then_spliced_then_closed_after_both_eofs() -> None:
    replay = Replay.of()
    assert replay.log == [cmd.ArmTimer(cmd.PEEK, 2.0)]
    assert replay.send(cmd.ClientData(HELLO)) == [
        cmd.Audit(Verdict(True, "sni_allowed", "api.openai.com")),
        cmd.CancelTimer(),
        cmd.PauseClient(),
        cmd.Dial(OPENAI, 443, tls=False),
    ]
    assert replay.send(cmd.UpstreamConnected()) == [cmd.SendUpstream(HELLO), cmd.ResumeClient()]
    assert replay.send(cmd.UpstreamData(b"srv")) == [cmd.SendClient(b"srv")]
    assert replay.send(cmd.ClientData(b"app")) == [cmd.SendUpstream(b"app")]
    assert replay.send(cmd.ClientEof()) == [cmd.SendUpstreamEof()]
    assert replay.send(cmd.UpstreamData(b"late")) == [cmd.SendClient(b"late")]
    assert replay.send(cmd.UpstreamEof()) == [cmd.SendClientEof(), cmd.CloseBoth()]
    assert replay.conn.closed
    assert replay.send(cmd.ClientData(b"x"), cmd.ClientClosed()) == []
    assert replay.conn.session is None  # passthrough: no TLS object of ours


@pytest.mark.parametrize(
    ("hello", "dst", "reason"),
    [
        (client_hello("evil.com"), OPENAI, "sni_not_allowed"),
        (client_hello("other.example.org"), OPENAI, "sni_not_resolved"),
        (client_hello(None), OPENAI, "no_sni"),
        (
            client_hello("example.com").replace(b"example.com", b"203.0.113.1"),
            OPENAI,
            "ip_literal_sni",
        ),
        (b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", OPENAI, "malformed_tls"),
        (b"\x16\x03\x01\x40\x01" + b"\x01" * MAX_PEEK_BYTES, OPENAI, "malformed_tls"),
        (client_hello("api.openai.com"), UNRESOLVED, "sni_not_resolved"),
    ],
)
def test_tls_refusals_are_one_audited_reset_and_nothing_dialled(
    hello: bytes, dst: str, reason: str
) -> None:
    replay = Replay.of(dst=(dst, 443))
    out = replay.send(cmd.ClientData(hello))
    assert out[-1] == cmd.ResetBoth()
    assert replay.audits() == [("deny", reason)]
    assert replay.dials() == [] and replay.conn.closed


def test_a_client_whose_sandbox_is_gone_at_decision_time_is_unknown() -> None:
    replay = Replay.of()
    replay.views["view"] = None
    replay.send(cmd.ClientData(HELLO))
    assert replay.audits() == [("deny", "unknown_client")]


@pytest.mark.parametrize("record", [50, 200])
@pytest.mark.parametrize("segment", [1, 30, 333])
def test_a_hello_in_many_records_and_segments_is_dialled_only_once_complete(
    record: int, segment: int
) -> None:
    wire = as_records(HELLO, record)
    replay = Replay.of()
    for i in range(0, len(wire), segment):
        assert replay.dials() == []
        replay.send(cmd.ClientData(wire[i : i + segment]))
    assert replay.dials() == [cmd.Dial(OPENAI, 443)]
    replay.send(cmd.UpstreamConnected())
    assert replay.upstream_bytes() == wire
    assert replay.audits() == [("allow", "sni_allowed")]


# Clocks ------------------------------------------------------------------------------


def test_silence_for_the_peek_window_makes_an_opaque_stream() -> None:
    replay = Replay.of(dst=(OPENAI, 25))
    assert replay.advance(1.99) == []
    out = replay.advance(0.01)
    assert out[0] == cmd.Audit(Verdict(True, "opaque_resolved", "api.openai.com"))
    assert out[-1] == cmd.Dial(OPENAI, 25)
    replay.send(cmd.UpstreamConnected())
    assert replay.send(cmd.UpstreamData(b"220 ready\r\n")) == [cmd.SendClient(b"220 ready\r\n")]


def test_silence_to_an_unresolved_address_is_reset() -> None:
    replay = Replay.of(dst=(UNRESOLVED, 25))
    assert replay.advance(2.0) == [
        cmd.Audit(Verdict(False, "opaque_not_resolved")),
        cmd.ResetBoth(),
    ]


def test_the_handshake_budget_runs_from_the_first_byte_and_bytes_do_not_restart_it() -> None:
    replay = Replay.of()
    replay.advance(1.0)
    assert replay.send(cmd.ClientData(HELLO[:1])) == [cmd.ArmTimer(cmd.HANDSHAKE, 10.0)]
    for i in range(1, 50):
        replay.advance(0.2)  # 9.8 s of trickling: past the peek window, within the budget
        assert replay.send(cmd.ClientData(HELLO[i : i + 1])) == []
    assert replay.advance(0.19) == []
    assert replay.advance(0.01) == [cmd.Audit(Verdict(False, "peek_timeout")), cmd.ResetBoth()]


def test_a_slow_hello_finished_within_the_budget_passes() -> None:
    replay = Replay.of()
    for i in range(0, len(HELLO), len(HELLO) // 8 + 1):
        replay.send(cmd.ClientData(HELLO[i : i + len(HELLO) // 8 + 1]))
        replay.advance(0.5)
    assert replay.audits() == [("allow", "sni_allowed")]


def test_a_partial_record_header_then_silence_is_never_opaque() -> None:
    replay = Replay.of()
    replay.send(cmd.ClientData(b"\x16\x03"))
    assert replay.advance(9.99) == []
    assert replay.advance(0.01)[0] == cmd.Audit(Verdict(False, "peek_timeout"))


def test_a_stale_timer_is_ignored() -> None:
    replay = Replay.of()
    replay.send(cmd.ClientData(b"\x16"))
    assert replay.send(cmd.TimerFired(cmd.PEEK)) == []  # re-armed as the handshake budget
    assert not replay.conn.closed


# EOF and resets at each phase ---------------------------------------------------------


def test_eof_after_a_partial_hello_is_incomplete() -> None:
    replay = Replay.of()
    replay.send(cmd.ClientData(HELLO[:40]), cmd.ClientEof())
    assert replay.audits() == [("deny", "incomplete")]
    assert replay.conn.closed


def test_eof_before_any_byte_is_an_opaque_stream_whose_eof_is_forwarded() -> None:
    replay = Replay.of(dst=(OPENAI, 25))
    replay.send(cmd.ClientEof())
    assert replay.audits() == [("allow", "opaque_resolved")]
    assert replay.send(cmd.UpstreamConnected()) == [cmd.SendUpstreamEof(), cmd.ResumeClient()]
    assert replay.send(cmd.UpstreamEof()) == [cmd.SendClientEof(), cmd.CloseBoth()]


def test_eof_while_dialling_is_forwarded_after_the_buffered_bytes() -> None:
    replay = allowed_tls()
    replay.send(cmd.ClientEof())
    assert replay.send(cmd.UpstreamConnected()) == [
        cmd.SendUpstream(HELLO),
        cmd.SendUpstreamEof(),
        cmd.ResumeClient(),
    ]


@pytest.mark.parametrize(
    "steps",
    [
        [],
        [cmd.ClientData(HELLO[:10])],
        [cmd.ClientData(HELLO)],
        [cmd.ClientData(HELLO), cmd.UpstreamConnected()],
    ],
    ids=["silent", "peeking", "dialling", "spliced"],
)
@pytest.mark.parametrize(
    ("event", "terminal"),
    [
        (cmd.ClientReset(), cmd.ResetBoth()),
        (cmd.UpstreamReset(), cmd.ResetBoth()),
        (cmd.ClientClosed(), cmd.CloseBoth()),
    ],
)
def test_a_transport_lost_in_any_phase_ends_the_connection(
    steps: list[cmd.Event], event: cmd.Event, terminal: cmd.Command
) -> None:
    replay = Replay.of()
    replay.send(*steps)
    assert replay.send(event) == [terminal]
    assert replay.conn.closed


def test_a_failed_dial_of_a_passthrough_is_a_reset_without_a_second_audit() -> None:
    replay = allowed_tls()
    assert replay.send(cmd.UpstreamFailed("connection refused")) == [cmd.ResetBoth()]
    assert replay.audits() == [("allow", "sni_allowed")]


def test_bytes_held_while_dialling_are_bounded() -> None:
    replay = allowed_tls()
    replay.send(cmd.ClientData(b"x" * (2 * 1024 * 1024)))
    assert replay.audits()[-1] == ("deny", "buffer_overflow")


# Back-pressure -----------------------------------------------------------------------


def test_a_full_upstream_pauses_the_client_and_a_full_client_pauses_the_upstream() -> None:
    replay = allowed_tls()
    replay.send(cmd.UpstreamConnected())
    assert replay.send(cmd.UpstreamWriteBlocked()) == [cmd.PauseClient()]
    assert replay.send(cmd.UpstreamWriteBlocked()) == []
    assert replay.send(cmd.UpstreamWriteDrained()) == [cmd.ResumeClient()]
    assert replay.send(cmd.ClientWriteBlocked()) == [cmd.PauseUpstream()]
    assert replay.send(cmd.ClientWriteBlocked()) == []
    assert replay.send(cmd.ClientWriteDrained()) == [cmd.ResumeUpstream()]
    assert replay.send(cmd.ClientWriteDrained()) == []


def test_a_client_blocked_before_the_upstream_exists_pauses_it_at_once() -> None:
    replay = allowed_tls()
    replay.send(cmd.ClientWriteBlocked())
    out = replay.send(cmd.UpstreamConnected())
    assert out[0] == cmd.PauseUpstream()


# HTTP --------------------------------------------------------------------------------


def http_replay() -> Replay:
    return Replay.of(dst=(OPENAI, 80))


def test_a_keep_alive_request_to_a_denied_host_never_reaches_the_upstream() -> None:
    replay = http_replay()
    replay.send(cmd.ClientData(GET_A), cmd.UpstreamConnected())
    assert replay.upstream_bytes() == GET_A
    second = b"GET /b HTTP/1.1\r\nHost: evil.com\r\n\r\n"
    assert replay.send(cmd.ClientData(second[:20])) == []  # an unchecked head is held
    assert replay.send(cmd.ClientData(second[20:]))[-1] == cmd.ResetBoth()
    assert replay.upstream_bytes() == GET_A
    assert replay.audits() == [("allow", "host_allowed"), ("deny", "host_not_allowed")]


def test_pipelined_requests_with_bodies_pass_with_one_event_per_name() -> None:
    replay = http_replay()
    stream = (
        b"POST /1 HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /2 HTTP/1.1\r\nHost: API.openai.com:80\r\n\r\n"
    )
    replay.send(cmd.ClientData(stream[:30]))
    assert replay.dials() == []
    replay.send(cmd.ClientData(stream[30:]), cmd.UpstreamConnected())
    assert replay.upstream_bytes() == stream
    assert replay.audits() == [("allow", "host_allowed")]


@pytest.mark.parametrize(
    ("request_bytes", "reason"),
    [
        (b"CONNECT evil.com:443 HTTP/1.1\r\nHost: evil.com:443\r\n\r\n", "connect_refused"),
        (
            b"GET http://evil.com/ HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",
            "absolute_form_not_allowed",
        ),
        (b"GET / HTTP/1.0\r\n\r\n", "no_host"),
        (b"GET / HTTP/1.1\r\nHost: other.example.org\r\n\r\n", "host_not_resolved"),
        (b"GET / HTTP/1.1\r\nHost: api.openai.com\r\nHost: evil.com\r\n\r\n", "duplicate_host"),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 17_000, "header_too_large"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n", "incomplete"),
    ],
)
def test_http_refusals(request_bytes: bytes, reason: str) -> None:
    replay = http_replay()
    replay.send(cmd.ClientData(request_bytes))
    if not replay.conn.closed:
        replay.send(cmd.ClientEof())
    assert replay.audits() == [("deny", reason)]
    assert replay.upstream_bytes() == b"" and replay.dials() == []


def test_a_slow_request_head_past_the_peek_window_passes() -> None:
    replay = http_replay()
    for i in range(0, len(GET_A), 8):
        replay.send(cmd.ClientData(GET_A[i : i + 8]))
        replay.advance(0.7)
    assert replay.audits() == [("allow", "host_allowed")]


# Policy changes ----------------------------------------------------------------------


def test_a_policy_cut_resets_only_established_connections_it_no_longer_allows() -> None:
    peeking = Replay.of()
    assert peeking.send(cmd.PolicyCut(lambda *_: False)) == []
    spliced = allowed_tls()
    spliced.send(cmd.UpstreamConnected())
    assert spliced.send(cmd.PolicyCut(lambda name, ip, port: name == "api.openai.com")) == []
    seen: list[tuple[str | None, str, int]] = []

    def refuse(name: str | None, ip: str, port: int) -> bool:
        seen.append((name, ip, port))
        return False

    assert spliced.send(cmd.PolicyCut(refuse)) == [
        cmd.Audit(Verdict(False, "policy_changed", "api.openai.com")),
        cmd.ResetBoth(),
    ]
    assert seen == [("api.openai.com", OPENAI, 443)]


def test_each_decision_reads_the_current_view() -> None:
    replay = Replay.of(dst=(OTHER, 80))
    replay.views["view"] = SandboxView(SBX, POLICY.parse(["api.openai.com"], ["0.0.0.0/0"]))
    replay.send(cmd.ClientData(b"GET / HTTP/1.1\r\nHost: other.example.org\r\n\r\n"))
    assert replay.audits() == [("deny", "host_not_allowed")]
