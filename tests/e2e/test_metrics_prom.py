"""Prometheus /metrics on the session server, parsed by prometheus_client's parser: the
counters move as a sandbox is created, runs commands, is refused a name and a connection,
and is killed; the gateway daemon answers the scrape; the route needs a key.

(tests/e2e/test_metrics.py is the other "metrics": one sandbox's CPU/memory series.)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import pytest
from declaw import ALL_TRAFFIC, NetworkPolicy, Sandbox, SecurityPolicy
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

CONNECT = r"""
import socket, sys
s = socket.socket(); s.settimeout(5)
try:
    s.connect((sys.argv[1], 443)); print("CONNECTED")
except OSError as e:
    print(type(e).__name__)
"""


def scrape(server: dict[str, str]) -> Samples:
    answer = httpx.get(
        server["url"] + "/metrics", headers={"Authorization": f"Bearer {server['key']}"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=")
    out: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def get(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def eventually(
    server: dict[str, str], done: Callable[[Samples], bool], timeout: float = 15
) -> Samples:
    """Scrape until `done` holds (the gateway counts as events arrive), or give the last."""
    deadline = time.monotonic() + timeout
    found = scrape(server)
    while not done(found) and time.monotonic() < deadline:
        time.sleep(0.3)
        found = scrape(server)
    return found


def test_metrics_needs_a_key(server: dict[str, str]) -> None:
    answer = httpx.get(server["url"] + "/metrics")
    assert answer.status_code == 401 and "API key" in answer.json()["message"]


def test_counters_move_as_a_sandbox_lives_and_is_refused(
    server: dict[str, str], runtime: str
) -> None:
    before = scrape(server)
    assert get(before, "declawd_gateway_up") == 1
    assert get(before, "declawd_address_slots") > 0

    sbx = Sandbox.create(
        template="python",
        timeout=120,
        metadata={"declaw.runtime": runtime},
        security=SecurityPolicy(
            network=NetworkPolicy(allow_out=["api.openai.com"], deny_out=[ALL_TRAFFIC])
        ),
    )
    try:
        during = scrape(server)
        live = get(during, "declawd_sandboxes_live", runtime=runtime, state="running")
        assert live >= 1
        assert get(during, "declawd_address_slots_used") >= 1

        sbx.files.write("/tmp/connect.py", CONNECT)
        assert sbx.commands.run("true").exit_code == 0
        # A name the policy refuses (the resolver says no), then an address it refuses (the
        # datapath says no): neither connects.
        for target in ("evil.com", "198.51.100.20"):
            r = sbx.commands.run(f"python3 /tmp/connect.py {target}", timeout=30)
            assert r.exit_code == 0 and r.stdout.strip() != "CONNECTED", (target, r.stdout)
    finally:
        sbx.kill(wait=True)

    def moved(found: Samples) -> bool:
        return all(
            get(found, name, **labels) > get(before, name, **labels)
            for name, labels in (
                ("declawd_egress_decisions_total", {"kind": "dns", "verdict": "deny"}),
                ("declawd_egress_decisions_total", {"kind": "connection", "verdict": "deny"}),
            )
        )

    after = eventually(server, moved)

    def delta(name: str, **labels: str) -> float:
        return get(after, name, **labels) - get(before, name, **labels)

    assert delta("declawd_sandbox_creates_total", runtime=runtime, template="builtin") == 1
    assert delta("declawd_sandbox_create_seconds_count", runtime=runtime, start="cold") == 1
    assert delta("declawd_sandbox_create_seconds_sum", runtime=runtime, start="cold") > 0
    assert delta("declawd_sandbox_kills_total", runtime=runtime, reason="requested") == 1
    assert delta("declawd_commands_total", kind="command", verdict="allow") == 3
    assert delta("declawd_resolver_queries_total") >= 1
    assert delta("declawd_resolver_refusals_total", reason="not_allowed") >= 1
    assert delta("declawd_egress_decisions_total", kind="dns", verdict="deny") >= 1, json.dumps(
        {k[0]: v for k, v in after.items() if k[0].startswith("declawd_egress")}, default=str
    )
    assert delta("declawd_egress_decisions_total", kind="connection", verdict="deny") >= 1
    assert get(after, "declawd_gateway_up") == 1
    assert get(after, "declawd_uptime_seconds") > get(before, "declawd_uptime_seconds")
    # No sandbox id in any label: the series do not grow with sandboxes.
    assert not [k for k in after if any(sbx.sandbox_id in v for _, v in k[1])]
