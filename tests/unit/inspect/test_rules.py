"""Transformation rules: RE2 validation messages, `re.sub` replacement semantics, linear-time
matching of ReDoS patterns, the time budget, and streaming equal to the whole-text rewrite."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from declawd.errors import InvalidInput
from declawd.inspect.model import TransformRule
from declawd.inspect.rules import (
    MAX_RULES,
    RuleSet,
    RuleTimeout,
    compile_rules,
    parse_template,
)

LINEAR = "(patterns run in linear time)"


def rules(*specs: tuple[str, str] | tuple[str, str, str]) -> RuleSet:
    return compile_rules([TransformRule(*s) for s in specs])  # type: ignore[arg-type]


def refusal(rule: TransformRule, field: str = "security.transformations") -> str:
    with pytest.raises(InvalidInput) as err:
        compile_rules([TransformRule("ok", "ok"), rule], field)
    return err.value.message


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"(?<=secret=)\w+", f"lookbehind is not supported {LINEAR}"),
        (r"(?<!x)y", f"lookbehind is not supported {LINEAR}"),
        (r"key(?=:)", f"lookahead is not supported {LINEAR}"),
        (r"key(?!:)", f"lookahead is not supported {LINEAR}"),
        (r"(a)\1", f"backreferences are not supported {LINEAR}"),
        (r"(?P<q>a)(?P=q)", f"backreferences are not supported {LINEAR}"),
        (r"(?>ab)", f"atomic groups are not supported {LINEAR}"),
        (r"a++", f"possessive quantifiers are not supported {LINEAR}"),
        (r"(a)?(?(1)b|c)", f"conditional groups are not supported {LINEAR}"),
        (r"end\Z", r"\Z is not supported: use \z for the end of the text"),
        (r"\pL{1000}", "too large for the matching engine's memory limit of 2 MiB"),
        (r"\C", r"\C (any byte) is not supported"),
        ("[a-", "not a pattern the linear-time engine accepts: missing ]: [a-"),
        ("", "must not be empty"),
        ("a" * 1001, "at most 1000 characters (got 1001)"),
    ],
)
def test_a_pattern_re2_cannot_run_is_refused_naming_the_rule_and_why(
    pattern: str, why: str
) -> None:
    assert refusal(TransformRule(pattern, "x")) == f"security.transformations[1].match: {why}"


def test_the_field_prefix_is_the_callers() -> None:
    msg = refusal(TransformRule("(?<=a)b", "x"), "transformations")
    assert msg == f"transformations[1].match: lookbehind is not supported {LINEAR}"


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (TransformRule(1, "x"), "[1].match: must be a string"),  # type: ignore[arg-type]
        (TransformRule("a", None), "[1].replace: must be a string"),  # type: ignore[arg-type]
        (TransformRule("(a)", r"\2"), "[1].replace: invalid group reference 2"),
        (TransformRule("(a)", r"\g<who>"), "[1].replace: unknown group name 'who'"),
        (TransformRule("a", r"\q"), r"[1].replace: bad escape \q"),
        (
            TransformRule("a", "b", "egress"),  # type: ignore[arg-type]
            "[1].direction: must be 'outbound', 'inbound' or 'both' (got 'egress')",
        ),
    ],
)
def test_bad_replace_and_direction_name_their_field(rule: TransformRule, message: str) -> None:
    assert refusal(rule) == "security.transformations" + message


def test_more_rules_than_the_limit_are_refused() -> None:
    with pytest.raises(InvalidInput) as err:
        compile_rules([TransformRule("a", "b")] * (MAX_RULES + 1))
    assert err.value.message == f"security.transformations: at most {MAX_RULES} rules (got 101)"


def test_nested_quantifiers_the_sdk_refuses_client_side_are_accepted() -> None:
    assert rules((r"(a+)+$", "x"), (r"(a|a)*b", "y"))


# --- replacement semantics -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "repl", "text"),
    [
        (r"sk-[A-Za-z0-9]{8}", "[KEY]", "key sk-abcd1234 and sk-efgh5678."),
        (r"(\w+)@(\w+)\.com", r"\2 at \1", "mail me@example.com or you@test.com"),
        (r"(?P<user>\w+)@", r"<\g<user>>\g<0>", "a@b c@d"),
        (r"(a)|(b)", r"[\1\2]", "abc"),
        (r"x*", "-", "abxd"),
        (r"\b", "|", "ab cd"),
        (r"(?m)^", "> ", "one\ntwo\n"),
        (r"(?i)SECRET", "public", "Secret secret SECRET"),
        (r"é+", "e", "caféé, résumé"),
        (r"\d", r"\\\n\t\101\0", "1"),
        (r"a", r"\.", "aa"),
    ],
)
def test_apply_is_python_re_subn(pattern: str, repl: str, text: str) -> None:
    assert rules((pattern, repl)).apply(text) == re.subn(pattern, repl, text)


# Patterns where RE2 and Python's re agree (ASCII classes on ASCII text, no `$`).
COMMON = [
    (r"ab", "X"),
    (r"a|bc", r"<\g<0>>"),
    (r"(\w)(\d)", r"\2\1"),
    (r"x*", "-"),
    (r"\bcat\b", "dog"),
    (r"(?m)^a", "A"),
    (r"c.{0,3}d", r"[\g<0>]"),
    (r"([0-9]{2,4})", r"#\1"),
]
TEXT = st.text(alphabet="abcdtx0123 \n", max_size=60)


@settings(max_examples=300, deadline=None)
@given(rule=st.sampled_from(COMMON), text=TEXT)
def test_apply_agrees_with_re_on_the_common_syntax(rule: tuple[str, str], text: str) -> None:
    pattern, repl = rule
    assert rules((pattern, repl)).apply(text) == re.subn(pattern, repl, text)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="\\gn<>0123xyz", max_size=12))
def test_replacement_templates_parse_as_pythons(repl: str) -> None:
    regex = re.compile(r"(x)(?P<y>y)?")
    try:
        expected = regex.sub(repl, "xy")
    except (re.error, IndexError):
        with pytest.raises(ValueError):
            parse_template(repl, 2, {"y": 2})
        return
    assert rules((r"(x)(?P<y>y)?", repl)).apply("xy")[0] == expected


def test_rules_apply_in_order_each_to_the_previous_output() -> None:
    assert rules(("a", "b"), ("b", "c")).apply("ab") == ("cc", 3)


def test_text_without_a_match_is_returned_as_is() -> None:
    text = "nothing to see"
    out, count = rules(("zzz", "y")).apply(text)
    assert (out, count) == (text, 0) and out is text


def test_undecodable_bytes_kept_as_surrogates_pass_through() -> None:
    assert rules(("a", "b")).apply("x\udc80a\udcff") == ("x\udc80b\udcff", 1)
    assert rules((r"\B", "-")).apply("\udc80\udc81")[0] == "-\udc80-\udc81-"


def test_for_direction_keeps_the_rules_of_that_direction() -> None:
    rs = rules(("o", "1", "outbound"), ("i", "2", "inbound"), ("b", "3", "both"))
    assert [r.match for r in rs.for_direction("outbound").source] == ["o", "b"]
    assert [r.match for r in rs.for_direction("inbound").source] == ["i", "b"]
    assert not rules(("o", "1", "outbound")).for_direction("inbound")


# --- linear time and the budget --------------------------------------------------------------


def test_redos_patterns_run_in_linear_time_on_50kb() -> None:
    text = "a" * 50_000
    assert rules((r"(a|a)*b", "x")).apply(text) == (text, 0)
    assert rules((r"(a+)+$", "y")).apply(text) == ("y", 1)
    assert rules((r"(.*a){20}", "z")).apply(text) == ("z", 1)


def test_a_call_past_its_budget_raises_rule_timeout() -> None:
    ticks = itertools.count(0.0, 10.0)  # every clock reading is 10 s later
    rs = RuleSet(rules(("a", "b")).rules, clock=lambda: next(ticks))
    with pytest.raises(RuleTimeout) as err:
        rs.apply("aaaa")
    assert "aaaa" not in err.value.message
    with pytest.raises(RuleTimeout):
        rs.stream().feed("a" * 10_000)


def test_within_its_budget_a_call_completes() -> None:
    rs = RuleSet(rules(("a", "b")).rules, clock=lambda: 0.0)
    assert rs.apply("a" * 10_000) == ("b" * 10_000, 10_000)


# --- streaming -------------------------------------------------------------------------------


class Small(RuleSet):
    HOLD_BACK = 8


# Patterns whose every match, and every alternative they weigh, is shorter than HOLD_BACK.
BOUNDED = [
    (r"ab", "X"),
    (r"c.{0,3}d", r"<\g<0>>"),
    (r"(\d)(\d)", r"\2\1"),
    (r"x{0,2}", "-"),
    (r"\bcat\b", "dog"),
    (r"(?m)^a", "A"),
    (r"a$", "Z"),
    (r"é{1,2}", "e"),
]


@settings(max_examples=300, deadline=None)
@given(
    picked=st.lists(st.sampled_from(BOUNDED), min_size=1, max_size=3),
    text=st.text(alphabet="abcdxé0123t \n", max_size=80),
    cuts=st.lists(st.integers(0, 80), max_size=10),
)
def test_stream_over_any_chunking_equals_apply(
    picked: list[tuple[str, str]], text: str, cuts: list[int]
) -> None:
    rs = Small(rules(*picked).rules)
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    stream = rs.stream()
    out = "".join(stream.feed(text[a:b]) for a, b in itertools.pairwise(bounds))
    out += stream.flush()
    expected, count = rs.apply(text)
    assert out == expected
    assert stream.replacements == count


def test_a_token_split_across_chunks_is_still_replaced() -> None:
    stream = rules((r"sk-[a-z0-9]{10}", "[KEY]")).stream()
    out = stream.feed("x" * 5000 + "token sk-abc") + stream.feed("def1234 end") + stream.flush()
    assert out == "x" * 5000 + "token [KEY] end"
    assert stream.replacements == 1


def test_each_rule_of_a_stream_holds_back_at_most_hold_back() -> None:
    stream = rules(("q", "r"), ("r", "s")).stream()
    released = stream.feed("a" * 100_000)
    assert stream.held <= 2 * RuleSet.HOLD_BACK
    assert len(released) == 100_000 - stream.held


def test_flush_ends_the_text_so_the_next_feed_starts_a_new_one() -> None:
    stream = Small(rules((r"^a", "A")).rules).stream()
    first = stream.feed("aa") + stream.flush()
    second = stream.feed("aa") + stream.flush()
    assert (first, second) == ("Aa", "Aa")


@given(st.text(alphabet="ab \n", max_size=40), st.integers(1, 39))
def test_context_before_a_release_keeps_anchors_right(text: str, cut: int) -> None:
    assume(cut < len(text))
    rs = Small(rules((r"^a", "A"), (r"\bb", "B")).rules)
    stream = rs.stream()
    assert stream.feed(text[:cut]) + stream.feed(text[cut:]) + stream.flush() == rs.apply(text)[0]


def test_an_empty_rule_set_streams_through_at_once() -> None:
    stream = RuleSet().stream()
    assert stream.feed("abc") == "abc" and stream.flush() == ""
    assert RuleSet().apply("abc") == ("abc", 0) and not RuleSet()


def test_a_bounded_pattern_holds_back_only_its_width_so_a_stream_flows() -> None:
    rules = compile_rules([TransformRule("pong-in", "rewritten-in", "inbound")])
    stream = rules.for_direction("inbound").stream()
    line = '{"id": 0, "text": "pong-in", "pad": "' + "." * 40 + '"}\n'
    first = stream.feed(line)
    # All but a tail of 4 bytes per character of a match (+1) is out at once, not 4 KiB.
    assert first.startswith('{"id": 0, "text": "rewritten-in"')
    assert len(line) - len("pong-in") + len("rewritten-in") - len(first) == 4 * (7 + 1)
    assert first + stream.flush() == line.replace("pong-in", "rewritten-in")


def test_an_unbounded_pattern_keeps_the_full_hold_back() -> None:
    rules = compile_rules([TransformRule("a.*b", "x", "inbound")])
    stream = rules.for_direction("inbound").stream()
    assert stream.feed("a" * 100) == ""
    assert stream.flush() == "a" * 100
