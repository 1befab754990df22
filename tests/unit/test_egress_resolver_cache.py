"""The resolver's answer cache: hits, TTL expiry, isolation, admission on a hit, policy, bounds."""

from __future__ import annotations

import pytest
from dnslib import RCODE, DNSRecord

from declawd.egress.dnscache import AnswerCache, CachedAnswer
from declawd.egress.dnsfilter import AuditNote
from declawd.egress.policy import EgressPolicy
from declawd.egress.resolver import SandboxEntry
from tests.unit.test_egress_resolver import POLICY, ask, make

API = "203.0.113.10"


def _a(answer: DNSRecord) -> list[tuple[str, int]]:
    return [(str(rr.rdata), rr.ttl) for rr in answer.rr]


# Through the resolver -----------------------------------------------------------------


async def test_hit_answers_from_the_cache_with_the_ttl_left_and_is_audited() -> None:
    now = [100.0]
    rig = await make(clock=lambda: now[0])
    try:
        assert _a(await rig.ask("api.openai.com")) == [(API, 60)]
        now[0] += 10.5
        assert _a(await rig.ask("API.OpenAI.com")) == [(API, 49)]  # case-insensitive key
        assert rig.upstream.queries == ["api.openai.com."]
        assert rig.events == ["admit 3 ['203.0.113.10']"]  # proven: no second admit
        assert rig.resolver.stats["cached"] == 1 and rig.resolver.stats["forwarded"] == 1
        assert [(e.reason, e.address) for e in rig.audit] == [("allowed", API)] * 2
        assert rig.resolver.resolved.resolved_for("sbx-1", "api.openai.com", API)
    finally:
        await rig.close()


async def test_hit_over_udp_keeps_the_clients_spelling_and_id() -> None:
    rig = await make()
    try:
        await ask(rig.resolver.port, "api.openai.com", rig.events)
        answer = await ask(rig.resolver.port, "Api.OpenAI.COM", rig.events)
        assert [str(rr.rname) for rr in answer.rr] == ["Api.OpenAI.COM."]
        assert rig.events == ["admit 3 ['203.0.113.10']", "answer", "answer"]
        assert len(rig.upstream.queries) == 1
    finally:
        await rig.close()


async def test_entry_expires_with_the_ttl() -> None:
    now = [0.0]
    rig = await make(clock=lambda: now[0])
    try:
        await rig.ask("api.openai.com")
        now[0] = 58.9
        assert _a(await rig.ask("api.openai.com")) == [(API, 1)]
        now[0] = 59.5  # less than a second left: never answered with TTL 0
        assert _a(await rig.ask("api.openai.com")) == [(API, 60)]
        assert len(rig.upstream.queries) == 2
    finally:
        await rig.close()


async def test_entry_lifetime_is_clamped_like_the_answers() -> None:
    now = [0.0]
    rig = await make(ttl=86_400, clock=lambda: now[0])
    try:
        assert _a(await rig.ask("api.openai.com")) == [(API, 3600)]
        now[0] = 3598.0
        assert _a(await rig.ask("api.openai.com")) == [(API, 2)]
        now[0] = 3600.0
        assert _a(await rig.ask("api.openai.com")) == [(API, 3600)]
        assert len(rig.upstream.queries) == 2
    finally:
        await rig.close()


async def test_ttl_zero_answers_are_not_cached() -> None:
    rig = await make(ttl=0)
    try:
        await rig.ask("api.openai.com")
        await rig.ask("api.openai.com")
        assert len(rig.upstream.queries) == 2
    finally:
        await rig.close()


async def test_one_sandbox_is_never_answered_from_anothers_lookups() -> None:
    rig = await make()
    try:
        await rig.ask("api.openai.com", "127.0.0.1")
        await rig.ask("api.openai.com", "127.0.0.2")
        assert len(rig.upstream.queries) == 2
        assert rig.events == ["admit 3 ['203.0.113.10']", "admit 4 ['203.0.113.10']"]
        assert not rig.resolver.resolved.resolved_for("sbx-2", "x.wild.lab", "203.0.113.70")
        await rig.ask("x.wild.lab", "127.0.0.1")
        await rig.ask("x.wild.lab", "127.0.0.2")  # cached for sbx-1 only
        assert len(rig.upstream.queries) == 4
        assert rig.resolver.resolved.resolved_for("sbx-2", "x.wild.lab", "203.0.113.70")
        await rig.ask("x.wild.lab", "127.0.0.2")  # now sbx-2's own entry
        assert len(rig.upstream.queries) == 4
    finally:
        await rig.close()


async def test_hit_renews_the_admission_before_the_answer_when_it_could_run_out() -> None:
    now = [0.0]
    rig = await make(clock=lambda: now[0])
    try:
        await rig.ask("api.openai.com")  # admitted for 60 + 30 s grace
        assert rig.admitted == [(3, {API: 90.0})]
        now[0] = 56.5  # 3 s of TTL left would need 5 (clamp) + 30 s; 33.5 s are left
        answer = await ask(rig.resolver.port, "api.openai.com", rig.events)  # over UDP
        assert rig.events == ["admit 3 ['203.0.113.10']"] * 2 + ["answer"]
        assert rig.admitted[1] == (3, {API: 35.0})
        assert _a(answer) == [(API, 3)]
        assert len(rig.upstream.queries) == 1
        # Within the last 5 s of the TTL every hit needs the 5 s minimum + grace again.
        now[0] = 57.5
        await rig.ask("api.openai.com")
        assert rig.admitted[2] == (3, {API: 35.0})
    finally:
        await rig.close()


async def test_a_renewal_that_fails_answers_servfail_and_drops_the_entry() -> None:
    now = [0.0]
    rig = await make(clock=lambda: now[0])
    try:
        await rig.ask("api.openai.com")
        rig.fail_admit = True
        now[0] = 57.0
        answer = await rig.ask("api.openai.com")
        assert answer.header.rcode == RCODE.SERVFAIL and answer.rr == []
        assert rig.audit[-1].reason == "datapath_error"
        assert rig.resolver.cache.entries("sbx-1") == 0
        rig.fail_admit = False
        assert _a(await rig.ask("api.openai.com")) == [(API, 60)]
        assert len(rig.upstream.queries) == 2
    finally:
        await rig.close()


async def test_open_policy_hits_need_no_admission() -> None:
    rig = await make()
    try:
        rig.entries["127.0.0.1"] = SandboxEntry("sbx-1", 3, "127.0.0.1", EgressPolicy.open())
        await rig.ask("api.openai.com")
        await rig.ask("api.openai.com")
        assert rig.events == [] and len(rig.upstream.queries) == 1
    finally:
        await rig.close()


async def test_policy_change_drops_the_sandboxs_answers() -> None:
    rig = await make()
    try:
        await rig.ask("api.openai.com")
        # The gateway builds new policy objects at every reload: the same value keeps them.
        same = EgressPolicy.parse(list(POLICY.allow_out), list(POLICY.deny_out))
        rig.entries["127.0.0.1"] = SandboxEntry("sbx-1", 3, "127.0.0.1", same)
        await rig.ask("api.openai.com")
        assert len(rig.upstream.queries) == 1
        # Another policy that still allows the name: asked upstream and admitted again.
        other = EgressPolicy.parse(["api.openai.com", "example.com"], ["0.0.0.0/0"])
        rig.entries["127.0.0.1"] = SandboxEntry("sbx-1", 3, "127.0.0.1", other)
        await rig.ask("api.openai.com")
        assert len(rig.upstream.queries) == 2 and len(rig.admitted) == 2
        # The gateway's explicit drop after it rewrote the set.
        rig.resolver.forget_answers("sbx-1")
        await rig.ask("api.openai.com")
        assert len(rig.upstream.queries) == 3
        # A policy that denies the name: the sink, from neither the cache nor the upstream.
        deny = EgressPolicy.parse(["example.com"], ["0.0.0.0/0"])
        rig.entries["127.0.0.1"] = SandboxEntry("sbx-1", 3, "127.0.0.1", deny)
        assert _a(await rig.ask("api.openai.com")) == [("198.18.0.1", 5)]
        assert len(rig.upstream.queries) == 3
    finally:
        await rig.close()


async def test_names_sharing_an_address_are_admitted_once_while_that_admit_covers_them() -> None:
    now = [0.0]
    wild = "203.0.113.70"
    rig = await make(clock=lambda: now[0])
    try:
        assert _a(await rig.ask("a.wild.lab")) == [(wild, 60)]  # admitted until 60 + 30 s
        now[0] = 4.9  # b needs 60 + 30 s from 4.9 s; 85.1 s are left, within the 5 s slack
        assert _a(await rig.ask("b.wild.lab")) == [(wild, 60)]
        assert rig.admitted == [(3, {wild: 90.0})] and rig.resolver.stats["admit_proven"] == 1
        now[0] = 5.1  # 84.9 s left: admitted again, for the full 90 s
        await rig.ask("c.wild.lab")
        assert rig.admitted[1:] == [(3, {wild: 90.0})]
        now[0] = 9.0  # c's admit runs to 95.1: d is covered
        await rig.ask("d.wild.lab")
        assert len(rig.admitted) == 2 and rig.resolver.stats["admit_proven"] == 2
        assert len(rig.upstream.queries) == 4  # every name was asked upstream all the same
        assert rig.resolver.resolved.resolved_for("sbx-1", "d.wild.lab", wild)
        # Another address needs its own admit.
        await rig.ask("api.openai.com")
        assert rig.admitted[-1] == (3, {API: 90.0})
        # After the gateway rewrote the set, no earlier admit proves anything.
        rig.resolver.forget_answers("sbx-1")
        await rig.ask("e.wild.lab")
        assert len(rig.admitted) == 4
        # Nor under another policy, nor for another sandbox.
        other = EgressPolicy.parse(["*.wild.lab"], ["0.0.0.0/0"])
        rig.entries["127.0.0.1"] = SandboxEntry("sbx-1", 3, "127.0.0.1", other)
        await rig.ask("f.wild.lab")
        await rig.ask("g.wild.lab", "127.0.0.2")
        assert len(rig.admitted) == 6 and rig.admitted[-1][0] == 4
    finally:
        await rig.close()


async def test_removed_sandbox_loses_its_answers() -> None:
    rig = await make()
    try:
        await rig.ask("api.openai.com")
        rig.resolver.forget("sbx-1")
        await rig.ask("api.openai.com")
        assert len(rig.upstream.queries) == 2
    finally:
        await rig.close()


async def test_cache_is_bounded_through_the_resolver() -> None:
    rig = await make(cache=AnswerCache(max_entries=2))
    try:
        for name in ("a.wild.lab", "b.wild.lab", "c.wild.lab"):
            await rig.ask(name)
        await rig.ask("c.wild.lab")
        assert len(rig.upstream.queries) == 3  # c is still there
        await rig.ask("a.wild.lab")
        assert len(rig.upstream.queries) == 4  # a was evicted first
        assert rig.resolver.cache.entries("sbx-1") == 2
    finally:
        await rig.close()


# AnswerCache alone --------------------------------------------------------------------


def _answer(name: str, expires: float = 100.0) -> CachedAnswer:
    return CachedAnswer(
        rcode=0,
        chain=(name,),
        addresses=("203.0.113.70",),
        audit=AuditNote("allow", "allowed", name, ("203.0.113.70",)),
        expires=expires,
    )


def test_cache_evicts_least_recently_used_beyond_its_entries() -> None:
    cache = AnswerCache(max_entries=2)
    cache.put("s", POLICY, ("a", 1), _answer("a"))
    cache.put("s", POLICY, ("b", 1), _answer("b"))
    assert cache.get("s", POLICY, ("a", 1), 0.0) is not None  # a is now the most recent
    cache.put("s", POLICY, ("c", 1), _answer("c"))
    assert cache.get("s", POLICY, ("b", 1), 0.0) is None
    assert cache.get("s", POLICY, ("a", 1), 0.0) is not None
    assert cache.entries("s") == 2


def test_cache_is_bounded_in_bytes_per_sandbox_and_in_total() -> None:
    size = _answer("n00").size
    cache = AnswerCache(max_bytes=3 * size, max_total_bytes=5 * size)
    for i in range(10):
        cache.put("big", POLICY, (f"n{i:02}", 1), _answer(f"n{i:02}"))
    assert cache.entries("big") == 3 and cache.total_bytes == 3 * size
    for i in range(3):
        cache.put("small", POLICY, (f"m{i:02}", 1), _answer(f"m{i:02}"))
    # Over the total: the biggest table pays, the smaller keeps its entries.
    assert cache.total_bytes <= 5 * size
    assert cache.entries("small") == 3 and cache.entries("big") == 2
    cache.drop("big")
    cache.drop("small")
    assert cache.total_bytes == 0


def test_an_answer_bigger_than_a_table_is_not_kept() -> None:
    cache = AnswerCache(max_bytes=10)
    cache.put("s", POLICY, ("a", 1), _answer("a"))
    assert cache.entries("s") == 0 and cache.total_bytes == 0


def test_admission_proofs_are_bounded_and_keep_the_latest_expiry() -> None:
    cache = AnswerCache(max_entries=2)
    cache.note_admitted("sbx-1", POLICY, {"198.51.100.1": 90.0}, 10.0)
    cache.note_admitted("sbx-1", POLICY, {"198.51.100.1": 30.0}, 20.0)  # earlier: kept 100
    assert cache.admitted_until("sbx-1", POLICY, ["198.51.100.1"]) == 100.0
    cache.note_admitted("sbx-1", POLICY, {"198.51.100.2": 90.0, "198.51.100.3": 90.0}, 30.0)
    assert cache.admitted_until("sbx-1", POLICY, ["198.51.100.1"]) == 0.0  # the oldest went
    assert cache.admitted_until("sbx-1", POLICY, ["198.51.100.2", "198.51.100.3"]) == 120.0
    assert cache.admitted_until("sbx-1", POLICY, ["198.51.100.2", "198.51.100.9"]) == 0.0
    assert cache.admitted_until("sbx-1", POLICY, []) == 0.0
    assert cache.admitted_until("sbx-2", POLICY, ["198.51.100.2"]) == 0.0
    cache.drop("sbx-1")
    assert cache.admitted_until("sbx-1", POLICY, ["198.51.100.2"]) == 0.0


def test_cache_entry_with_less_than_a_second_left_is_gone() -> None:
    cache = AnswerCache()
    cache.put("s", POLICY, ("a", 1), _answer("a", expires=10.0))
    assert cache.get("s", POLICY, ("a", 1), 8.9) is not None
    assert cache.get("s", POLICY, ("a", 1), 9.1) is None
    assert cache.entries("s") == 0 and cache.total_bytes == 0


@pytest.mark.parametrize("replace", [True, False])
def test_cache_table_is_used_only_under_an_equal_policy(replace: bool) -> None:
    cache = AnswerCache()
    cache.put("s", POLICY, ("a", 1), _answer("a"))
    other = EgressPolicy.parse(["a.lab"], ["0.0.0.0/0"])
    if replace:
        cache.put("s", other, ("b", 1), _answer("b"))  # a write under the new policy
        assert cache.get("s", other, ("b", 1), 0.0) is not None
    assert cache.get("s", other, ("a", 1), 0.0) is None
    assert cache.get("s", POLICY, ("a", 1), 0.0) is None  # gone for good, not hidden
