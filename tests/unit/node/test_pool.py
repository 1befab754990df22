"""Warm pools on a node of fakes: fill, claim and bind, drain, adoption, failures."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest

from declawd import metrics
from declawd.egress.policy import EgressPolicy
from declawd.errors import DeclawdError, InvalidInput, NotFound
from declawd.node.create import CreateRequest
from declawd.node.pool import NO_EGRESS, WarmPools
from declawd.node.poolspec import PoolTarget, auto_size, parse_pool_spec, targets_for
from declawd.runtime import Mount
from declawd.store import SandboxState
from declawd.store.model import POOL_TEAM
from declawd.templates.model import Template
from tests.unit.node.fakes import TEAM, NodeFakes, sandbox_id, template

PYTHON = template(template_id="tpl-00000000000a", alias="python")
POLICY = EgressPolicy.parse(["api.openai.com"], ["0.0.0.0/0"])


def _pools(
    fakes: NodeFakes,
    *targets: PoolTarget,
    budget: int = 1 << 30,
    templates: dict[str, Template] | None = None,
) -> WarmPools:
    known = templates if templates is not None else {"python": PYTHON}

    def resolve(alias: str) -> Template:
        if alias not in known:
            raise NotFound(f"template '{alias}' not found")
        return known[alias]

    pools = WarmPools(
        fakes.parts,
        targets or (PoolTarget("python", "runc", 2),),
        budget_bytes=budget,
        kill=fakes.node._kill_parked,
        resolve=resolve,
    )
    fakes.node.pools = pools
    return pools


def _request(**changes: Any) -> CreateRequest:
    return replace(CreateRequest(team_id=TEAM, template=PYTHON, timeout=120), **changes)


def _comparable(rec: Any) -> dict[str, Any]:
    """What a user can see of a record, less what differs between any two sandboxes."""
    skip = {"sandbox_id", "slot", "address", "created_at", "started_at", "end_at"}
    return {k: v for k, v in vars(rec).items() if k not in skip}


# Fill ----------------------------------------------------------------------------------


async def test_refill_makes_parked_sandboxes_with_no_egress(fakes: NodeFakes) -> None:
    pools = _pools(fakes)
    await pools.tick()

    parked = [r for r in fakes.store.list_live_sandboxes() if r.pooled]
    assert [r.sandbox_id for r in parked] == [sandbox_id(1), sandbox_id(2)]
    for rec in parked:
        assert rec.team_id == POOL_TEAM and rec.state is SandboxState.RUNNING
        assert rec.end_at is None  # no deadline: the reaper never times it out
        assert rec.template_id == PYTHON.template_id
        assert fakes.networks.policies[rec.sandbox_id] == NO_EGRESS
        assert fakes.gateway.entries[rec.sandbox_id].policy == NO_EGRESS
        assert fakes.runtime.containers[rec.sandbox_id] == "running"
    assert pools.status() == [
        {
            "template": "python",
            "template_id": PYTHON.template_id,
            "runtime": "runc",
            "target": 2,
            "ready": 2,
            "filling": 0,
            "failures": 0,
        }
    ]
    # A user's team sees none of them.
    assert fakes.store.list_sandboxes(TEAM)[0] == []
    await pools.tick()  # full: nothing more is made
    assert len([r for r in fakes.store.list_live_sandboxes() if r.pooled]) == 2


async def test_a_pooled_start_command_waits_for_the_claim(fakes: NodeFakes) -> None:
    served = template(template_id="tpl-00000000000b", alias="web", start_cmd="serve --port 80")
    pools = _pools(fakes, PoolTarget("web", "runc", 1), templates={"web": served})
    await pools.tick()
    assert fakes.envd.of(sandbox_id(1)).started == []

    rec = await fakes.node.create(_request(template=served, envs={"MODE": "warm"}))
    assert rec.sandbox_id == sandbox_id(1)
    ((_cmd, kwargs),) = fakes.envd.of(sandbox_id(1)).started
    assert kwargs["envs"]["MODE"] == "warm"  # the claimer's envs, as in a cold create


async def test_the_budget_bounds_the_refill(fakes: NodeFakes, monkeypatch: Any) -> None:
    pools = _pools(fakes, PoolTarget("python", "runc", 5), budget=100 << 20)
    monkeypatch.setattr(WarmPools, "memory_bytes", lambda self: self.parked * (40 << 20))
    await pools.tick()
    # 0 + 32 MiB (first estimate) fits, 40 + 40 fits, 80 + 40 does not.
    assert pools.parked == 2


async def test_a_pool_whose_creates_fail_backs_off_and_leaves_nothing(fakes: NodeFakes) -> None:
    pools = _pools(fakes, PoolTarget("python", "runc", 1))
    fakes.steps.fail("networks.create")
    await pools.tick()
    (status,) = pools.status()
    assert status["failures"] == 1 and status["ready"] == 0
    failed = fakes.get(sandbox_id(1))
    assert (
        failed.pooled
        and failed.state is SandboxState.KILLED
        and failed.released
        and fakes.leftovers(failed.sandbox_id) == {}
    )
    fakes.steps.heal("networks.create")
    await pools.tick()  # still backing off
    assert pools.parked == 0


# Claim ---------------------------------------------------------------------------------


async def test_a_claim_binds_everything_the_request_asks(fakes: NodeFakes) -> None:
    pools = _pools(fakes)
    await pools.tick()
    creates = metrics.current().creates.labels("runc", "builtin")._value.get()
    before = time.time()
    req = _request(
        metadata={"job": "7"},
        envs={"A": "1"},
        policy=POLICY,
        security={"env_security": {"mask_patterns": ["A"]}},
        lifecycle={"on_timeout": "pause", "auto_resume": True},
    )
    rec = await fakes.node.create(req)

    assert rec.sandbox_id == sandbox_id(1)
    stored = fakes.get(rec.sandbox_id)
    assert stored == rec
    assert (stored.team_id, stored.state, stored.template_alias) == (
        TEAM,
        SandboxState.RUNNING,
        "python",
    )
    assert stored.metadata == {"job": "7"} and stored.envs == {"A": "1"}
    assert stored.lifecycle == {"on_timeout": "pause", "auto_resume": True}
    assert stored.security == {"env_security": {"mask_patterns": ["A"]}}
    assert stored.timeout == 120 and stored.end_at == pytest.approx(stored.created_at + 120)
    assert before <= stored.created_at <= (stored.started_at or 0) <= time.time()
    assert stored.network == POLICY.to_wire()
    assert fakes.networks.policies[rec.sandbox_id] == POLICY
    # It could reach nothing before: no flow to list and cut.
    assert fakes.networks.cuts[rec.sandbox_id] is False
    assert fakes.gateway.entries[rec.sandbox_id].policy == POLICY
    await fakes.node.update_policy(stored, EgressPolicy.parse([], ["0.0.0.0/0"]))
    assert fakes.networks.cuts[rec.sandbox_id] is True  # a later change cuts as always
    assert metrics.current().creates.labels("runc", "builtin")._value.get() == creates + 1
    assert [r.sandbox_id for r in fakes.store.list_sandboxes(TEAM)[0]] == [rec.sandbox_id]
    # The pool refills what was claimed.
    await pools.tick()
    assert [s["ready"] for s in pools.status()] == [2]


async def test_a_claimed_sandbox_is_recorded_as_a_cold_one_would_be(fakes: NodeFakes) -> None:
    req = _request(metadata={"k": "v"}, envs={"E": "x"}, policy=POLICY)
    cold = await fakes.node.create(req)
    pools = _pools(fakes, PoolTarget("python", "runc", 1))
    await pools.tick()
    warm = await fakes.node.create(req)
    assert warm.sandbox_id != cold.sandbox_id and warm.sandbox_id == sandbox_id(2)
    assert _comparable(fakes.get(warm.sandbox_id)) == _comparable(fakes.get(cold.sandbox_id))
    for what in (fakes.networks.policies, fakes.networks.inspect):
        assert what[warm.sandbox_id] == what[cold.sandbox_id]
    w, c = fakes.gateway.entries[warm.sandbox_id], fakes.gateway.entries[cold.sandbox_id]
    assert (w.policy, w.inspection) == (c.policy, c.inspection)
    assert fakes.host.specs[warm.sandbox_id]["hostname"] == warm.sandbox_id


@pytest.mark.parametrize(
    "change",
    [
        {"mounts": (Mount("/data", "/srv/v1", "bind", ["bind", "rw"]),)},
        {"sandbox_id": "sbx-000000000abc"},
        {"runtime": "runsc"},
        {"template": template(template_id="tpl-00000000000c", alias="other")},
    ],
    ids=["live-volume", "given-id", "other-runtime", "other-template"],
)
async def test_creates_no_pool_can_serve_go_cold(fakes: NodeFakes, change: dict[str, Any]) -> None:
    pools = _pools(fakes, PoolTarget("python", "runc", 1))
    await pools.tick()
    rec = await fakes.node.create(_request(**change))
    assert rec.sandbox_id != sandbox_id(1) and pools.parked == 1


async def test_an_empty_pool_is_a_cold_create(fakes: NodeFakes) -> None:
    pools = _pools(fakes, PoolTarget("python", "runc", 1), budget=0)
    await pools.tick()  # the budget lets nothing be made
    assert pools.status()[0]["ready"] == 0
    misses = metrics.current().pool_claims.labels("runc", "miss")._value.get()
    rec = await fakes.node.create(_request())
    assert rec.state is SandboxState.RUNNING and rec.team_id == TEAM
    assert metrics.current().pool_claims.labels("runc", "miss")._value.get() == misses + 1


async def test_prepare_sees_the_id_before_the_sandbox_is_the_teams(fakes: NodeFakes) -> None:
    pools = _pools(fakes, PoolTarget("python", "runc", 1))
    await pools.tick()
    seen: list[tuple[str, str]] = []

    async def prepare(sid: str) -> None:
        seen.append((sid, fakes.get(sid).team_id))

    rec = await fakes.node.create(_request(prepare=prepare))
    assert seen == [(rec.sandbox_id, POOL_TEAM)]


@pytest.mark.parametrize("how", ["prepare", "security"])
async def test_a_claim_that_fails_before_binding_keeps_the_sandbox_parked(
    fakes: NodeFakes, how: str
) -> None:
    pools = _pools(fakes, PoolTarget("python", "runc", 1))
    await pools.tick()

    async def broken(_sid: str) -> None:
        raise InvalidInput("volumes[0]", "no such volume")

    bad: dict[str, Any] = (
        {"prepare": broken} if how == "prepare" else {"security": {"pii": {"enabled": "x"}}}
    )
    with pytest.raises(DeclawdError):
        await fakes.node.create(_request(**bad))
    parked = fakes.get(sandbox_id(1))
    assert parked.pooled and parked.state is SandboxState.RUNNING
    assert fakes.networks.policies[parked.sandbox_id] == NO_EGRESS
    assert pools.status()[0]["ready"] == 1
    rec = await fakes.node.create(_request())
    assert rec.sandbox_id == sandbox_id(1)


async def test_a_bind_that_fails_after_the_claim_is_undone_like_a_cold_create(
    fakes: NodeFakes,
) -> None:
    pools = _pools(fakes, PoolTarget("python", "runc", 1))
    await pools.tick()
    fakes.steps.fail("networks.update_policy")
    with pytest.raises(DeclawdError):
        await fakes.node.create(_request(policy=POLICY))
    rec = fakes.get(sandbox_id(1))
    assert rec.team_id == TEAM and rec.state is SandboxState.KILLED and rec.released
    assert "networks.update_policy broke" in (rec.error or "")
    assert fakes.leftovers(rec.sandbox_id) == {}


async def test_a_pooled_sandbox_that_died_is_skipped(fakes: NodeFakes) -> None:
    pools = _pools(fakes, PoolTarget("python", "runc", 2))
    await pools.tick()
    await fakes.node.kill(sandbox_id(1))  # as the reaper does when its container died
    rec = await fakes.node.create(_request())
    assert rec.sandbox_id == sandbox_id(2)


# Drain, adoption ------------------------------------------------------------------------


async def test_when_the_alias_moves_the_old_pool_drains(fakes: NodeFakes) -> None:
    known = {"python": PYTHON}
    pools = _pools(fakes, PoolTarget("python", "runc", 1), templates=known)
    await pools.tick()
    rebuilt = template(template_id="tpl-00000000000d", alias="python")
    known["python"] = rebuilt
    await pools.tick()

    old = fakes.get(sandbox_id(1))
    assert old.state is SandboxState.KILLED and fakes.leftovers(old.sandbox_id) == {}
    new = fakes.get(sandbox_id(2))
    assert new.pooled and new.template_id == rebuilt.template_id
    assert [(s["template_id"], s["ready"]) for s in pools.status()] == [(rebuilt.template_id, 1)]


async def test_a_template_that_is_not_ready_has_no_pool(fakes: NodeFakes) -> None:
    pools = _pools(fakes, PoolTarget("python", "runc", 1), templates={})
    await pools.tick()
    assert pools.status() == [] and pools.parked == 0


async def test_a_restart_adopts_what_its_pools_want_and_kills_the_rest(fakes: NodeFakes) -> None:
    first = _pools(fakes, PoolTarget("python", "runc", 2))
    await first.tick()
    await first.stop()
    # The next start wants one: one is adopted, the other killed; nothing new is made.
    second = _pools(fakes, PoolTarget("python", "runc", 1))
    await second.start()
    await second.stop()
    await second.tick()
    assert second.status()[0]["ready"] == 1
    states = [fakes.get(sandbox_id(n)).state for n in (1, 2)]
    assert sorted(states) == [SandboxState.KILLED, SandboxState.RUNNING]
    assert fakes.store.get_sandbox(sandbox_id(3)) is None


async def test_pools_off_kill_what_an_earlier_run_left(fakes: NodeFakes) -> None:
    first = _pools(fakes, PoolTarget("python", "runc", 1))
    await first.tick()
    await first.stop()
    off = WarmPools(
        fakes.parts, [], budget_bytes=1 << 30, kill=fakes.node._kill_parked, resolve=None
    )
    await off.start()
    await off.stop()
    await off.tick()
    assert fakes.get(sandbox_id(1)).state is SandboxState.KILLED
    assert fakes.leftovers(sandbox_id(1)) == {}


async def test_destroy_all_drains_the_pools(fakes: NodeFakes) -> None:
    pools = _pools(fakes, PoolTarget("python", "runc", 2))
    await pools.tick()
    user = await fakes.node.create(_request())
    assert await fakes.node.destroy_all() == 1  # the user's; the pooled ones go too
    for n in (1, 2, 3):
        assert fakes.leftovers(sandbox_id(n)) == {}
    assert fakes.get(user.sandbox_id).state is SandboxState.KILLED


# The setting ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "targets"),
    [
        ("off", []),
        ("", []),
        ("python=3", [PoolTarget("python", "runc", 3)]),
        (
            "python=3, base:runsc=1,node=0",
            [PoolTarget("python", "runc", 3), PoolTarget("base", "runsc", 1)],
        ),
    ],
)
def test_the_setting_parses(raw: str, targets: list[PoolTarget]) -> None:
    assert list(parse_pool_spec(raw).targets) == targets


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("python", "warm_pool: entry 'python' must be alias[:runtime]=N"),
        ("python:kvm=1", "warm_pool: entry 'python:kvm=1': runtime must be runc or runsc"),
        ("python=many", "warm_pool: entry 'python=many': size must be a whole number"),
        ("python=65", "warm_pool: entry 'python=65': size must be 0 to 64"),
        ("py thon=1", "warm_pool: entry 'py thon=1': 'py thon' is not a template name"),
        ("python=1,python=2", "warm_pool: entry 'python=2': python:runc given twice"),
    ],
)
def test_a_bad_setting_names_its_entry(raw: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_pool_spec(raw)
    assert str(err.value) == message


def test_auto_pools_every_builtin_on_runc_sized_from_memory() -> None:
    gib = 1 << 30
    assert [auto_size(n * gib) for n in (2, 8, 24, 64)] == [1, 1, 3, 4]
    spec = parse_pool_spec("auto")
    assert targets_for(spec, ("base", "python"), 24 * gib) == [
        PoolTarget("base", "runc", 3),
        PoolTarget("python", "runc", 3),
    ]


async def test_the_refill_after_a_claim_waits_out_the_claimers_first_commands(
    fakes: NodeFakes, monkeypatch: Any
) -> None:
    """`run` refills a claim only REFILL_GRACE_S after it: the claimer's first commands go
    before the refill's create on a small host."""
    import asyncio

    from declawd.node import pool as pool_module

    monkeypatch.setattr(pool_module, "REFILL_GRACE_S", 0.3)
    pools = _pools(fakes)
    await pools.tick()
    runner = asyncio.get_running_loop().create_task(pools.run())
    try:
        await asyncio.sleep(0.05)  # its first tick found the pools full
        rec = await fakes.node.create(_request())
        assert rec.sandbox_id == sandbox_id(1)
        claimed = time.monotonic()
        await asyncio.sleep(0.15)
        assert [s["ready"] for s in pools.status()] == [1]  # not yet
        while [s["ready"] for s in pools.status()] != [2]:
            await asyncio.sleep(0.01)
            assert time.monotonic() - claimed < 5, "the pool never refilled"
        assert time.monotonic() - claimed >= 0.3
    finally:
        pools.stopped = True
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
