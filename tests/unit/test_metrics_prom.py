"""Prometheus metrics (declawd.metrics) with fresh registries: the counters the node and the
API move, the node's create/kill/teardown instrumentation on a node of fakes, the store and
gateway collectors (a real gateway daemon's `stats` over its control socket, a fake socket
that answers nonsense, none at all), and /metrics parsed by prometheus_client's parser."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from dnslib import DNSRecord
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from declawd import metrics
from declawd.api import misc
from declawd.api.errors import body_of, status_of
from declawd.config import Settings
from declawd.egress import gateway
from declawd.egress.policy import EgressPolicy
from declawd.errors import Busy, DeclawdError, TimedOut
from declawd.inspect.model import HttpAudit
from declawd.node.create import CreateRequest
from declawd.node.gatewayd import GatewayDaemon as NodeGateway
from declawd.node.gatewayd import read_stats
from declawd.node.parts import GatewayEntry
from declawd.store import SandboxState
from declawd.store.model import POOL_TEAM
from declawd.upstream import choose_upstream
from tests.unit.node.fakes import TEAM, NodeFakes, number_creates, record, sandbox_id, template

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and sorted labels (parsed, so it must parse)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def scrape(m: metrics.Metrics, *collectors: Collector) -> Samples:
    return samples(m.render(*collectors).decode())


@pytest.fixture
def fresh() -> Iterator[metrics.Metrics]:
    """A fresh instance, made the one the module's functions move for the test."""
    m = metrics.Metrics()
    previous = metrics.use(m)
    try:
        yield m
    finally:
        metrics.use(previous)


# The event metrics ---------------------------------------------------------------------


def test_known_series_exist_at_zero_before_any_event() -> None:
    found = scrape(metrics.Metrics())
    for rt in ("runc", "runsc"):
        assert value(found, "declawd_sandbox_creates_total", runtime=rt, template="custom") == 0
        assert value(found, "declawd_sandbox_kills_total", runtime=rt, reason="timeout") == 0
        assert value(found, "declawd_sandbox_create_seconds_count", runtime=rt, start="cold") == 0
    assert value(found, "declawd_commands_total", kind="pty", verdict="deny") == 0
    assert not any(name.endswith("_created") for name, _ in found)


def test_the_functions_move_the_instance_in_use(fresh: metrics.Metrics) -> None:
    metrics.sandbox_created("runsc", "builtin", 0.7)
    metrics.sandbox_created("runsc", "builtin", 3.5)
    metrics.sandbox_killed("runc", "requested")
    metrics.sandbox_teardown_failed("runc")
    metrics.command_run("stdio", "allow")
    metrics.command_run("command", "deny")
    found = scrape(fresh)
    assert value(found, "declawd_sandbox_creates_total", runtime="runsc", template="builtin") == 2
    hist = {"runtime": "runsc", "start": "cold"}
    assert value(found, "declawd_sandbox_create_seconds_count", **hist) == 2
    assert value(found, "declawd_sandbox_create_seconds_sum", **hist) == pytest.approx(4.2)
    assert value(found, "declawd_sandbox_create_seconds_bucket", le="1.0", **hist) == 1
    assert value(found, "declawd_sandbox_create_seconds_bucket", le="5.0", **hist) == 2
    assert value(found, "declawd_sandbox_kills_total", runtime="runc", reason="requested") == 1
    assert value(found, "declawd_sandbox_teardown_failures_total", runtime="runc") == 1
    assert value(found, "declawd_commands_total", kind="stdio", verdict="allow") == 1
    assert value(found, "declawd_commands_total", kind="command", verdict="deny") == 1
    # Another instance saw none of it: tests and processes do not share counters.
    other = scrape(metrics.Metrics())
    assert value(other, "declawd_commands_total", kind="stdio", verdict="allow") == 0


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (Busy("still creating"), "busy"),
        (TimedOut("ready_cmd still failing"), "timed_out"),
        (RuntimeError("runc broke"), "internal"),
        (asyncio.CancelledError(), "cancelled"),
    ],
)
def test_create_failures_are_labelled_by_error_class(exc: BaseException, reason: str) -> None:
    m = metrics.Metrics()
    m.sandbox_create_failed("runc", exc)
    found = scrape(m)
    assert value(found, "declawd_sandbox_create_failures_total", runtime="runc", reason=reason) == 1


def test_unknown_label_values_collapse_into_other() -> None:
    m = metrics.Metrics()
    m.sandbox_created("kata", "tpl-0123456789ab", 1.0, start="lukewarm")
    m.command_run("sbx-deadbeef", "maybe")
    m.sandbox_killed("runc", "because")
    found = scrape(m)
    assert value(found, "declawd_sandbox_creates_total", runtime="other", template="other") == 1
    assert value(found, "declawd_sandbox_create_seconds_count", runtime="other", start="other") == 1
    assert value(found, "declawd_commands_total", kind="other", verdict="other") == 1
    assert value(found, "declawd_sandbox_kills_total", runtime="runc", reason="other") == 1
    assert not [k for k in found if any("sbx-" in v or "tpl-" in v for _, v in k[1])]


# The node's instrumentation, on a node of fakes ---------------------------------------


@pytest.fixture
async def node_fakes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh: metrics.Metrics
) -> AsyncIterator[NodeFakes]:
    number_creates(monkeypatch)
    with NodeFakes.build(tmp_path) as f:
        yield f
        await f.settle()


async def test_creates_kills_and_failures_move_the_counters(
    node_fakes: NodeFakes, fresh: metrics.Metrics
) -> None:
    node = node_fakes.node
    builtin = CreateRequest(team_id=TEAM, template=template(), timeout=300)
    custom = CreateRequest(team_id=TEAM, template=template(team_id=TEAM), timeout=300)
    first = await node.create(builtin)
    second = await node.create(custom)
    third = await node.create(builtin)
    node_fakes.steps.fail("runc.run_detached")
    with pytest.raises(DeclawdError):
        await node.create(builtin)

    assert await node.kill(first.sandbox_id)
    # At its end time the reaper kills with no error: counted as a timeout.
    node_fakes.store.update_sandbox(second.sandbox_id, end_at=time.time() - 1)
    assert await node.kill(second.sandbox_id)
    assert await node._kill_with_error(third.sandbox_id, "sandbox died: container gone")
    assert not await node.kill(first.sandbox_id)  # not killable twice, not counted twice

    found = scrape(fresh)
    assert value(found, "declawd_sandbox_creates_total", runtime="runc", template="builtin") == 2
    assert value(found, "declawd_sandbox_creates_total", runtime="runc", template="custom") == 1
    assert value(found, "declawd_sandbox_create_seconds_count", runtime="runc", start="cold") == 3
    failures = value(
        found, "declawd_sandbox_create_failures_total", runtime="runc", reason="internal"
    )
    assert failures == 1
    kills = {
        r: value(found, "declawd_sandbox_kills_total", runtime="runc", reason=r)
        for r in ("requested", "timeout", "error")
    }
    assert kills == {"requested": 1, "timeout": 1, "error": 1}
    assert value(found, "declawd_sandbox_teardown_failures_total", runtime="runc") == 0


async def test_a_teardown_that_leaves_something_is_counted(
    node_fakes: NodeFakes, fresh: metrics.Metrics
) -> None:
    rec = await node_fakes.node.create(
        CreateRequest(team_id=TEAM, template=template(), timeout=300)
    )
    node_fakes.steps.fail("networks.destroy")
    assert await node_fakes.node.kill(rec.sandbox_id)
    assert node_fakes.get(rec.sandbox_id).released is False
    found = scrape(fresh)
    assert value(found, "declawd_sandbox_teardown_failures_total", runtime="runc") == 1


# The store's collector ------------------------------------------------------------------


def test_node_collector_counts_live_sandboxes_slots_restarts_and_uptime() -> None:
    live = [("runc", "running"), ("runc", "running"), ("runsc", "paused"), ("runc", "creating")]
    collector = metrics.NodeCollector(
        live=lambda: live,
        slots=lambda: (5, 16382),
        gateway_restarts=lambda: 2,
        started_at=1000.0,
        clock=lambda: 1042.5,
    )
    found = scrape(metrics.Metrics(), collector)
    assert value(found, "declawd_sandboxes_live", runtime="runc", state="running") == 2
    assert value(found, "declawd_sandboxes_live", runtime="runc", state="creating") == 1
    assert value(found, "declawd_sandboxes_live", runtime="runsc", state="paused") == 1
    assert value(found, "declawd_sandboxes_live", runtime="runsc", state="running") == 0
    assert value(found, "declawd_address_slots_used") == 5
    assert value(found, "declawd_address_slots") == 16382
    assert value(found, "declawd_gateway_restarts_total") == 2
    assert value(found, "declawd_uptime_seconds") == 42.5


def test_a_failing_source_leaves_its_family_out_and_the_scrape_answers() -> None:
    def broken() -> list[tuple[str, str]]:
        raise OSError("database is locked")

    collector = metrics.NodeCollector(
        live=broken, slots=lambda: (0, 10), gateway_restarts=lambda: 0, started_at=time.time()
    )
    found = scrape(metrics.Metrics(), collector)
    assert not [k for k in found if k[0] == "declawd_sandboxes_live"]
    assert value(found, "declawd_address_slots") == 10


# The gateway's collector ----------------------------------------------------------------


class FakeSets:
    def admit(self, slot: int, timeouts: Mapping[str, float]) -> None:
        pass

    def replace(self, slot: int, timeouts: Mapping[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A state dir short enough for a unix socket path (108 bytes at most)."""
    with tempfile.TemporaryDirectory(prefix="dcm", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
async def daemon(short_dir: Path) -> AsyncIterator[gateway.GatewayDaemon]:
    config = gateway.GatewayConfig(
        state_dir=short_dir,
        upstream_dns=("127.0.0.1", 9),
        listen_host="127.0.0.1",
        dns_port=0,
        proxy_port=0,
        nflog=False,
    )
    d = gateway.GatewayDaemon(config, nft=FakeSets())
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


async def _ask_dns(port: int, name: str) -> DNSRecord:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bytes] = loop.create_future()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            if not answer.done():
                answer.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(DNSRecord.question(name).pack())
        return DNSRecord.parse(await asyncio.wait_for(answer, 5))
    finally:
        transport.close()


async def test_a_real_daemons_stats_reach_the_scrape(
    daemon: gateway.GatewayDaemon, short_dir: Path
) -> None:
    # A "sandbox" at 127.0.0.1, so queries from this test are its queries.
    settings = Settings(state_dir=short_dir, instance="dcunit", lab=True)
    node_side = NodeGateway(settings, choose_upstream(settings))
    policy = EgressPolicy.parse(["api.openai.com"], ["0.0.0.0/0"])
    await node_side.sync({"sbx-metrics": GatewayEntry(3, "127.0.0.1", policy)})
    await daemon.reload()
    assert daemon.resolver is not None
    await _ask_dns(daemon.resolver.port, "evil.example.com")
    await _ask_dns(daemon.resolver.port, "evil.example.com")
    daemon._on_http_audit("sbx-metrics", "203.0.113.10", 443, HttpAudit({"url": "/"}, "deny"))
    if daemon.proxy is not None:
        daemon.proxy.count("bytes_up", 1234)

    stats = await asyncio.to_thread(node_side.stats)
    assert stats is not None and "sbx-metrics" not in json.dumps(stats)
    # The scrape blocks on the socket: off the loop the daemon runs on, as the route does.
    collector = metrics.GatewayCollector(node_side.stats)
    found = await asyncio.to_thread(scrape, metrics.Metrics(), collector)
    assert value(found, "declawd_gateway_up") == 1
    assert value(found, "declawd_gateway_sandboxes") == 1
    assert value(found, "declawd_resolver_queries_total") == 2
    assert value(found, "declawd_resolver_refusals_total", reason="not_allowed") == 2
    assert value(found, "declawd_egress_decisions_total", kind="dns", verdict="deny") == 2
    assert value(found, "declawd_egress_decisions_total", kind="dns", verdict="allow") == 0
    assert value(found, "declawd_egress_decisions_total", kind="http", verdict="deny") == 1
    assert value(found, "declawd_egress_decisions_total", kind="connection", verdict="deny") == 0
    assert value(found, "declawd_egress_proxy_bytes_total", direction="up") == 1234
    assert value(found, "declawd_gateway_start_time_seconds") == pytest.approx(daemon.started_at)


def test_no_daemon_is_gateway_up_zero_and_nothing_else(short_dir: Path) -> None:
    fetch = lambda: read_stats(short_dir / "control.sock", timeout=0.5)  # noqa: E731
    found = scrape(metrics.Metrics(), metrics.GatewayCollector(fetch))
    assert value(found, "declawd_gateway_up") == 0
    from_gateway = ("declawd_egress_", "declawd_resolver_", "declawd_gateway_s")
    assert not [k for k in found if k[0].startswith(from_gateway)]


@contextlib.contextmanager
def fake_control(path: Path, answer: bytes | None) -> Iterator[list[bytes]]:
    """A unix socket server answering every connection with `answer` (None: never)."""
    asked: list[bytes] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    server.settimeout(0.05)  # accept() is not woken by close(): poll the stop flag
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            with conn:
                asked.append(conn.recv(100))
                if answer is None:
                    stop.wait(2)
                else:
                    conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield asked
    finally:
        stop.set()
        server.close()
        thread.join(5)


@pytest.mark.parametrize("answer", [b"error unknown command 'stats'\n", b"[1, 2]\n", None])
def test_a_daemon_that_answers_nonsense_or_nothing_is_down(
    short_dir: Path, answer: bytes | None
) -> None:
    path = short_dir / "control.sock"
    with fake_control(path, answer) as asked:
        began = time.monotonic()
        found = scrape(
            metrics.Metrics(), metrics.GatewayCollector(lambda: read_stats(path, timeout=0.3))
        )
        assert time.monotonic() - began < 2
    assert asked == [b"stats\n"]
    assert value(found, "declawd_gateway_up") == 0


def test_reason_labels_are_bounded_and_well_formed(short_dir: Path) -> None:
    reasons = {f"reason_{i:03d}": 1 for i in range(100)}
    stats = {
        "proxy": {"allowed": 3, "denied": 4, "reasons": {**reasons, 'bad"label': 5}},
        "resolver": {"refusals": {"not_allowed": 7, "": 1}},
        "decisions": {"datapath": {"allow": 1, "deny": 2}},
    }
    path = short_dir / "control.sock"
    with fake_control(path, json.dumps(stats).encode() + b"\n"):
        found = scrape(metrics.Metrics(), metrics.GatewayCollector(lambda: read_stats(path)))
    proxy_reasons = {
        dict(k[1])["reason"]: v
        for k, v in found.items()
        if k[0] == "declawd_egress_proxy_reasons_total"
    }
    assert len(proxy_reasons) == metrics.MAX_REASONS + 1
    assert proxy_reasons["other"] == 100 - metrics.MAX_REASONS + 5
    assert value(found, "declawd_resolver_refusals_total", reason="not_allowed") == 7
    assert value(found, "declawd_resolver_refusals_total", reason="other") == 1
    # Proxied connections and the datapath's logged packets are both connection decisions.
    assert value(found, "declawd_egress_decisions_total", kind="connection", verdict="deny") == 6


# The route ------------------------------------------------------------------------------


class FakeStore:
    def __init__(self) -> None:
        self.records = [
            record(sandbox_id(1), SandboxState.RUNNING, slot=1),
            record(sandbox_id(2), SandboxState.PAUSED, slot=2, runtime="runsc"),
            # Parked in a warm pool: the pool gauges count it, not the live sandboxes.
            record(sandbox_id(4), SandboxState.RUNNING, slot=4).replace(team_id=POOL_TEAM),
        ]

    def authenticate(self, key: str) -> dict[str, str] | None:
        return {"team_id": TEAM, "key_id": "key-1"} if key == "good" else None

    def list_live_sandboxes(self) -> list[Any]:
        return self.records

    def list_unreleased_sandboxes(self) -> list[Any]:
        killed = record(sandbox_id(3), SandboxState.KILLED, slot=3, released=False)
        return [*self.records, killed]


class FakeNode:
    gateway_restarts = 3

    def gateway_stats(self) -> dict[str, Any] | None:
        return None  # the daemon is down

    def pool_summary(self) -> dict[str, Any]:
        return POOLS


POOLS = {
    "pools": [
        {"template": "python", "runtime": "runc", "target": 3, "ready": 1},
        {"template": "base", "runtime": "runsc", "target": 2, "ready": 2},
    ],
    "parked": 3,
    "memory_bytes": 12 << 20,
    "budget_bytes": 768 << 20,
}


@pytest.fixture
def client(fresh: metrics.Metrics) -> Iterator[TestClient]:
    app = FastAPI()
    app.state.services = SimpleNamespace(
        store=FakeStore(),
        node=FakeNode(),
        settings=Settings(pool="10.77.0.0/16"),
        started_at=time.time() - 10,
    )

    @app.exception_handler(DeclawdError)
    async def _error(request: Request, exc: DeclawdError) -> JSONResponse:
        return JSONResponse(body_of(exc), status_code=status_of(exc))

    app.include_router(misc.router)
    with TestClient(app) as c:
        yield c


def test_metrics_needs_a_key(client: TestClient) -> None:
    answer = client.get("/metrics")
    assert answer.status_code == 401 and "API key" in answer.json()["message"]
    assert client.get("/metrics", headers={"X-API-Key": "wrong"}).status_code == 401


def test_metrics_answers_prometheus_text_that_moves(
    client: TestClient, fresh: metrics.Metrics
) -> None:
    answer = client.get("/metrics", headers={"Authorization": "Bearer good"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")
    before = samples(answer.text)
    assert value(before, "declawd_sandboxes_live", runtime="runc", state="running") == 1
    assert value(before, "declawd_sandboxes_live", runtime="runsc", state="paused") == 1
    assert value(before, "declawd_sandboxes_live", runtime="runc", state="running") == 1
    assert value(before, "declawd_address_slots_used") == 4  # the killed one still holds its slot
    assert value(before, "declawd_warm_pool_ready", template="python", runtime="runc") == 1
    assert value(before, "declawd_warm_pool_target", template="python", runtime="runc") == 3
    assert value(before, "declawd_warm_pool_ready", template="base", runtime="runsc") == 2
    assert value(before, "declawd_warm_pool_memory_bytes") == 12 << 20
    assert value(before, "declawd_warm_pool_budget_bytes") == 768 << 20
    assert value(before, "declawd_address_slots") == 65536 // 4 - 1
    assert value(before, "declawd_gateway_restarts_total") == 3
    assert value(before, "declawd_gateway_up") == 0
    assert 9 < value(before, "declawd_uptime_seconds") < 60

    metrics.command_run("command", "allow")
    after = samples(client.get("/metrics", headers={"X-API-Key": "good"}).text)
    key = {"kind": "command", "verdict": "allow"}
    assert (
        value(after, "declawd_commands_total", **key)
        == value(before, "declawd_commands_total", **key) + 1
    )


# The docs ------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _every_name() -> set[str]:
    stats = {"proxy": {"reasons": {"sni_allowed": 1}}, "resolver": {"refusals": {"x": 1}}}
    collectors = (
        metrics.NodeCollector(
            live=lambda: [("runc", "running")],
            slots=lambda: (1, 2),
            gateway_restarts=lambda: 0,
            started_at=0.0,
            pools=lambda: POOLS,
        ),
        metrics.GatewayCollector(lambda: stats),
    )
    text = metrics.Metrics().render(*collectors).decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(s.name for s in family.samples)
    return names


def test_the_docs_and_the_dashboard_name_exactly_the_metrics_there_are() -> None:
    exported = _every_name()
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", ())
        for name in re.findall(r"declawd_[a-z_]+", target["expr"])
    }
    assert queried and queried <= exported, queried - exported
    section = (DOCS / "operations.md").read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(declawd_[a-z_]+)`", section))
    families = {n for n in exported if not n.endswith(("_bucket", "_count", "_sum"))}
    families = {n for n in families if n + "_total" not in families}  # counters: the sample name
    assert documented == families, (documented - families, families - documented)
