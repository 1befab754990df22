"""Benchmark: the latency guardrails add to a 4 KB chat completion through the proxy.

Four `python` sandboxes on runc behind one server, each allowed api.openai.com only:
`passthrough` (no guard, SNI passthrough: no HTTP layer), `inspected-off` (a transformation
that never matches, so every connection is intercepted but nothing guards it: the
guardrails-off figure), `guards-ner-off` (PII on the structured types, injection defense
log_only on api.openai.com, invisible text) and `guards-all` (the same with every PII type:
the NER layer). One in-sandbox client POSTs the same ~4 KB OpenAI chat-completion body to
https://api.openai.com/v1/chat/completions on one keep-alive connection after a warm-up; the
lab echoes the last user message, whose prose holds an email and a phone number (and a
name and an address for the NER layer). The sandboxes take turns, in rounds of rotating
order, so drift in the machine's load falls on all four alike. Once per sandbox (its first
round) the answer must equal the text sent (redacted upstream, rehydrated back) and the lab's
request log must show what left: the originals for the two baselines, the tokens and none
of the email or phone for the guarded ones. The same stages on the same body run in this
process too (request and response bodies through the pipeline), against the no-op rule.
Figures only, no pass/fail; the goal is printed next to its ratio.
Usage: .venv/bin/python bench/bench_guard_latency.py [--quick]
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from typing import Any

from common import Report, header, pct, summary
from declaw import (
    ALL_TRAFFIC,
    InjectionDefenseConfig,
    InvisibleTextConfig,
    NetworkPolicy,
    PIIConfig,
    Sandbox,
    SecurityPolicy,
    TransformationRule,
)
from harness import POOL, Server, run_standalone

from declawd.config import Settings
from declawd.guard.pii import NER, STRUCTURED, TYPES, detect
from declawd.inspect.model import InspectContext, InspectionPolicy
from declawd.inspect.pipeline import ExchangeState, Pipeline
from declawd.inspect.policy import parse_security
from declawd.lab.httpapi import LOGGED_BODY
from declawd.lab.openai_api import chat_completions
from declawd.lab.requestlog import read_requests

HOST = "api.openai.com"
ADDR = "203.0.113.10"  # api.openai.com in the lab (src/declawd/lab/default.json)
PATH = "/v1/chat/completions"
RUNTIME = "runc"
GOAL_RATIO = 1.5  # guards-ner-off p50 / inspected-off p50
GOALS = {"guards-ner-off / inspected-off p50": f"<= {GOAL_RATIO}"}
BODY_FILE, CLIENT_FILE = "/tmp/guard_body.json", "/tmp/guard_client.py"

EMAIL = "jordan.whitfield@larkspur-mail.net"
PHONE = "(503) 555-0187"
SYSTEM = (
    "You are the customer support assistant of Larkspur Outdoor Gear. Answer in a friendly, "
    "concise tone. Quote the order number and the policy section you rely on, never promise a "
    "refund before the returned item has been received and inspected, and hand the case to a "
    "human agent when the customer asks for one. Customers' orders, addresses and tracking "
    "events are in the context below; do not repeat personal data the customer did not ask "
    "about, and keep every answer under two hundred words."
)
FIRST = (
    "Hello! I ordered the Ridgeline 3 tent last week and the tracking page has said 'label "
    "created' for five days now. Is it actually on its way, or should I cancel and buy one "
    "locally? My trip starts on the twenty-first."
)
ANSWER = (
    "Thanks for reaching out, and sorry for the wait. Orders of the Ridgeline 3 ship from our "
    "Reno warehouse, which had a backlog after the holiday weekend: the label is printed as "
    "soon as the order is packed, but the carrier only scans the parcel when it is picked up. "
    "Most of the backlog went out yesterday, so the first scan should appear within a day. If "
    "it does not arrive in time for your trip, section 4.2 of our shipping policy lets you "
    "cancel an order that has not been delivered, and we refund the full amount, shipping "
    "included, as soon as the carrier confirms the parcel is back with us. I have also "
    "added a note to the order so that the warehouse flags it as urgent if anything else "
    "holds it up."
)
LAST = (
    "Hi, this is Jordan Whitfield again about order LK-48213, which ships to 1428 Alder "
    f"Street, Portland, OR 97205. You can reach me at {EMAIL} or on my cell at {PHONE} any "
    "weekday after four. The tracking page finally moved this morning, but now it says the "
    "parcel was delivered to a locker at a grocery store I have never used, about six miles "
    "from my place, and I did not get any pickup code by text or by mail. I called the "
    "carrier and they told me the store closes at nine and that parcels left in its lockers "
    "for more than three days go back to the depot, so I would like to sort this out before "
    "the weekend if at all possible.\n\n"
    "Could you check with the carrier whether the locker address was entered by mistake, and "
    "whether they can reroute it to my home address or to the pickup point on Hawthorne "
    "Boulevard instead? If the parcel cannot be recovered in time, I would rather you send a "
    "replacement by express shipping than cancel: my group has already planned the route "
    "around that tent and the rental shops nearby are sold out for the season. I am happy to "
    "pay the difference for the faster shipping if your policy does not cover it, as long as "
    "it arrives before Thursday evening.\n\n"
    "For what it is worth, this is the second time this has happened with your store: my "
    "previous order, a pair of trekking poles in March, also sat in a locker I had not chosen "
    "and came back to you after three days, and it took almost two weeks to get the refund. "
    "I like your gear and would rather keep ordering from you, but I need to know that the "
    "delivery address on my account is right. Could you confirm which address is stored on "
    "the account and on this order, and remove any locker or pickup point that I did not "
    "add myself? If there is a setting I missed at checkout, please tell me where it is.\n\n"
    "One more thing: the confirmation email listed the footprint and the gear loft as "
    "included, but the product page now says they are sold separately. Were they packed in "
    "the same box, or should I order them now so they arrive with the replacement? I would "
    "also appreciate a short summary of what you decide, so I can forward it to the others "
    "in my group and to my credit union in case I need to dispute the charge later. Thanks a "
    "lot for your help, and sorry for the long message."
)


def chat_body() -> str:
    """The request body: a short conversation whose last user message the lab echoes."""
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": FIRST},
        {"role": "assistant", "content": ANSWER},
        {"role": "user", "content": LAST},
    ]
    doc = {"model": "gpt-4o-mini", "messages": messages, "temperature": 0.2, "stream": False}
    return json.dumps(doc)


BODY = chat_body()
# ~4 KB, and the PII well inside the part of the body the lab's request log keeps
assert 3584 <= len(BODY) <= 4096, len(BODY)
assert BODY.index(PHONE) < LOGGED_BODY // 2, BODY.index(PHONE)

CLIENT = r"""
import http.client, json, socket, ssl, sys, time

CTX = ssl.create_default_context()
HOST, PATH = "api.openai.com", "/v1/chat/completions"
HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}

def conn():
    c = http.client.HTTPSConnection(HOST, context=CTX, timeout=120)
    raw = socket.create_connection((HOST, 443), timeout=120)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sock = CTX.wrap_socket(raw, server_hostname=HOST)
    return c

def post(c, body):
    c.request("POST", PATH, body=body, headers=HEADERS)
    r = c.getresponse()
    return r.status, r.read()

def main(count, warm, body_file):
    with open(body_file, "rb") as f:
        body = f.read()
    sent = json.loads(body)["messages"][-1]["content"]
    c = conn()
    for _ in range(warm):  # handshake, leaf, upstream connection, caches
        post(c, body)
    ms, answers = [], []
    for _ in range(count):
        start = time.perf_counter()
        status, data = post(c, body)
        ms.append((time.perf_counter() - start) * 1000)
        answers.append((status, data))
    c.close()
    bad, wrong, first = 0, 0, None
    for status, data in answers:  # checked after the timed loop
        if status != 200:
            bad += 1
            continue
        text = json.loads(data)["choices"][0]["message"]["content"]
        first = text if first is None else first
        wrong += text != sent
    return {"ms": ms, "bad_status": bad, "wrong_answer": wrong, "answer": first}

print(json.dumps(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])))
"""


@dataclass(frozen=True)
class Case:
    """One sandbox of the benchmark: its name, policy, and the PII types it redacts."""

    name: str
    policy: SecurityPolicy
    pii_types: tuple[str, ...] = ()


def _network() -> NetworkPolicy:
    return NetworkPolicy(allow_out=[HOST], deny_out=[ALL_TRAFFIC])


def _guarded(name: str, types: tuple[str, ...]) -> Case:
    policy = SecurityPolicy(
        network=_network(),
        pii=PIIConfig(enabled=True, types=list(types)),
        injection_defense=InjectionDefenseConfig(enabled=True, action="log_only", domains=[HOST]),
        invisible_text=InvisibleTextConfig(enabled=True),
    )
    return Case(name, policy, types)


def cases() -> tuple[Case, ...]:
    noop = TransformationRule(match="zz-never-zz", replace="x", direction="outbound")
    return (
        Case("passthrough", SecurityPolicy(network=_network())),
        Case("inspected-off", SecurityPolicy(network=_network(), transformations=[noop])),
        _guarded("guards-ner-off", STRUCTURED),
        _guarded("guards-all", TYPES),
    )


def _run(s: Sandbox, count: int, warm: int) -> dict[str, Any]:
    cmd = f"python3 {CLIENT_FILE} {count} {warm} {shlex.quote(BODY_FILE)}"
    r = s.commands.run(cmd, timeout=1200)
    if r.exit_code != 0:
        raise RuntimeError(f"client failed ({r.exit_code}): {r.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    if out["bad_status"] or out["wrong_answer"]:
        raise RuntimeError(
            f"{out['bad_status']} non-200 and {out['wrong_answer']} wrong answers of {count}"
        )
    return out


def expected_types(types: tuple[str, ...]) -> set[str]:
    """The PII types a redacting guard of `types` finds in this body (so must tokenise)."""
    doc = json.loads(BODY)
    return {f.type for m in doc["messages"] for f in detect(m["content"], types)}


def _token_prefix(type_: str) -> str:
    return f"[REDACTED_{type_.upper()}_"


def check_upstream(server: Server, case: Case, since: float, want: int) -> dict[str, Any]:
    """What the lab received from this sandbox's run: every request, redacted or not."""
    settings = Settings.from_env(
        instance=server.instance, state_dir=server.state_dir, pool=POOL, lab=True
    )
    entries = [e for e in read_requests(settings, host=HOST, since=since) if e["path"] == PATH]
    if len(entries) != want:
        raise RuntimeError(f"{case.name}: the lab logged {len(entries)} requests, not {want}")
    body = str(entries[-1]["body"])
    found = expected_types(case.pii_types) if case.pii_types else set()
    if case.pii_types:
        leaked = [v for v in (EMAIL, PHONE) if v in body]
        missing = sorted(t for t in found if _token_prefix(t) not in body)
        if leaked or missing:
            raise RuntimeError(f"{case.name}: upstream saw {leaked}, lacked tokens of {missing}")
    elif EMAIL not in body or PHONE not in body:
        raise RuntimeError(f"{case.name}: the body reached the lab changed")
    return {
        "requests": len(entries),
        "upstream_bytes": entries[-1].get("body_size"),
        "redacted_types": sorted(found),
        "ner_types": sorted(found & set(NER)),
    }


def measure(server: Server, quick: bool) -> dict[str, dict[str, Any]]:
    total = 50 if quick else 400
    rounds = 2 if quick else 4
    warm = 5 if quick else 20
    per = total // rounds
    todo = cases()
    boxes: dict[str, Sandbox] = {}
    out: dict[str, dict[str, Any]] = {c.name: {"ms": []} for c in todo}
    try:
        for case in todo:
            boxes[case.name] = s = Sandbox.create(
                template="python",
                timeout=3600,
                metadata={"declaw.runtime": RUNTIME},
                security=case.policy,
            )
            s.files.write(CLIENT_FILE, CLIENT)
            s.files.write(BODY_FILE, BODY)
        for r in range(rounds):
            for case in todo[r % len(todo) :] + todo[: r % len(todo)]:
                since = time.time()
                got = _run(boxes[case.name], per, warm)
                out[case.name]["ms"] += got["ms"]
                if r == 0:
                    if got["answer"] != LAST:
                        raise RuntimeError(f"{case.name}: the answer is not the text sent")
                    out[case.name]["upstream"] = check_upstream(server, case, since, warm + per)
    finally:
        for s in boxes.values():
            s.kill(wait=True)
    return out


class _NoSecrets:
    def value(self, secret_id: str) -> str | None:
        return None


def in_process_ms(case: Case, reps: int) -> list[float]:
    """The request body and its echoed response through the sandbox's pipeline, in-process
    (no TLS, no HTTP parsing, no network): what the stages themselves cost on this body."""
    spec = parse_security(case.policy.to_dict())
    policy = InspectionPolicy(
        transformations=spec.transformations,
        invisible_text=spec.invisible_text,
        pii=spec.pii,
        injection=spec.injection,
    )
    ctx = InspectContext("sbx-bench", HOST, "https", ADDR, 443, "h1", "h1")
    pipeline = Pipeline(ctx, policy, _NoSecrets())
    body = BODY.encode()
    out = []
    for _ in range(reps + 1):
        start = time.perf_counter()
        x = ExchangeState()
        headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
        pipe = pipeline.body(x, headers, "outbound")
        sent = pipe.feed(body) + pipe.finish()
        if case.pii_types and EMAIL.encode() in sent:
            raise RuntimeError(f"{case.name}: in-process request kept the email")
        answer = json.dumps(chat_completions(sent, now=0.0).doc).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(answer)))]
        pipe = pipeline.body(x, headers, "inbound", status=200)
        back = pipe.feed(answer) + pipe.finish()
        out.append((time.perf_counter() - start) * 1000)
        if json.loads(back)["choices"][0]["message"]["content"] != LAST:
            raise RuntimeError(f"{case.name}: in-process round trip did not rehydrate")
    return out[1:]  # the first pays for lazy loads (models, compiled patterns)


def main(server: Server, quick: bool) -> Report:
    report = Report(
        "guard_latency",
        params={"host": HOST, "runtime": RUNTIME, "quick": quick, "body_bytes": len(BODY)},
    )
    header("guardrail latency: 4 KB chat completion, one keep-alive connection")
    # in-process first: seconds, and a broken stage shows before any sandbox starts
    reps = 20 if quick else 200
    alone = {c.name: in_process_ms(c, reps) for c in cases() if c.name != "passthrough"}
    got = measure(server, quick)
    pt, off = got["passthrough"]["ms"], got["inspected-off"]["ms"]
    report.samples["passthrough POST ms"] = summary(pt)
    for q in (50, 95):
        report.add(f"passthrough POST p{q}", pct(pt, q), 0, "ms", "(the floor: no HTTP layer)")
    report.add_pcts("inspected-off POST ms", off, pt, "ms", "passthrough")
    report.add("added p50: inspected-off", pct(off, 50) - pct(pt, 50), pct(pt, 50), "ms",
               "passthrough p50")  # fmt: skip
    for name in ("guards-ner-off", "guards-all"):
        ms = got[name]["ms"]
        report.samples[f"{name} POST ms"] = summary(ms)
        note = ""
        if name == "guards-ner-off":
            met = pct(ms, 50) / pct(off, 50) <= GOAL_RATIO
            note = f"goal x <= {GOAL_RATIO}: {'met' if met else 'missed'}"
        report.add(f"{name} POST p50", pct(ms, 50), pct(off, 50), "ms", "inspected-off", note)
        report.add(f"{name} POST p95", pct(ms, 95), pct(off, 95), "ms", "inspected-off")
        report.add(f"added p50: {name} vs inspected-off", pct(ms, 50) - pct(off, 50),
                   pct(off, 50), "ms", "inspected-off p50")  # fmt: skip
        report.add(f"added p50: {name} vs passthrough", pct(ms, 50) - pct(pt, 50),
                   pct(pt, 50), "ms", "passthrough p50")  # fmt: skip
    for name in ("guards-ner-off", "guards-all"):
        report.add(f"{name} pipeline in-process p50", pct(alone[name], 50),
                   pct(alone["inspected-off"], 50), "ms", "no-op rule in-process",
                   note="request + response body, no TLS or HTTP")  # fmt: skip
    report.extra = {
        "goals": GOALS,
        "upstream": {k: v.get("upstream") for k, v in got.items()},
        "in_process": {k: summary(v) for k, v in alone.items()},
    }
    report.write()
    return report


if __name__ == "__main__":
    run_standalone(main)
