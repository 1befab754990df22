"""The gateway daemon's inspection plumbing without root: state.json from the node to the
daemon (inspection policy, CA), failing closed on entries it cannot read, leaf contexts
dropped when a sandbox goes or gets a new CA, http audit events, and its command line."""

from __future__ import annotations

import json
import socket
import stat
import struct
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from declawd.config import Settings
from declawd.egress import gateway
from declawd.egress.audit import AuditEvent
from declawd.egress.gatewaystate import DENY_ALL, load_state, upstream_context
from declawd.egress.nflog import NflogRecord
from declawd.egress.policy import EgressPolicy
from declawd.egress.resolver import SandboxEntry
from declawd.inspect.ca import SandboxCA
from declawd.inspect.model import (
    HttpAudit,
    InspectionPolicy,
    TransformRule,
    VaultBinding,
    VaultScope,
)
from declawd.lab.ca import ca_bundle_path
from declawd.node.gatewayd import GatewayDaemon as NodeGateway
from declawd.node.parts import GatewayEntry
from declawd.upstream import choose_upstream
from tests.unit.gateway_cli import gateway_argv, parsed_config

POLICY = EgressPolicy.parse(["api.openai.com"], ["0.0.0.0/0"])
INSPECTION = InspectionPolicy(
    transformations=(TransformRule("secret-word", "[gone]", "both"),),
    vault=(
        VaultBinding(
            "OPENAI_API_KEY",
            "sec-1",
            "vault://default/prod/openai",
            (VaultScope(r"api\.openai\.com", "header", header_name="x-api-key"),),
        ),
    ),
    masked_values=("hunter2-masked",),
)


class FakeSets:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def admit(self, slot: int, timeouts: Mapping[str, float]) -> None:
        pass

    def reset(self) -> None:
        self.calls.append("reset")

    def prune(self) -> None:
        self.calls.append("prune")

    def replace(self, slot: int, timeouts: Mapping[str, float]) -> None:
        self.calls.append(f"replace {slot} {sorted(timeouts)}")

    def close(self) -> None:
        pass


def _settings(tmp_path: Path, *, lab: bool = True) -> Settings:
    return Settings(
        state_dir=tmp_path / "state", instance="dcunit", lab=lab, upstream_dns="192.0.2.53"
    )


async def _write(settings: Settings, entries: Mapping[str, GatewayEntry]) -> Path:
    """What the node writes (no daemon runs, so nothing is reloaded)."""
    node_side = NodeGateway(settings, choose_upstream(settings))
    await node_side.sync(entries)
    return node_side.state_path


# state.json ---------------------------------------------------------------------------


async def test_state_json_carries_inspection_and_ca_from_the_node_to_the_gateway(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    ca = SandboxCA.create(tmp_path / "sbx-1" / "ca", "sbx-1")
    path = await _write(
        settings, {"sbx-1": GatewayEntry(3, "10.77.0.14", POLICY, INSPECTION, ca.ref)}
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "hunter2-masked" in path.read_text()  # masked values go; secret values never exist
    assert load_state(path) == {
        "sbx-1": SandboxEntry("sbx-1", 3, "10.77.0.14", POLICY, INSPECTION, ca.ref)
    }


async def test_an_entry_written_before_inspection_existed_inspects_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.json"
    item = {"slot": 2, "address": "10.77.0.10", "policy": POLICY.to_wire()}
    path.write_text(json.dumps({"sandboxes": {"sbx-old": item}}))
    assert load_state(path) == {"sbx-old": SandboxEntry("sbx-old", 2, "10.77.0.10", POLICY)}


def test_a_reload_parses_only_the_items_that_changed(tmp_path: Path) -> None:
    path = tmp_path / "state.json"

    def write(items: dict[str, Any]) -> None:
        path.write_text(json.dumps({"sandboxes": items}))

    def item(slot: int, policy: EgressPolicy = POLICY) -> dict[str, Any]:
        return {"slot": slot, "address": f"10.77.0.{4 * slot + 2}", "policy": policy.to_wire()}

    cache: dict[str, Any] = {}
    write({"a": item(1), "b": item(2), "c": item(3)})
    first = load_state(path, None, cache)
    write({"a": item(1), "b": item(2, EgressPolicy.open()), "d": item(4)})
    second = load_state(path, first, cache)
    assert second["a"] is first["a"]  # unchanged: the same entry, not parsed again
    assert second["b"] == SandboxEntry("b", 2, "10.77.0.10", EgressPolicy.open())
    assert second["d"] == SandboxEntry("d", 4, "10.77.0.18", POLICY)
    assert set(cache) == {"a", "b", "d"}  # "c" left the file, and the cache
    # A fallback (deny-all for a policy that does not parse) is parsed again every time,
    # so the item that fixes it is never shadowed by the cache.
    write({"a": {**item(1), "policy": {"allow_out": ["not a name!"]}}})
    assert load_state(path, second, cache)["a"].policy == DENY_ALL
    assert "a" not in cache
    # The same item as a cached one under the file's new content parses as it reads.
    write({"a": item(1)})
    assert load_state(path, None, cache)["a"] == SandboxEntry("a", 1, "10.77.0.6", POLICY)


@pytest.mark.parametrize(
    "broken",
    [
        {"inspection": {"transformations": [{"replace": "no match"}]}},
        {"inspection": {"vault": [{"secret_id": "sec-1"}]}},
        {"inspection": {"buffer_limit": "lots"}},
        {"ca_dir": ["not", "a", "path"]},
    ],
)
def test_an_unreadable_inspection_keeps_the_previous_entry_or_denies_all(
    tmp_path: Path, broken: dict[str, Any]
) -> None:
    path = tmp_path / "state.json"
    item = {"slot": 2, "address": "10.77.0.10", "policy": EgressPolicy.open().to_wire(), **broken}
    path.write_text(json.dumps({"sandboxes": {"sbx-1": item}}))
    before = SandboxEntry("sbx-1", 2, "10.77.0.10", POLICY, INSPECTION)
    assert load_state(path, {"sbx-1": before}) == {"sbx-1": before}
    # Not the same place (or never seen): nothing to keep, so nothing passes.
    elsewhere = SandboxEntry("sbx-1", 5, "10.77.0.22", POLICY, INSPECTION)
    for previous in ({"sbx-1": elsewhere}, None):
        assert load_state(path, previous) == {
            "sbx-1": SandboxEntry("sbx-1", 2, "10.77.0.10", DENY_ALL)
        }


def test_an_unusable_upstream_bundle_trusts_nothing(tmp_path: Path) -> None:
    broken = tmp_path / "bundle.pem"
    broken.write_text("not a certificate\n")
    context = upstream_context(broken)
    assert context.cert_store_stats()["x509_ca"] == 0
    assert context.verify_mode.name == "CERT_REQUIRED" and context.check_hostname


# The running daemon -------------------------------------------------------------------


class RecordingDaemon(gateway.GatewayDaemon):
    """The daemon with its audit events kept in a list instead of the database."""

    events: list[AuditEvent]

    def emit(self, event: AuditEvent) -> None:
        self.events.append(event)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[RecordingDaemon]:
    config = gateway.GatewayConfig(
        state_dir=tmp_path / "state",
        upstream_dns=("127.0.0.1", 9),
        listen_host="127.0.0.1",
        dns_port=0,
        proxy_port=0,
        nflog=False,
    )
    d = RecordingDaemon(config, nft=FakeSets())
    d.events = []
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


async def _reload(d: gateway.GatewayDaemon, entries: Mapping[str, GatewayEntry]) -> None:
    settings = Settings(state_dir=d.config.state_dir, instance="dcunit", lab=True)
    await _write(settings, entries)
    await d.reload()


async def test_the_proxy_sees_the_inspection_and_leaves_follow_the_ca(
    tmp_path: Path, daemon: RecordingDaemon
) -> None:
    ca = SandboxCA.create(tmp_path / "sbx-1" / "ca", "sbx-1")
    await _reload(daemon, {"sbx-1": GatewayEntry(3, "10.77.0.14", POLICY, INSPECTION, ca.ref)})
    assert daemon.proxy is not None
    view = daemon.proxy.lookup("10.77.0.14")
    assert view is not None and (view.sandbox_id, view.inspection) == ("sbx-1", INSPECTION)
    first = daemon.leaves.server_context("sbx-1", "api.openai.com")
    assert daemon.leaves.server_context("sbx-1", "api.openai.com") is first

    # A restore: the same id and directory, a new CA. No leaf of the old one survives.
    ca2 = SandboxCA.create(tmp_path / "sbx-1" / "ca", "sbx-1")
    await _reload(daemon, {"sbx-1": GatewayEntry(3, "10.77.0.14", POLICY, INSPECTION, ca2.ref)})
    assert len(daemon.leaves) == 0
    assert daemon.leaves.server_context("sbx-1", "api.openai.com") is not first

    # Gone: its contexts go with it, and nothing can be minted for it any more.
    daemon.config.state_path.write_text(json.dumps({"sandboxes": {}}))
    await daemon.reload()
    assert len(daemon.leaves) == 0
    with pytest.raises(LookupError, match="has no CA"):
        daemon.leaves.server_context("sbx-1", "api.openai.com")


async def test_the_daemon_starts_with_an_empty_resolved_set(daemon: RecordingDaemon) -> None:
    assert isinstance(daemon.nft, FakeSets) and daemon.nft.calls == ["reset"]


async def test_a_policy_change_reseeds_the_sandboxs_resolved_addresses(
    daemon: RecordingDaemon,
) -> None:
    assert isinstance(daemon.nft, FakeSets)
    await _reload(daemon, {"sbx-1": GatewayEntry(3, "10.77.0.14", POLICY)})
    daemon.resolved.record("sbx-1", "api.openai.com", ["203.0.113.10"], 300)
    narrower = EgressPolicy.parse(["api.openai.com", "x.example"], ["0.0.0.0/0"])
    await _reload(daemon, {"sbx-1": GatewayEntry(3, "10.77.0.14", narrower)})
    gone = EgressPolicy.parse(["x.example"], ["0.0.0.0/0"])
    await _reload(daemon, {"sbx-1": GatewayEntry(3, "10.77.0.14", gone)})
    daemon.resolved.record("sbx-1", "x.example", ["203.0.113.20"], 300)
    await _reload(daemon, {"sbx-1": GatewayEntry(3, "10.77.0.14", EgressPolicy.open())})
    assert daemon.nft.calls[1:] == [
        "replace 3 ['203.0.113.10']",  # still allowed
        "replace 3 []",  # its name is no longer allowed
        "replace 3 []",  # names no longer matter: none left behind
    ]


def _ipv4_tcp(src: str, dst: str, dport: int) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    return header + struct.pack("!HH", 40000, dport) + bytes(16)


async def test_datapath_events_name_the_sandbox_of_the_input_interface(
    daemon: RecordingDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _reload(daemon, {"sbx-1": GatewayEntry(3, "10.77.0.14", POLICY),
                           "sbx-2": GatewayEntry(4, "10.77.0.18", POLICY)})  # fmt: skip
    names = {41: "s3", 42: "s4", 43: "lab0"}

    def indextoname(index: int) -> str:
        if index not in names:
            raise OSError(6, "No such device or address")
        return names[index]

    monkeypatch.setattr(socket, "if_indextoname", indextoname)
    packet = _ipv4_tcp("10.77.0.18", "169.254.169.254", 80)
    daemon._on_nflog(NflogRecord("deny:floor", packet, 42))
    daemon._on_nflog(NflogRecord("allow:open", _ipv4_tcp("10.77.0.14", "203.0.113.5", 443), 41))
    for indev in (43, 44, None):  # not a sandbox's, gone, none: no event
        daemon._on_nflog(NflogRecord("deny:default", packet, indev))
    daemon._on_nflog(NflogRecord("deny:4:floor", packet, 42))  # not ours
    assert daemon.events == [
        AuditEvent("sbx-2", "connection", "deny", "floor", address="169.254.169.254", port=80,
                   protocol="tcp"),
        AuditEvent("sbx-1", "connection", "allow", "open", address="203.0.113.5", port=443,
                   protocol="tcp"),
    ]  # fmt: skip
    assert daemon.decisions["datapath"] == {"allow": 1, "deny": 4}


async def test_http_audit_events_carry_the_request_record(daemon: RecordingDaemon) -> None:
    await _reload(daemon, {"sbx-1": GatewayEntry(3, "10.77.0.14", POLICY, INSPECTION)})
    record = {"method": "GET", "url": "https://api.openai.com/v1/models", "status_code": 200}
    daemon._on_http_audit("sbx-1", "203.0.113.10", 443, HttpAudit(record))
    daemon._on_http_audit(
        "sbx-1", "203.0.113.11", 8080, HttpAudit({"url": "/x"}, verdict="deny", reason="blocked")
    )
    assert daemon.events == [
        AuditEvent(
            "sbx-1",
            "http",
            "allow",
            "inspected",
            name="api.openai.com",
            address="203.0.113.10",
            port=443,
            protocol="https",
            detail=record,
        ),
        AuditEvent(
            "sbx-1",
            "http",
            "deny",
            "blocked",
            name=None,
            address="203.0.113.11",
            port=8080,
            protocol="http",
            detail={"url": "/x"},
        ),
    ]


async def test_no_http_audit_when_the_sandbox_turned_audit_off(
    daemon: RecordingDaemon,
) -> None:
    quiet = InspectionPolicy(transformations=INSPECTION.transformations, audit_enabled=False)
    await _reload(daemon, {"sbx-1": GatewayEntry(3, "10.77.0.14", POLICY, quiet)})
    daemon._on_http_audit("sbx-1", "203.0.113.10", 443, HttpAudit({"url": "https://x.com/"}))
    assert daemon.events == []


# Command line -------------------------------------------------------------------------


def test_the_node_tells_the_daemon_the_lab_bundle_and_the_vault_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path)
    argv = gateway_argv(settings)
    config = parsed_config(argv, monkeypatch)
    assert config.upstream_ca == ca_bundle_path(settings)
    assert config.vault_key_path == settings.keys_dir / "vault.key"
    assert config.leaves_dir == settings.gateway_dir / "leaves"


def test_in_host_mode_upstreams_are_verified_against_the_system_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = gateway_argv(_settings(tmp_path, lab=False))
    assert "--upstream-ca" not in argv
    assert parsed_config(argv, monkeypatch).upstream_ca is None


def _node_side(d: gateway.GatewayDaemon, reloads: list[str]) -> NodeGateway:
    """The node's handle on this (running) daemon; a full reload is recorded, not made."""
    settings = Settings(state_dir=d.config.state_dir, instance="dcunit", lab=True)
    node_side = NodeGateway(settings, choose_upstream(settings))

    async def full_reload() -> None:
        reloads.append("reload")

    node_side._reload = full_reload  # type: ignore[method-assign]
    return node_side


async def test_the_node_hands_the_daemon_one_sandbox_at_a_time(daemon: RecordingDaemon) -> None:
    reloads: list[str] = []
    node_side = _node_side(daemon, reloads)
    await node_side.upsert("sbx-1", GatewayEntry(3, "10.77.0.14", POLICY))
    await node_side.upsert("sbx-2", GatewayEntry(4, "10.77.0.18", POLICY))
    assert reloads == []  # `put` was enough: the daemon never re-read the whole file
    assert daemon.sandboxes == load_state(node_side.state_path)  # and agrees with it
    assert daemon.lookup("10.77.0.18") == SandboxEntry("sbx-2", 4, "10.77.0.18", POLICY)
    first = daemon.sandboxes["sbx-1"]
    await node_side.upsert("sbx-2", GatewayEntry(4, "10.77.0.18", EgressPolicy.open()))
    assert daemon.sandboxes["sbx-1"] is first  # only the changed sandbox was parsed
    assert daemon.sandboxes["sbx-2"].policy == EgressPolicy.open()
    await node_side.remove("sbx-1")
    assert set(daemon.sandboxes) == {"sbx-2"} and daemon.lookup("10.77.0.14") is None
    assert reloads == []
    # A daemon restarted now reads the same from state.json, parsing nothing it has seen.
    kept = daemon.sandboxes["sbx-2"]
    await daemon.reload()
    assert daemon.sandboxes == {"sbx-2": kept} and daemon.sandboxes["sbx-2"] is kept


async def test_a_daemon_that_does_not_take_a_put_gets_a_full_reload(
    daemon: RecordingDaemon,
) -> None:
    reloads: list[str] = []
    node_side = _node_side(daemon, reloads)

    async def older_daemon(line: str, timeout: float = 5.0) -> str:
        return f"error unknown command {line[:40]!r}"

    node_side._command = older_daemon  # type: ignore[method-assign]
    await node_side.upsert("sbx-1", GatewayEntry(3, "10.77.0.14", POLICY))
    assert reloads == ["reload"]


async def test_a_put_the_daemon_cannot_read_is_refused_and_changes_nothing(
    daemon: RecordingDaemon,
) -> None:
    reloads: list[str] = []
    node_side = _node_side(daemon, reloads)
    await node_side.upsert("sbx-1", GatewayEntry(3, "10.77.0.14", POLICY))
    answer = await node_side._command("put sbx-1 {not json")
    assert answer.startswith("error put sbx-1:"), answer
    assert daemon.sandboxes["sbx-1"].policy == POLICY
    assert (await node_side._command("put")).startswith("error")
