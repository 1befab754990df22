"""Content inspection on a node of fakes: the CA and trust bundle of a create, vault refs,
live security changes, vault refreshes, restore and the start-up resync."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from declawd.egress.policy import EgressPolicy
from declawd.errors import InvalidInput
from declawd.inspect.ca import KEY_FILE, SandboxCA
from declawd.inspect.model import (
    PLACEHOLDER,
    InspectionPolicy,
    TransformRule,
    VaultBinding,
    VaultScope,
)
from declawd.node import inspection as inspecting
from declawd.node.create import CreateRequest
from declawd.node.parts import GatewayEntry
from declawd.node.trust import CA_BUNDLE_IN_SANDBOX, find_certifi
from declawd.store import SandboxState
from declawd.store.snapshots import SnapshotRecord
from declawd.vault import bindings_for
from declawd.vault.store import SecretRecord, VaultRecords
from tests.unit.node.fakes import TEAM, UPSTREAM_CA, NodeFakes, sandbox_id, template

SID = sandbox_id(1)
OPENAI = VaultScope(domain_regex=r"api\.openai\.com")
RULE = {"match": "secret-word", "replace": "[gone]", "direction": "both"}


def _secret(fakes: NodeFakes, secret_id: str, scopes: tuple[VaultScope, ...]) -> VaultBinding:
    """A secret in the store (its sealed value is opaque bytes: the node never reads it)."""
    VaultRecords.of(fakes.store).insert_secret(
        SecretRecord(secret_id, TEAM, "prod", secret_id, None, scopes, 1, 0, 1.0, 1.0),
        b"sealed",
    )
    return VaultBinding("OPENAI_API_KEY", secret_id, f"vault://default/prod/{secret_id}", scopes)


def _request(**changes: object) -> CreateRequest:
    req = CreateRequest(team_id=TEAM, template=template(), timeout=300)
    for name, value in changes.items():
        setattr(req, name, value)
    return req


def _order(fakes: NodeFakes, *names: str) -> list[str]:
    return [c for c in fakes.steps.calls if c in names]


# Create ------------------------------------------------------------------------------


async def test_create_makes_a_ca_outside_the_rootfs_and_a_bundle_that_trusts_it(
    fakes: NodeFakes,
) -> None:
    await fakes.node.create(_request())
    res = fakes.host.resources(SID)
    ca_dir = res.dir / "ca"
    assert stat.S_IMODE((ca_dir / KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    assert not ca_dir.is_relative_to(res.rootfs)
    ca = SandboxCA.load(ca_dir)
    bundle = (res.dir / "trust" / "ca-bundle.pem").read_bytes()
    assert bundle.startswith(UPSTREAM_CA) and bundle.endswith(ca.cert_pem)
    assert b"PRIVATE KEY" not in bundle
    assert fakes.gateway.entries[SID].ca == ca.ref
    # Nothing mounted into the sandbox comes from the CA's directory.
    sources = [m.get("source", "") for m in fakes.host.specs[SID]["mounts"]]
    assert not any(s.startswith(str(ca_dir)) for s in sources)
    env = fakes.node.envs(fakes.get(SID))
    assert env["NODE_EXTRA_CA_CERTS"] == env["SSL_CERT_FILE"] == CA_BUNDLE_IN_SANDBOX


async def test_the_bundle_covers_every_certifi_the_rootfs_ships(
    fakes: NodeFakes, tmp_path: Path
) -> None:
    layer = tmp_path / "layer"
    pip = layer / "usr/local/lib/python3.11/site-packages/certifi/cacert.pem"
    deb = layer / "usr/lib/python3/dist-packages/certifi/cacert.pem"
    for path in (pip, deb):
        path.parent.mkdir(parents=True)
    pip.write_text("certifi's own CAs\n")
    deb.symlink_to("/etc/ssl/certs/ca-certificates.crt")  # Debian's: a link to the system's
    await fakes.node.create(_request(template=template(layer_paths=[layer])))
    bundle = str(fakes.host.resources(SID).dir / "trust" / "ca-bundle.pem")
    targets = [
        m["destination"] for m in fakes.host.specs[SID]["mounts"] if m.get("source") == bundle
    ]
    assert targets == [
        "/etc/declawd/ca-bundle.pem",
        "/etc/ssl/certs/ca-certificates.crt",
        "/usr/local/lib/python3.11/site-packages/certifi/cacert.pem",
    ]


def test_certifi_behind_a_symlinked_directory_is_not_followed(tmp_path: Path) -> None:
    host_side = tmp_path / "elsewhere/python3.11/site-packages/certifi"
    host_side.mkdir(parents=True)
    (host_side / "cacert.pem").write_text("not the sandbox's\n")
    rootfs = tmp_path / "rootfs"
    (rootfs / "usr/local/lib").mkdir(parents=True)
    (rootfs / "usr/local/lib/python3.11").symlink_to(tmp_path / "elsewhere/python3.11")
    assert find_certifi(rootfs) == []


async def test_create_with_vault_refs_inspects_and_records_the_bindings(
    fakes: NodeFakes,
) -> None:
    binding = _secret(fakes, "sec-1", (OPENAI,))
    rec = await fakes.node.create(_request(vault=(binding,), envs={"OTHER": "x"}))
    assert rec.envs == {"OTHER": "x", "OPENAI_API_KEY": PLACEHOLDER}
    assert bindings_for(fakes.store, SID) == (binding,)
    entry = fakes.gateway.entries[SID]
    assert entry.inspection.vault == (binding,) and entry.inspection.active
    assert entry.inspection.inspects("api.openai.com", tls=True)
    assert fakes.networks.inspect[SID] is True
    # the placeholder is not a value to mask: it is what the sandbox sends
    assert PLACEHOLDER not in entry.inspection.masked_values


async def test_create_uses_the_scopes_a_secret_has_when_its_refs_are_attached(
    fakes: NodeFakes,
) -> None:
    current = _secret(fakes, "sec-1", (OPENAI,))
    resolved_earlier = VaultBinding(current.env, current.secret_id, current.ref, ())
    await fakes.node.create(_request(vault=(resolved_earlier,)))
    assert fakes.gateway.entries[SID].inspection.vault == (current,)


async def test_create_with_transformations_inspects_every_host(fakes: NodeFakes) -> None:
    await fakes.node.create(_request(security={"transformations": [RULE]}))
    entry = fakes.gateway.entries[SID]
    assert entry.inspection.transformations == (TransformRule("secret-word", "[gone]", "both"),)
    assert fakes.networks.inspect[SID] is True


async def test_a_create_whose_security_does_not_parse_makes_nothing(fakes: NodeFakes) -> None:
    bad = {"transformations": [{"match": "(?<=x)y", "replace": ""}]}
    with pytest.raises(InvalidInput, match=r"transformations\[0\]\.match"):
        await fakes.node.create(_request(security=bad))
    assert fakes.store.get_sandbox(SID) is None
    assert fakes.steps.calls.count("networks.create") == 0


async def test_kill_removes_the_ca_and_keeps_the_vault_refs(fakes: NodeFakes) -> None:
    binding = _secret(fakes, "sec-1", (OPENAI,))
    await fakes.node.create(_request(vault=(binding,)))
    assert await fakes.node.kill(SID)
    assert fakes.leftovers(SID) == {}
    assert bindings_for(fakes.store, SID) == (binding,)


# Live changes -------------------------------------------------------------------------


async def test_update_security_turns_inspection_on_gateway_first_then_off_rules_first(
    fakes: NodeFakes,
) -> None:
    await fakes.node.create(_request(security={"audit": {"enabled": True}}))
    fakes.steps.calls.clear()

    rec = await fakes.node.update_security(TEAM, SID, {"transformations": [RULE]})
    assert rec.security == {"audit": {"enabled": True}, "transformations": [RULE]}
    assert fakes.get(SID).security == rec.security
    assert fakes.networks.inspect[SID] is True
    assert fakes.gateway.entries[SID].inspection.transformations
    assert _order(fakes, "gateway.upsert", "networks.update_policy") == [
        "gateway.upsert",
        "networks.update_policy",
    ]

    fakes.steps.calls.clear()
    await fakes.node.update_security(TEAM, SID, {"transformations": []})
    assert fakes.networks.inspect[SID] is False
    assert fakes.gateway.entries[SID].inspection == InspectionPolicy()
    assert _order(fakes, "gateway.upsert", "networks.update_policy") == [
        "networks.update_policy",
        "gateway.upsert",
    ]


async def test_update_security_that_keeps_inspection_as_it_was_leaves_the_rules(
    fakes: NodeFakes,
) -> None:
    await fakes.node.create(_request(security={"transformations": [RULE]}))
    fakes.steps.calls.clear()
    await fakes.node.update_security(TEAM, SID, {"audit": {"enabled": False}})
    assert fakes.steps.count("networks.update_policy") == 0
    entry = fakes.gateway.entries[SID]
    assert entry.inspection.audit_enabled is False and entry.inspection.transformations


async def test_update_security_with_network_changes_the_egress_policy_too(
    fakes: NodeFakes,
) -> None:
    await fakes.node.create(_request(policy=EgressPolicy.parse(["1.2.3.4/32"], [])))
    network = {"allow_out": ["api.openai.com"], "deny_out": ["0.0.0.0/0"]}
    rec = await fakes.node.update_security(TEAM, SID, {"network": network})
    policy = EgressPolicy.parse(["api.openai.com"], ["0.0.0.0/0"])
    assert rec.network == policy.to_wire()
    assert fakes.networks.policies[SID] == policy
    assert fakes.networks.inspect[SID] is False
    assert fakes.gateway.entries[SID].policy == policy


async def test_update_security_without_network_keeps_the_egress_policy(
    fakes: NodeFakes,
) -> None:
    policy = EgressPolicy.parse(["api.openai.com"], ["0.0.0.0/0"])
    await fakes.node.create(_request(policy=policy))
    rec = await fakes.node.update_security(TEAM, SID, {"transformations": [RULE]})
    assert rec.network == policy.to_wire()
    assert fakes.networks.policies[SID] == policy
    assert fakes.gateway.entries[SID].policy == policy


async def test_update_security_that_does_not_parse_changes_nothing(fakes: NodeFakes) -> None:
    await fakes.node.create(_request())
    before = fakes.gateway.entries[SID]
    bad = {"transformations": [{"match": r"(a)\1", "replace": ""}]}
    with pytest.raises(InvalidInput, match=r"transformations\[0\]\.match"):
        await fakes.node.update_security(TEAM, SID, bad)
    assert fakes.get(SID).security is None
    assert fakes.gateway.entries[SID] is before


async def test_update_policy_keeps_the_inspection(fakes: NodeFakes) -> None:
    await fakes.node.create(_request(security={"transformations": [RULE]}))
    policy = EgressPolicy.parse(["203.0.113.0/24"], ["0.0.0.0/0"])
    await fakes.node.update_policy(fakes.get(SID), policy)
    assert fakes.networks.policies[SID] == policy
    assert fakes.networks.inspect[SID] is True
    assert fakes.gateway.entries[SID].inspection.transformations


async def test_refresh_inspection_applies_the_secrets_current_scopes(fakes: NodeFakes) -> None:
    binding = _secret(fakes, "sec-1", (OPENAI,))
    await fakes.node.create(_request(vault=(binding,)))
    github = VaultScope(domain_regex=r"api\.github\.com")
    VaultRecords.of(fakes.store).set_scopes("sec-1", (github,))
    fakes.steps.calls.clear()

    await fakes.node.refresh_inspection([SID, sandbox_id(99)])  # unknown ids are skipped
    inspection = fakes.gateway.entries[SID].inspection
    assert inspection.vault[0].scopes == (github,)
    assert not inspection.inspects("api.openai.com", tls=True)
    assert fakes.steps.count("networks.update_policy") == 0  # still active: same rules

    VaultRecords.of(fakes.store).delete_secret("sec-1")
    await fakes.node.refresh_inspection([SID])
    assert fakes.gateway.entries[SID].inspection.vault == ()
    assert fakes.networks.inspect[SID] is False


async def test_refresh_inspection_skips_killed_sandboxes(fakes: NodeFakes) -> None:
    binding = _secret(fakes, "sec-1", (OPENAI,))
    await fakes.node.create(_request(vault=(binding,)))
    await fakes.node.kill(SID)
    fakes.steps.calls.clear()
    await fakes.node.refresh_inspection([SID])
    assert fakes.steps.count("gateway.upsert") == 0


# Restore and restart -----------------------------------------------------------------


async def test_restore_gets_the_same_secrets_and_a_new_ca(fakes: NodeFakes) -> None:
    binding = _secret(fakes, "sec-1", (OPENAI,))
    rec = await fakes.node.create(_request(vault=(binding,)))
    first_ca = fakes.gateway.entries[SID].ca
    fakes.host.resources(SID).upper.mkdir(parents=True)  # the fake host makes none
    snap = await fakes.node.snapshot(rec)
    await fakes.node.kill(SID)
    killed = fakes.get(SID)
    ready = fakes.store.get_snapshot(snap.snapshot_id)
    assert isinstance(ready, SnapshotRecord)

    restored = await fakes.node.restore(killed, ready, template())
    assert restored.state is SandboxState.RUNNING
    assert restored.envs["OPENAI_API_KEY"] == PLACEHOLDER
    entry = fakes.gateway.entries[SID]
    assert entry.inspection.vault == (binding,)
    assert entry.ca is not None and first_ca is not None
    assert entry.ca.dir == first_ca.dir and entry.ca.fingerprint != first_ca.fingerprint
    assert SandboxCA.load(entry.ca.dir).fingerprint == entry.ca.fingerprint


async def test_resync_rebuilds_the_gateway_entries_from_the_store(fakes: NodeFakes) -> None:
    await fakes.node.create(_request(security={"transformations": [RULE]}))
    entry = fakes.gateway.entries[SID]
    # As if the server died between the store update and the gateway's.
    stale = GatewayEntry(entry.slot, entry.address, entry.policy, InspectionPolicy(), entry.ca)
    fakes.gateway.entries[SID] = stale
    fakes.networks.inspect[SID] = False
    fakes.steps.calls.clear()

    await inspecting.resync(fakes.parts, {SID})
    assert fakes.gateway.entries[SID] == entry
    assert fakes.networks.inspect[SID] is True
    assert _order(fakes, "gateway.sync", "networks.update_policy") == [
        "gateway.sync",
        "networks.update_policy",
    ]

    fakes.steps.calls.clear()
    await inspecting.resync(fakes.parts, {SID})  # nothing differs: no rule rewritten
    assert _order(fakes, "gateway.sync", "networks.update_policy") == ["gateway.sync"]
