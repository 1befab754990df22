"""Benchmark: the PII guardrail's accuracy on the held-out corpus and its throughput.

In-process only (no server, no sandbox). Accuracy: span-level precision, recall and F1 per
type on the held-out split of tests/data/pii/corpus.jsonl (a prediction matches a gold span
of the same type it overlaps). Throughput: JSON chat-completion bodies (seeded faker prose,
an email and a phone number in one message of four; and the same without PII) rewritten
value by value the way the pipeline does (`rewrite_text_or_json` with the stage's outbound
pass), structured types only, against
`json.loads` + `json.dumps` of the same bodies in the same run; then the NER layer
(person_name, address) alone on the same bodies. Every round starts cold: the per-process
memo of findings (cache.py) and the phone validity cache are cleared, and no body repeats a
message, so those figures get nothing from the memo. The "resent history" workload is what
the memo is for: conversations whose request k carries messages 1..k, as chat clients send
them. Goals: P and R >= 0.95 for the structured types, fast path >= 0.25x of the JSON round
trip (without repeats).
Usage: .venv/bin/python bench/bench_guard_pii.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

from common import Report, header
from faker import Faker

from declawd.guard.pii import NER, STRUCTURED, TYPES, PiiGuard, PiiStage, detect, validators
from declawd.guard.pii.cache import FINDINGS
from declawd.guard.pii.scoring import load, score
from declawd.inspect.bodies import rewrite_text_or_json
from declawd.inspect.pipeline import ExchangeState

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "pii" / "corpus.jsonl"
GOALS = {"precision": ">= 0.95", "recall": ">= 0.95", "fast path ratio": ">= 0.25"}
SEED = 7


def bodies(n: int, messages: int, pii_every: int = 4) -> list[str]:
    fake = Faker("en_US")
    Faker.seed(SEED)
    rng = random.Random(SEED)
    out = []
    for _ in range(n):
        msgs = []
        for j in range(messages):
            text = " ".join(fake.paragraph(nb_sentences=rng.randint(3, 12)) for _ in range(3))
            if pii_every and j % pii_every == 1:
                text += f" You can reach me at {fake.email()} or {fake.phone_number()}."
            msgs.append({"role": "user" if j % 2 else "assistant", "content": text})
        body = {"model": "gpt-4o", "messages": msgs, "temperature": 0.2, "stream": False}
        out.append(json.dumps(body))
    return out


def history(conversations: int, turns: int) -> list[str]:
    """Request bodies of `conversations` chats, request k resending messages 1..k."""
    fake = Faker("en_US")
    Faker.seed(SEED + 1)
    rng = random.Random(SEED + 1)
    out = []
    for _ in range(conversations):
        msgs: list[dict[str, str]] = []
        for j in range(turns):
            text = " ".join(fake.paragraph(nb_sentences=rng.randint(3, 12)) for _ in range(3))
            if j % 4 == 1:
                text += f" You can reach me at {fake.email()} or {fake.phone_number()}."
            msgs.append({"role": "user" if j % 2 else "assistant", "content": text})
            body = {"model": "gpt-4o", "messages": msgs, "temperature": 0.2, "stream": False}
            out.append(json.dumps(body))
    return out


def rate(fn: Callable[[str], object], docs: list[str], rounds: int) -> float:
    size = sum(len(d.encode()) for d in docs)
    best = float("inf")
    for _ in range(rounds):
        validators._valid.cache_clear()  # cold: no number validated in an earlier round
        FINDINGS.clear()  # and no value scanned in one
        start = time.perf_counter()
        for d in docs:
            fn(d)
        best = min(best, time.perf_counter() - start)
    return size / best / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a sample of the corpus")
    args = parser.parse_args()
    report = Report("guard_pii", params={"quick": args.quick, "goals": GOALS})

    records = load(CORPUS, "heldout")
    if args.quick:
        records = records[::3]
    header(f"accuracy on heldout ({len(records)} records), span-level")
    start = time.perf_counter()
    tallies = score(records, TYPES)
    secs = time.perf_counter() - start
    accuracy = {}
    for t, tally in tallies.items():
        accuracy[t] = {
            "precision": tally.precision,
            "recall": tally.recall,
            "f1": tally.f1,
            "gold": tally.gold,
            "predicted": tally.predicted,
        }
        goal = "goal" if t in STRUCTURED else "report"
        print(
            f"  {t:12s} P={tally.precision:.3f} R={tally.recall:.3f} F1={tally.f1:.3f} "
            f"gold={tally.gold:4d} predicted={tally.predicted:4d} ({goal})",
            flush=True,
        )
    report.extra["accuracy"] = accuracy
    report.extra["corpus_seconds"] = secs

    docs = bodies(20 if args.quick else 80, 12)
    rounds = 3 if args.quick else 7
    header(f"throughput on {len(docs)} chat-completion bodies ({sum(map(len, docs)) >> 10} KiB)")
    base = rate(lambda d: json.dumps(json.loads(d)), docs, rounds)

    def stage_pass(types: tuple[str, ...]) -> Callable[[str], object]:
        stage = PiiStage(PiiGuard(types=types), "api.openai.com")

        def run(doc: str) -> object:
            p = stage.start(ExchangeState(), "outbound")
            assert p is not None
            return rewrite_text_or_json(doc, p.apply)

        return run

    fast = rate(stage_pass(STRUCTURED), docs, rounds)
    report.add("structured, 1 in 4 messages with PII", fast, base, "MB/s", "json.loads+json.dumps")
    clean = bodies(len(docs), 12, pii_every=0)
    clean_base = rate(lambda d: json.dumps(json.loads(d)), clean, rounds)
    fast_clean = rate(stage_pass(STRUCTURED), clean, rounds)
    report.add("structured, no PII", fast_clean, clean_base, "MB/s", "json.loads+json.dumps")
    chats = history(4 if args.quick else 12, 12)
    chats_base = rate(lambda d: json.dumps(json.loads(d)), chats, rounds)
    resent = rate(stage_pass(STRUCTURED), chats, rounds)
    report.add(
        "structured, resent history (memo warm within the round)",
        resent,
        chats_base,
        "MB/s",
        "json.loads+json.dumps",
    )
    report.extra["memo_after_history"] = {"entries": len(FINDINGS), "chars": FINDINGS.chars}
    floor = rate(lambda d: rewrite_text_or_json(d, lambda v: v), docs, rounds)
    report.add("value-by-value rewrite, identity", floor, base, "MB/s", "json.loads+json.dumps")
    ner_docs = docs[: max(4, len(docs) // 4)]
    ner = rate(lambda d: detect(d, NER), ner_docs, max(1, rounds // 2))
    report.add("NER layer alone (person_name, address)", ner, base, "MB/s", "json.loads+json.dumps")
    full = rate(stage_pass(TYPES), ner_docs, max(1, rounds // 2))
    report.add("all types (value by value)", full, base, "MB/s", "json.loads+json.dumps")
    report.write()


if __name__ == "__main__":
    main()
