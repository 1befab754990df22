"""PiiStage: redaction tokens, block and log_only, rehydration (whole, streamed, SSE), config."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from declawd.guard.pii import PiiGuard, PiiStage, TokenTable, redact_text, rehydrate
from declawd.guard.pii.stage import HOLD
from declawd.inspect.bodies import SseRewriter, rewrite_text_or_json
from declawd.inspect.pipeline import Blocked, ExchangeState

TEXT = "I am John Smith, mail john@acme.com or bob@acme.com, ssn 123-45-6789, john@acme.com"


def outbound(guard: PiiGuard | None = None, host: str = "api.example.com"):
    x = ExchangeState()
    p = PiiStage(guard or PiiGuard(), host).start(x, "outbound")
    assert p is not None
    return x, p


def test_tokens_numbered_per_type_and_consistent() -> None:
    x, p = outbound()
    out = p.apply(TEXT)
    assert out == (
        "I am [REDACTED_PERSON_NAME_1], mail [REDACTED_EMAIL_1] or [REDACTED_EMAIL_2], "
        "ssn [REDACTED_SSN_1], [REDACTED_EMAIL_1]"
    )
    # the same value keeps its token across the values of one exchange
    assert p.apply("again bob@acme.com") == "again [REDACTED_EMAIL_2]"
    assert x.pii_redactions == 6
    pii = x.scratch["scan_results"]["pii"]
    assert pii == {
        "detected": True,
        "action": "redact",
        "types": {"person_name": 1, "email": 4, "ssn": 1},
    }
    json.dumps(pii)  # JSON-able for the audit and Rego


def test_credit_card_token_name() -> None:
    _, p = outbound()
    assert p.apply("card 4111 1111 1111 1111") == "card [REDACTED_CREDIT_CARD_1]"


def test_block_names_types_never_values() -> None:
    x, p = outbound(PiiGuard(action="block"))
    with pytest.raises(Blocked) as e:
        p.apply(TEXT)
    assert e.value.error == "pii_detected" and e.value.status == 403
    assert e.value.reason == "pii detected: ssn, email, person_name"
    assert "acme" not in e.value.reason and "6789" not in e.value.reason
    assert x.scratch["scan_results"]["pii"]["detected"] is True
    assert p.apply("nothing here") == "nothing here"


def test_log_only_counts_and_leaves_body() -> None:
    x, p = outbound(PiiGuard(action="log_only"))
    assert p.apply(TEXT) == TEXT
    assert x.pii_redactions == 5
    assert x.scratch["scan_results"]["pii"]["action"] == "log_only"
    assert PiiStage(PiiGuard(action="log_only"), "h").start(x, "inbound") is None


def test_nothing_found_is_recorded_as_not_detected() -> None:
    x, p = outbound()
    assert p.apply("hello") == "hello"
    assert x.scratch["scan_results"]["pii"] == {"detected": False, "action": "redact", "types": {}}
    assert PiiStage(PiiGuard(), "h").start(x, "inbound") is None  # no tokens: no pass


def test_domains_scope_and_off() -> None:
    x = ExchangeState()
    g = PiiGuard(domains=("*.openai.com",))
    assert PiiStage(g, "api.openai.com").start(x, "outbound") is not None
    assert PiiStage(g, "example.com").start(x, "outbound") is None
    assert PiiStage(PiiGuard(domains=()), "any.host").start(x, "outbound") is not None
    assert PiiStage(None, "api.openai.com").start(x, "outbound") is None


def test_wire_round_trip_and_validation() -> None:
    g = PiiGuard(types=("email", "ssn"), action="block", rehydrate=False, domains=("a.com",))
    assert PiiGuard.from_wire(g.to_wire()) == g
    assert PiiGuard.from_wire(json.loads(json.dumps(g.to_wire()))) == g
    sdk = {"enabled": True, "types": ["email"], "action": "redact", "rehydrate_response": True}
    assert PiiGuard.from_wire(sdk) == PiiGuard(types=("email",))
    assert PiiGuard.from_wire({"enabled": False}) is None
    assert PiiGuard.from_wire(None) is None
    with pytest.raises(ValueError):
        PiiGuard(types=("passport",))
    with pytest.raises(ValueError):
        PiiGuard(action="drop")  # type: ignore[arg-type]


def exchange_with_tokens() -> tuple[ExchangeState, PiiStage]:
    stage = PiiStage(PiiGuard(), "api.example.com")
    x = ExchangeState()
    p = stage.start(x, "outbound")
    assert p is not None
    p.apply("mail john@acme.com, ssn 123-45-6789")
    return x, stage


def test_rehydrate_whole_and_foreign_tokens_left_alone() -> None:
    x, stage = exchange_with_tokens()
    inbound = stage.start(x, "inbound")
    assert inbound is not None
    out = inbound.apply(
        "[REDACTED_EMAIL_1] / [REDACTED_SSN_1] / [REDACTED_EMAIL_7] / [REDACTED_X_1]"
    )
    assert out == "john@acme.com / 123-45-6789 / [REDACTED_EMAIL_7] / [REDACTED_X_1]"
    assert x.scratch["scan_results"]["pii"]["rehydrated"] == 2
    # another exchange's tokens are not this one's
    other = ExchangeState()
    p = stage.start(other, "outbound")
    assert p is not None
    p.apply("mail zed@other.org")
    back = stage.start(other, "inbound")
    assert back is not None
    assert back.apply("[REDACTED_EMAIL_1] [REDACTED_SSN_1]") == "zed@other.org [REDACTED_SSN_1]"


def test_no_rehydration_when_off() -> None:
    stage = PiiStage(PiiGuard(rehydrate=False), "h")
    x = ExchangeState()
    p = stage.start(x, "outbound")
    assert p is not None
    assert p.apply("john@acme.com") == "[REDACTED_EMAIL_1]"
    assert stage.start(x, "inbound") is None


RESPONSE = "Sure, [REDACTED_EMAIL_1] and [REDACTED_SSN_1] are on file [x]."
EXPECTED = "Sure, john@acme.com and 123-45-6789 are on file [x]."


def test_rehydrate_stream_split_at_every_position() -> None:
    x, stage = exchange_with_tokens()
    for i in range(len(RESPONSE) + 1):
        inbound = stage.start(x, "inbound")
        assert inbound is not None
        s = inbound.stream()
        out = s.feed(RESPONSE[:i]) + s.feed(RESPONSE[i:]) + s.flush()
        assert out == EXPECTED, i


def test_rehydrate_stream_one_char_at_a_time_holds_little() -> None:
    x, stage = exchange_with_tokens()
    inbound = stage.start(x, "inbound")
    assert inbound is not None
    s = inbound.stream()
    parts, longest_wait = [], 0
    waiting = 0
    for c in RESPONSE:
        got = s.feed(c)
        waiting = 0 if got else waiting + 1
        longest_wait = max(longest_wait, waiting)
        parts.append(got)
    parts.append(s.flush())
    assert "".join(parts) == EXPECTED
    assert longest_wait < len("[REDACTED_EMAIL_1]")


def sse_event(content: str) -> str:
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "model": "gpt-4o",
            "choices": [{"index": 0, "delta": {"content": content}}],
        }
    )


def _sse_text(out: str) -> str:
    text = ""
    for block in out.split("\n\n"):
        if block.startswith("data: {"):
            doc = json.loads(block[6:])
            assert doc["id"] == "chatcmpl-1" and doc["model"] == "gpt-4o"
            text += doc["choices"][0]["delta"]["content"]
    return text


def test_rehydrate_across_sse_events_at_every_position() -> None:
    # The pipeline's SSE rewriter joins a token cut between events (the pass's `tail`).
    x, stage = exchange_with_tokens()
    for i in range(len(RESPONSE) + 1):
        for j in range(i, len(RESPONSE) + 1, 3):
            inbound = stage.start(x, "inbound")
            assert inbound is not None
            sse = SseRewriter(inbound.apply, 10_000, inbound.tail)  # type: ignore[attr-defined]
            chunks = ["", RESPONSE[:i], RESPONSE[i:j], RESPONSE[j:]]
            body = "".join(f"data: {sse_event(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            out = sse.feed(body) + sse.flush()
            assert _sse_text(out) == EXPECTED, (i, j)
            assert out.endswith("data: [DONE]\n\n")


def test_rehydrate_apply_is_per_value_and_tail_names_a_token_prefix() -> None:
    x, stage = exchange_with_tokens()
    inbound = stage.start(x, "inbound")
    assert inbound is not None
    assert inbound.apply("x [REDACTED_EMAIL_1] y") == "x john@acme.com y"
    assert inbound.apply("x [REDACTED_EM") == "x [REDACTED_EM"  # nothing held, nothing lost
    tail = inbound.tail  # type: ignore[attr-defined]
    assert tail("x [REDACTED_EM") == len("[REDACTED_EM")
    assert tail("see [") == 1 and tail("see [link](u)") == 0
    assert tail("[REDACTED_ZZZ") == 0  # no token of this exchange starts so


def test_json_value_by_value() -> None:
    x, p = outbound()
    body = json.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "I'm at bob@acme.com"}]}
    )
    out = json.loads(rewrite_text_or_json(body, p.apply))
    assert out["messages"][0]["content"] == "I'm at [REDACTED_EMAIL_1]"
    assert out["model"] == "gpt-4o"


def test_outbound_stream_finds_values_split_between_pieces() -> None:
    text = ("filler words " * 60) + "card 4111 1111 1111 1111 and bob@acme.com " + ("more " * 80)
    for cut in range(780, 830):
        x, p = outbound(PiiGuard(types=("credit_card", "email")))
        s = p.stream()
        out = s.feed(text[:cut]) + s.feed(text[cut:]) + s.flush()
        assert "[REDACTED_CREDIT_CARD_1]" in out and "[REDACTED_EMAIL_1]" in out, cut
        assert (
            out.replace("[REDACTED_CREDIT_CARD_1]", "4111 1111 1111 1111").replace(
                "[REDACTED_EMAIL_1]", "bob@acme.com"
            )
            == text
        )


def test_outbound_stream_small_pieces_bounded_hold() -> None:
    x, p = outbound(PiiGuard(types=("email",)))
    s = p.stream()
    text = "x" * 3000 + " mail bob@acme.com " + "y" * 3000
    out, most_held, fed = [], 0, 0
    for i in range(0, len(text), 7):
        piece = text[i : i + 7]
        fed += len(piece)
        out.append(s.feed(piece))
        most_held = max(most_held, fed - sum(map(len, out)) + 11 * "".join(out).count("[RED"))
    out.append(s.flush())
    assert "".join(out) == text.replace("bob@acme.com", "[REDACTED_EMAIL_1]")
    assert most_held <= 2 * HOLD + 7


def test_redact_text_helper_for_urls() -> None:
    table = TokenTable()
    assert redact_text("bob@acme.com", ("email",), table) == "[REDACTED_EMAIL_1]"
    assert redact_text("q=hello", ("email",), table) == "q=hello"
    assert rehydrate("[REDACTED_EMAIL_1]", table) == ("bob@acme.com", 1)


_PII_VALUES = st.sampled_from(
    ["john@acme.com", "123-45-6789", "4111 1111 1111 1111", "(415) 555-2671", "10.0.0.1"]
)
_WORDS = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="["), max_size=20
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(_WORDS, _PII_VALUES), max_size=12))
def test_property_redact_then_rehydrate_is_identity(parts: list[str]) -> None:
    text = " ".join(parts)
    stage = PiiStage(PiiGuard(types=("ssn", "credit_card", "email", "phone", "ip_address")), "h")
    x = ExchangeState()
    p = stage.start(x, "outbound")
    assert p is not None
    redacted = p.apply(text)
    back = stage.start(x, "inbound")
    restored = back.apply(redacted) if back is not None else redacted
    assert restored == text
    if back is not None:
        s = back.stream()
        half = len(redacted) // 2
        assert s.feed(redacted[:half]) + s.feed(redacted[half:]) + s.flush() == text
