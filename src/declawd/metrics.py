"""The server's Prometheus metrics: the counters its code moves, and what a scrape reads.

`Metrics` owns a `CollectorRegistry` (never the process-global one, so tests make fresh
ones) with the event metrics; the node and the API move them through the small functions
below (`sandbox_created`, `command_run`, ...), so no other module imports prometheus.
`render` adds, per scrape, collectors that read the store and ask the gateway daemon for its
counters. Invariants: every label takes values from a fixed set (runtimes, kinds, verdicts,
reason names from our code, capped at MAX_REASONS), never a sandbox, team or template id;
a source that is down or fails leaves its metrics out and never fails the scrape.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client import generate_latest as _generate
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from declawd import errors

__all__ = [
    "CONTENT_TYPE_LATEST",
    "GatewayCollector",
    "Metrics",
    "NodeCollector",
    "command_run",
    "current",
    "pool_claimed",
    "sandbox_create_failed",
    "sandbox_created",
    "sandbox_killed",
    "sandbox_teardown_failed",
    "use",
]

log = logging.getLogger(__name__)

# No `<name>_created` series beside each counter and histogram: they double the series
# and nothing here reads them (a process-wide switch of prometheus_client).
disable_created_metrics()

RUNTIMES = ("runc", "runsc")
TEMPLATE_KINDS = ("builtin", "custom")
STARTS = ("cold", "warm")  # warm: a sandbox from a warm pool (node/pool.py)
COMMAND_KINDS = ("command", "pty", "stdio")
VERDICTS = ("allow", "deny")
EGRESS_KINDS = ("dns", "connection", "http")
KILL_REASONS = ("requested", "timeout", "error")
SANDBOX_STATES = ("creating", "running", "paused")
OTHER = "other"
# Reason labels come from our code (a few dozen names), but the gateway is another process:
# past this many distinct values the rest are summed under "other".
MAX_REASONS = 64
CREATE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0)

# Most specific first: Busy is a Conflict.
_FAILURE_REASONS: tuple[tuple[type[errors.DeclawdError], str], ...] = (
    (errors.Busy, "busy"),
    (errors.Conflict, "conflict"),
    (errors.InvalidInput, "invalid_input"),
    (errors.Unauthorized, "unauthorized"),
    (errors.Forbidden, "forbidden"),
    (errors.NotFound, "not_found"),
    (errors.Mismatch, "mismatch"),
    (errors.TooLarge, "too_large"),
    (errors.TimedOut, "timed_out"),
    (errors.NotSupported, "not_supported"),
    (errors.Unreachable, "unreachable"),
    (errors.Unavailable, "unavailable"),
    (errors.Internal, "internal"),
)
FAILURE_REASONS = (*(r for _, r in _FAILURE_REASONS), "cancelled", OTHER)
_LABEL_VALUE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def bounded(value: str, allowed: Iterable[str]) -> str:
    """`value` if it is one of `allowed`, else "other"."""
    return value if value in allowed else OTHER


def failure_reason(exc: BaseException) -> str:
    """The bounded reason label of a failed create: the domain error's class, by name."""
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
        return "cancelled"
    for cls, reason in _FAILURE_REASONS:
        if isinstance(exc, cls):
            return reason
    # Anything else leaves the create as Internal (node/create.py).
    return "internal" if isinstance(exc, Exception) else OTHER


class Metrics:
    """The event metrics of one server process, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.creates = Counter(
            "declawd_sandbox_creates",
            "Sandboxes created (started), by runtime and template kind (builtin or custom).",
            ["runtime", "template"],
            registry=reg,
        )
        self.create_failures = Counter(
            "declawd_sandbox_create_failures",
            "Creates that failed (and were undone), by runtime and error class.",
            ["runtime", "reason"],
            registry=reg,
        )
        self.create_seconds = Histogram(
            "declawd_sandbox_create_seconds",
            "Time from the node taking a create to the sandbox running; start is cold or "
            "warm (a sandbox from a warm pool, bound to the request).",
            ["runtime", "start"],
            buckets=CREATE_BUCKETS,
            registry=reg,
        )
        self.pool_claims = Counter(
            "declawd_warm_pool_claims",
            "Creates a warm pool could serve, by runtime and outcome: hit (a ready sandbox was"
            " bound to the request) or miss (none was ready: a cold create).",
            ["runtime", "outcome"],
            registry=reg,
        )
        self.kills = Counter(
            "declawd_sandbox_kills",
            "Sandboxes killed, by runtime and reason (requested, timeout, error).",
            ["runtime", "reason"],
            registry=reg,
        )
        self.teardown_failures = Counter(
            "declawd_sandbox_teardown_failures",
            "Teardowns that left something behind (retried by the reaper), by runtime.",
            ["runtime"],
            registry=reg,
        )
        self.commands = Counter(
            "declawd_commands",
            "Commands started through the API, by kind (command, pty, stdio) and gate "
            "verdict (allow, deny).",
            ["kind", "verdict"],
            registry=reg,
        )
        # Every known series from the start, at 0: rate() and absent() need no first event.
        for rt in RUNTIMES:
            for tk in TEMPLATE_KINDS:
                self.creates.labels(rt, tk)
            for start in STARTS:
                self.create_seconds.labels(rt, start)
            for kr in KILL_REASONS:
                self.kills.labels(rt, kr)
            for fr in FAILURE_REASONS:
                self.create_failures.labels(rt, fr)
            self.teardown_failures.labels(rt)
            for outcome in ("hit", "miss"):
                self.pool_claims.labels(rt, outcome)
        for kind in COMMAND_KINDS:
            for verdict in VERDICTS:
                self.commands.labels(kind, verdict)

    # Events -----------------------------------------------------------------------------
    def sandbox_created(
        self, runtime: str, template: str, seconds: float, *, start: str = "cold"
    ) -> None:
        rt = bounded(runtime, RUNTIMES)
        self.creates.labels(rt, bounded(template, TEMPLATE_KINDS)).inc()
        self.create_seconds.labels(rt, bounded(start, STARTS)).observe(max(0.0, seconds))

    def pool_claimed(self, runtime: str, *, hit: bool) -> None:
        self.pool_claims.labels(bounded(runtime, RUNTIMES), "hit" if hit else "miss").inc()

    def sandbox_create_failed(self, runtime: str, exc: BaseException) -> None:
        self.create_failures.labels(bounded(runtime, RUNTIMES), failure_reason(exc)).inc()

    def sandbox_killed(self, runtime: str, reason: str) -> None:
        self.kills.labels(bounded(runtime, RUNTIMES), bounded(reason, KILL_REASONS)).inc()

    def sandbox_teardown_failed(self, runtime: str) -> None:
        self.teardown_failures.labels(bounded(runtime, RUNTIMES)).inc()

    def command_run(self, kind: str, verdict: str) -> None:
        self.commands.labels(bounded(kind, COMMAND_KINDS), bounded(verdict, VERDICTS)).inc()

    # Exposition -------------------------------------------------------------------------
    def render(self, *collectors: Collector) -> bytes:
        """The Prometheus text of this registry plus `collectors` (read now). Blocking when
        they are (the store, the gateway's socket): call it off the event loop."""
        scrape = CollectorRegistry(auto_describe=False)
        scrape.register(_Forward(self.registry))
        for collector in collectors:
            scrape.register(collector)
        return _generate(scrape)


class _Forward(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        return self._registry.collect()


# The process's instance, and the functions the node and the API call -------------------
_current = Metrics()


def current() -> Metrics:
    return _current


def use(metrics: Metrics) -> Metrics:
    """Make `metrics` the instance the functions below move; returns the previous one."""
    global _current
    previous, _current = _current, metrics
    return previous


def sandbox_created(runtime: str, template: str, seconds: float, *, start: str = "cold") -> None:
    """A create finished: `template` is "builtin" or "custom", `seconds` its duration."""
    _current.sandbox_created(runtime, template, seconds, start=start)


def sandbox_create_failed(runtime: str, exc: BaseException) -> None:
    _current.sandbox_create_failed(runtime, exc)


def pool_claimed(runtime: str, *, hit: bool) -> None:
    """A poolable create asked its warm pool: a ready sandbox served it (hit) or not."""
    _current.pool_claimed(runtime, hit=hit)


def sandbox_killed(runtime: str, reason: str) -> None:
    """A kill was accepted; `reason` is "requested", "timeout" or "error"."""
    _current.sandbox_killed(runtime, reason)


def sandbox_teardown_failed(runtime: str) -> None:
    _current.sandbox_teardown_failed(runtime)


def command_run(kind: str, verdict: str) -> None:
    """A command's gate decided: `kind` is command, pty or stdio; `verdict` allow or deny."""
    _current.command_run(kind, verdict)


# Scrape-time collectors -----------------------------------------------------------------
def _safely(what: str, read: Callable[[], Any]) -> Any:
    try:
        return read()
    except Exception:
        log.exception("metrics: reading %s failed; left out of this scrape", what)
        return None


class NodeCollector(Collector):
    """What the node and its store hold now: live sandboxes by runtime and state, address
    slots in use out of the pool's, gateway restarts, uptime. Each source is a blocking
    callable; one that fails leaves its family out."""

    def __init__(
        self,
        *,
        live: Callable[[], Iterable[tuple[str, str]]],
        slots: Callable[[], tuple[int, int]],
        gateway_restarts: Callable[[], int],
        started_at: float,
        pools: Callable[[], Mapping[str, Any]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._live = live
        self._slots = slots
        self._restarts = gateway_restarts
        self._started_at = started_at
        self._pools = pools
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        live = _safely("live sandboxes", lambda: list(self._live()))
        if live is not None:
            family = GaugeMetricFamily(
                "declawd_sandboxes_live",
                "Sandboxes creating, running or paused on this node, by runtime and state.",
                labels=["runtime", "state"],
            )
            tally = Tally((bounded(rt, RUNTIMES), bounded(st, SANDBOX_STATES)) for rt, st in live)
            for rt in (*RUNTIMES, OTHER):
                for st in SANDBOX_STATES:
                    if rt != OTHER or tally[(rt, st)]:
                        family.add_metric([rt, st], tally[(rt, st)])
            yield family
        slots = _safely("address slots", self._slots)
        if slots is not None:
            used, total = slots
            yield GaugeMetricFamily(
                "declawd_address_slots_used",
                "Address slots (a /30 of the pool each) held by unreleased sandboxes.",
                value=used,
            )
            yield GaugeMetricFamily(
                "declawd_address_slots", "Address slots the pool has in all.", value=total
            )
        restarts = _safely("gateway restarts", self._restarts)
        if restarts is not None:
            yield CounterMetricFamily(
                "declawd_gateway_restarts",
                "Times the node restarted the gateway daemon since the server started.",
                value=restarts,
            )
        pools = _safely("warm pools", self._pools) if self._pools is not None else None
        if pools is not None:
            yield from _pool_families(pools)
        yield GaugeMetricFamily(
            "declawd_uptime_seconds",
            "Seconds since the server started.",
            value=max(0.0, self._clock() - self._started_at),
        )


def _pool_families(summary: Mapping[str, Any]) -> Iterator[Metric]:
    """The warm pools by template alias (the operator's configured names, a bounded set,
    never a template id) and runtime; their memory against the budget."""
    ready = GaugeMetricFamily(
        "declawd_warm_pool_ready",
        "Sandboxes ready in each warm pool, by template alias and runtime.",
        labels=["template", "runtime"],
    )
    target = GaugeMetricFamily(
        "declawd_warm_pool_target",
        "Sandboxes each warm pool keeps ready, by template alias and runtime.",
        labels=["template", "runtime"],
    )
    for pool in list(summary.get("pools") or [])[:MAX_REASONS]:
        labels = [str(pool.get("template", OTHER)), bounded(str(pool.get("runtime")), RUNTIMES)]
        ready.add_metric(labels, _num(pool, "ready"))
        target.add_metric(labels, _num(pool, "target"))
    yield ready
    yield target
    yield GaugeMetricFamily(
        "declawd_warm_pool_memory_bytes",
        "Memory the pooled sandboxes' cgroups use now, all pools together.",
        value=_num(summary, "memory_bytes"),
    )
    yield GaugeMetricFamily(
        "declawd_warm_pool_budget_bytes",
        "The most the warm pools may use; refill stops there.",
        value=_num(summary, "budget_bytes"),
    )


def _num(source: Any, key: str) -> float:
    value = source.get(key) if isinstance(source, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return 0.0
    return float(value)


def _reasons(source: Any) -> dict[str, float]:
    """A reason → count map from the daemon, with bounded, well-formed label values."""
    out: dict[str, float] = {}
    if not isinstance(source, Mapping):
        return out
    named = 0
    for reason in sorted(source, key=str):
        name = str(reason)
        if not _LABEL_VALUE.match(name) or (name not in out and named >= MAX_REASONS):
            name = OTHER
        elif name not in out:
            named += 1
        out[name] = out.get(name, 0.0) + _num(source, reason)
    return out


class GatewayCollector(Collector):
    """The gateway daemon's counters, asked for at scrape time (`fetch`: its `stats` answer,
    or None when it does not answer). The daemon counts since it started (see
    declawd_gateway_start_time_seconds): a restart resets them, as counters may."""

    def __init__(self, fetch: Callable[[], Mapping[str, Any] | None]) -> None:
        self._fetch = fetch

    def collect(self) -> Iterator[Metric]:
        stats = _safely("gateway stats", self._fetch)
        up = isinstance(stats, Mapping)
        yield GaugeMetricFamily(
            "declawd_gateway_up",
            "1 when the gateway daemon answered this scrape's stats request, else 0.",
            value=1 if up else 0,
        )
        if not up:
            return
        yield from _gateway_families(stats)


def _gateway_families(stats: Mapping[str, Any]) -> Iterator[Metric]:
    proxy, resolver = stats.get("proxy"), stats.get("resolver")
    decisions = stats.get("decisions")
    http = decisions.get("http") if isinstance(decisions, Mapping) else None
    datapath = decisions.get("datapath") if isinstance(decisions, Mapping) else None
    yield GaugeMetricFamily(
        "declawd_gateway_start_time_seconds",
        "When the gateway daemon started (Unix time); its counters start at 0 then.",
        value=_num(stats, "started_at"),
    )
    yield GaugeMetricFamily(
        "declawd_gateway_sandboxes",
        "Sandboxes in the gateway daemon's table.",
        value=_num(stats, "sandboxes"),
    )
    egress = CounterMetricFamily(
        "declawd_egress_decisions",
        "Egress decisions, by kind (dns: resolver answers; connection: proxied connections "
        "and the datapath's logged packets; http: inspected requests) and verdict.",
        labels=["kind", "verdict"],
    )
    for verdict, key in (("allow", "allowed"), ("deny", "denied")):
        egress.add_metric(["dns", verdict], _num(resolver, key))
        egress.add_metric(["connection", verdict], _num(proxy, key) + _num(datapath, verdict))
        egress.add_metric(["http", verdict], _num(http, verdict))
    yield egress
    reasons = CounterMetricFamily(
        "declawd_egress_proxy_reasons",
        "The proxy's decisions on connections by reason (e.g. sni_allowed, sni_not_allowed).",
        labels=["reason"],
    )
    for reason, count in _reasons(
        proxy.get("reasons") if isinstance(proxy, Mapping) else None
    ).items():
        reasons.add_metric([reason], count)
    yield reasons
    moved = CounterMetricFamily(
        "declawd_egress_proxy_bytes",
        "Bytes the proxy relayed: up (sandbox to upstream) and down.",
        labels=["direction"],
    )
    moved.add_metric(["up"], _num(proxy, "bytes_up"))
    moved.add_metric(["down"], _num(proxy, "bytes_down"))
    yield moved
    yield CounterMetricFamily(
        "declawd_egress_proxy_connections",
        "Connections the proxy accepted.",
        value=_num(proxy, "accepted"),
    )
    yield CounterMetricFamily(
        "declawd_egress_proxy_cuts",
        "Established connections reset because a new policy no longer allows them.",
        value=_num(proxy, "cut"),
    )
    yield GaugeMetricFamily(
        "declawd_egress_proxy_active_connections",
        "Connections the proxy holds open now.",
        value=_num(proxy, "active"),
    )
    yield CounterMetricFamily(
        "declawd_resolver_queries",
        "DNS queries the resolver received from sandboxes.",
        value=_num(resolver, "queries"),
    )
    answers = CounterMetricFamily(
        "declawd_resolver_answers",
        "Allowed queries answered, from upstream or from the per-sandbox cache.",
        labels=["source"],
    )
    answers.add_metric(["upstream"], _num(resolver, "forwarded"))
    answers.add_metric(["cache"], _num(resolver, "cached"))
    yield answers
    yield CounterMetricFamily(
        "declawd_resolver_servfail",
        "Queries answered SERVFAIL (upstream or datapath failure).",
        value=_num(resolver, "servfail"),
    )
    refusals = CounterMetricFamily(
        "declawd_resolver_refusals",
        "Queries the resolver refused, by reason (not_allowed, rate_limited, qtype_blocked, ...).",
        labels=["reason"],
    )
    refused = resolver.get("refusals") if isinstance(resolver, Mapping) else None
    for reason, count in _reasons(refused).items():
        refusals.add_metric([reason], count)
    yield refusals
