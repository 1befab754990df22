"""The governance pack routes through the official SDK's GovernancePacks (sync and async)
against the session server: every shipped pack in the SDK's model, get by name and by
policy_ref, an unknown pack a NotFoundException."""

from __future__ import annotations

import pytest
from declaw import AsyncGovernancePacks, GovernancePacks, NotFoundException, SecurityPolicy

pytestmark = pytest.mark.e2e

REQUIRED = {
    "baseline-hardening@v1",
    "owasp-llm-top10@v1",
    "owasp-agentic@v1",
    "prompt-injection@v3",
}


def test_list_has_every_required_pack_with_its_controls(server: dict[str, str]) -> None:
    packs = GovernancePacks.list(api_key=server["key"], domain=server["domain"])
    assert {p.policy_ref for p in packs} >= REQUIRED
    for pack in packs:
        assert pack.policy_ref == f"{pack.name}@{pack.version}"
        assert pack.seeded is True and pack.framework and pack.description
        assert pack.enforces and {c.gate for c in pack.enforces} == set(pack.gates)
        assert all(c.control and c.rule and c.playbook for c in pack.enforces)


def test_get_by_name_and_by_ref_agree(server: dict[str, str]) -> None:
    by_name = GovernancePacks.get(
        "baseline-hardening", api_key=server["key"], domain=server["domain"]
    )
    by_ref = GovernancePacks.get(
        "baseline-hardening@v1", api_key=server["key"], domain=server["domain"]
    )
    assert by_name == by_ref
    assert {"commands", "network"} <= set(by_ref.gates)
    assert any(c.rule == "cmd.pipe_to_shell" for c in by_ref.enforces)


def test_the_pack_full_injection_defense_names_exists(server: dict[str, str]) -> None:
    ref = SecurityPolicy.full_injection_defense().to_dict()["custom_policy"]["policy_ref"]
    pack = GovernancePacks.get(ref, api_key=server["key"], domain=server["domain"])
    assert pack.policy_ref == ref
    assert "injection" in pack.gates


def test_an_unknown_pack_is_not_found(server: dict[str, str]) -> None:
    with pytest.raises(NotFoundException):
        GovernancePacks.get("no-such-pack@v1", api_key=server["key"], domain=server["domain"])


async def test_the_async_client_reads_the_same_catalog(server: dict[str, str]) -> None:
    packs = await AsyncGovernancePacks.list(api_key=server["key"], domain=server["domain"])
    one = await AsyncGovernancePacks.get(
        "owasp-agentic", api_key=server["key"], domain=server["domain"]
    )
    assert {p.policy_ref for p in packs} >= REQUIRED
    assert one.policy_ref == "owasp-agentic@v1"
