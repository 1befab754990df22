"""Warm pools on a real server: a claimed sandbox is indistinguishable from a cold one.

The module's own server (leaks.OwnServer) runs with a warm pool of python sandboxes on
runc; the session server runs with pools off, so the same request made to each gives one
warm and one cold sandbox, deterministically. They are compared from inside (environment,
hostname, what the egress policy lets through, files) and from outside (the record, the
audit). The pool is seen in `GET /pools`, `declawd sandbox pools` and /metrics; it is
adopted across a kill -9 of the server; `declawd down` drains it and leaves nothing.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from declaw import ALL_TRAFFIC, NetworkPolicy, Sandbox, SecurityPolicy

from declawd.client import DeclawdClient
from declawd.store import Store
from tests.e2e import conftest as c
from tests.e2e.leaks import OwnServer, eventually, no_leak, quiet_snapshot, wait_settled

pytestmark = pytest.mark.e2e

SIZE = 2
POOL = f"python={SIZE}"
POLICY = SecurityPolicy(
    network=NetworkPolicy(allow_out=["api.openai.com"], deny_out=[ALL_TRAFFIC]),
)

# What code inside sees: its environment, hostname, egress verdicts and the files it finds.
PROBE = r"""
import json, os, socket, urllib.request

def connect(host):
    try:
        socket.create_connection((host, 443), timeout=5).close()
        return "connected"
    except Exception as e:
        return type(e).__name__

def fetch(url):
    try:
        return urllib.request.urlopen(url, timeout=5).status
    except Exception as e:
        return type(e).__name__

skip = ("/proc", "/sys", "/dev", "/run", "/tmp/probe.py")
files = []
for top in ("/tmp", "/home", "/root", "/etc"):
    for root, dirs, names in os.walk(top):
        files += [os.path.join(root, n) for n in names]
print(json.dumps({
    "env": dict(os.environ),
    "hostname": socket.gethostname(),
    "evil": connect("evil.com"),
    "ip": connect("1.1.1.1"),
    "allowed": connect("api.openai.com"),
    "urllib_evil": fetch("https://evil.com/"),
    "urllib_allowed": fetch("https://api.openai.com/v1/models"),
    "files": sorted(f for f in files if not f.startswith(skip)),
}))
"""


def _create(**opts: Any) -> Sandbox:
    return Sandbox.create(
        template="python",
        timeout=300,
        metadata={"job": "pool-test"},
        envs={"FOO": "bar"},
        security=POLICY,
        **opts,
    )


def _probe(sbx: Sandbox) -> dict[str, Any]:
    sbx.files.write("/tmp/probe.py", PROBE)
    r = sbx.commands.run("python3 /tmp/probe.py", timeout=60)
    assert r.exit_code == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def _pools(own: OwnServer) -> dict[str, Any]:
    with own.http() as h:
        r = h.get("/pools")
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body


def _ready(own: OwnServer) -> int:
    return sum(p["ready"] for p in _pools(own)["pools"] if p["template"] == "python")


def _metric(own: OwnServer, name: str, **labels: str) -> float:
    with own.http() as h:
        text = h.get("/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
        if not labels and line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{want}}} not in /metrics")


def _parked_ids(own: OwnServer) -> set[str]:
    with Store(own.settings.db_path) as store:
        return {r.sandbox_id for r in store.list_live_sandboxes() if r.pooled}


@pytest.fixture(scope="module")
def pooled(server: dict[str, str]) -> Iterator[tuple[OwnServer, dict[str, int]]]:
    """A server of the module's own with a python pool (the session server, pools off, makes
    the cold sandboxes), and the leak baseline of its instance with nothing made at all."""
    srv = OwnServer()
    srv.down()
    baseline = quiet_snapshot(srv.settings)
    srv.start_lab()
    try:
        srv.start(warm_pool=POOL)
        assert eventually(lambda: _ready(srv) == SIZE, timeout=120), _pools(srv)
        yield srv, baseline
    finally:
        srv.close()


def test_the_pool_fills_and_shows_in_the_route_the_cli_and_metrics(
    pooled: tuple[OwnServer, dict[str, int]],
) -> None:
    own, _ = pooled
    (pool,) = _pools(own)["pools"]
    assert (pool["template"], pool["runtime"], pool["target"], pool["ready"]) == (
        "python",
        "runc",
        SIZE,
        SIZE,
    )
    summary = _pools(own)
    assert summary["parked"] == SIZE and 0 < summary["memory_bytes"] <= summary["budget_bytes"]
    cli = subprocess.run(
        [str(c.BIN / "declawd"), "sandbox", "pools", "--json", *_cli_opts(own)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["pools"][0]["ready"] == SIZE
    assert _metric(own, "declawd_warm_pool_ready", template="python", runtime="runc") == SIZE
    # Nobody's team lists them.
    assert own.listed_ids() == set()


def _cli_opts(own: OwnServer) -> list[str]:
    return ["--domain", f"localhost:{own.port}", "--api-key", own.key]


def test_a_warm_create_is_indistinguishable_from_a_cold_one(
    pooled: tuple[OwnServer, dict[str, int]], api: httpx.Client
) -> None:
    own, _ = pooled
    parked = _parked_ids(own)
    hits = _metric(own, "declawd_warm_pool_claims_total", runtime="runc", outcome="hit")
    warm = _create(**own.sdk_opts())
    cold = _create()  # the session server: pools off
    try:
        assert warm.sandbox_id in parked  # it was one of the pool's
        assert (
            _metric(own, "declawd_warm_pool_claims_total", runtime="runc", outcome="hit")
            == hits + 1
        )
        inside_w, inside_c = _probe(warm), _probe(cold)
        for inside, sbx in ((inside_w, warm), (inside_c, cold)):
            assert inside["hostname"] == sbx.sandbox_id
            assert inside["env"]["DECLAW_SANDBOX_ID"] == sbx.sandbox_id
            assert inside["env"]["FOO"] == "bar"
            assert inside["evil"] == inside["ip"] == "ConnectionRefusedError"
            assert inside["allowed"] == "connected"
            assert inside["urllib_allowed"] == 200 and inside["urllib_evil"] != 200
        own_vars = ("DECLAW_SANDBOX_ID", "HOSTNAME")
        env_w = {k: v for k, v in inside_w["env"].items() if k not in own_vars}
        env_c = {k: v for k, v in inside_c["env"].items() if k not in own_vars}
        assert env_w == env_c
        for key in ("evil", "ip", "allowed", "urllib_evil", "urllib_allowed", "files"):
            assert inside_w[key] == inside_c[key], key

        # The records and the audit, from outside.
        with own.http() as h:
            view_w = h.get(f"/sandboxes/{warm.sandbox_id}").json()
        view_c = api.get(f"/sandboxes/{cold.sandbox_id}").json()
        differ = {
            *("sandbox_id", "client_id", "started_at", "end_at"),
            *("domain", "envd_access_token", "traffic_access_token"),
        }
        assert {k: v for k, v in view_w.items() if k not in differ} == {
            k: v for k, v in view_c.items() if k not in differ
        }
        # The gateways write audit events in batches: wait for both to have written them.
        warm_client = DeclawdClient(api_key=own.key, domain=f"localhost:{own.port}")
        both: list[list[tuple[str, str, str | None, int | None]]] = []

        def same() -> bool:
            both[:] = [_audit(warm_client, warm), _audit(DeclawdClient(), cold)]
            return both[0] == both[1] and len(both[0]) >= 6

        # The probes were audited (dns and connection, allow and deny), and only they.
        assert eventually(same, timeout=30), both
    finally:
        warm.kill()
        cold.kill()


def _audit(client: DeclawdClient, sbx: Sandbox) -> list[tuple[str, str, str | None, int | None]]:
    events = client.audit(sbx.sandbox_id)
    return sorted(
        (e.kind, e.verdict, e.name, e.port) for e in events if e.kind in ("dns", "connection")
    )


def test_claims_refill_and_an_empty_pool_still_creates(
    pooled: tuple[OwnServer, dict[str, int]],
) -> None:
    own, _ = pooled
    made = [_create(**own.sdk_opts()) for _ in range(SIZE + 1)]  # one more than it holds
    try:
        for sbx in made:
            assert sbx.commands.run("echo ok").stdout.strip() == "ok"
        assert eventually(lambda: _ready(own) == SIZE, timeout=120), _pools(own)
    finally:
        for sbx in made:
            sbx.kill()


def test_a_server_restart_adopts_the_pool(pooled: tuple[OwnServer, dict[str, int]]) -> None:
    own, _ = pooled
    assert eventually(lambda: _ready(own) == SIZE, timeout=120)
    before = _parked_ids(own)
    own.kill9()
    own.start(warm_pool=POOL)
    assert eventually(lambda: _ready(own) == SIZE, timeout=120)
    assert _parked_ids(own) == before  # the same sandboxes, none made anew


def test_down_drains_the_pool_and_leaves_nothing(
    pooled: tuple[OwnServer, dict[str, int]],
) -> None:
    own, baseline = pooled
    assert eventually(lambda: _ready(own) == SIZE, timeout=120)
    assert _parked_ids(own)
    own.close()  # the server, the lab, then `declawd down`
    after = wait_settled(own.settings, baseline, None)
    assert no_leak(baseline, after), (baseline, after)
    assert _parked_ids(own) == set()
