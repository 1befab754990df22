"""The gateway daemon: resolver + L7 proxy + nflog audit reader + control socket, one asyncio loop.

Runs inside the gateway netns (`declawd gateway serve`, launched and supervised by the node).
Its view of the sandboxes is `gateway/state.json` (egress policy, inspection policy, CA),
re-read on `reload` over the control socket, or changed one sandbox at a time by `put <id>
<item>` and `forget <id>` (what the node just wrote there for it; it answers `ping`, and
`stats` with the counters /metrics shows, too); the node starts a sandbox only after `ok`.
Invariant: fail closed by construction — the datapath redirects DNS and proxied TCP to our
ports, so without this process those connections find no listener; a state file we cannot
read leaves the previous state, and an entry we cannot read never loosens a sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from declawd.addresses import HOST_LINK, LAB_LINK
from declawd.egress.audit import AuditEvent, AuditWriter
from declawd.egress.gatewaystate import (
    DENY_ALL,
    GatewayConfig,
    ParseCache,
    load_state,
    parse_item,
    parse_upstream,
    upstream_context,
)
from declawd.egress.nflog import NflogReader, NflogRecord, parse_packet, parse_prefix, slot_of
from declawd.egress.nftsets import NftSets
from declawd.egress.policy import IPNetwork, is_non_public
from declawd.egress.proxy import SandboxView, SniProxy
from declawd.egress.proxy.decide import Verdict
from declawd.egress.resolved import ResolvedNames
from declawd.egress.resolver import Resolver, SandboxEntry
from declawd.guard.injection import Judge
from declawd.guard.netgate import PACKAGE as NETWORK_PACKAGE
from declawd.guard.netgate import check_network
from declawd.inspect.ca import CaRef, LeafContexts
from declawd.inspect.http import HttpInspector
from declawd.inspect.model import HttpAudit, HttpLayer, InspectContext, InspectionPolicy
from declawd.inspect.pipeline import GuardServices
from declawd.vault.nodesource import NodeSecretSource
from declawd.vault.reader import VaultReader

# Re-exported: the CLI and tests reach the daemon's inputs through this module.
__all__ = ["DENY_ALL", "GatewayConfig", "GatewayDaemon", "load_state", "parse_upstream"]

log = logging.getLogger(__name__)

CONTROL_LINE_LIMIT = 16 << 20


def guard_services(config: GatewayConfig) -> GuardServices:
    """The process-wide parts of the guardrails: the operator's injection judge, if any."""
    if not config.judge_url:
        return GuardServices()
    ca = str(config.upstream_ca) if config.upstream_ca is not None else None
    return GuardServices(judge=Judge(config.judge_url, model=config.judge_model, ca_file=ca))


class GatewayDaemon:
    def __init__(self, config: GatewayConfig, *, nft: NftSets | None = None) -> None:
        self.config = config
        self.extra_ranges: list[IPNetwork] = [
            ipaddress.ip_network(config.pool),
            LAB_LINK,
            HOST_LINK,
            *config.extra_ranges,
        ]
        self.exempt: list[IPNetwork] = [ipaddress.ip_network(e) for e in config.exempt]
        self.nft = nft
        self.sandboxes: dict[str, SandboxEntry] = {}
        self._by_address: dict[str, SandboxEntry] = {}
        self._by_slot: dict[int, SandboxEntry] = {}
        self.resolved = ResolvedNames()
        self.audit = AuditWriter(config.audit_target)
        self.leaves = LeafContexts(self._ca_of, config.leaves_dir)
        self.vault: VaultReader | NodeSecretSource = (
            NodeSecretSource(config.vault_socket)
            if config.vault_socket is not None
            else VaultReader(config.audit_db, config.vault_key_path)
        )
        self.guard_services = guard_services(config)
        self.resolver: Resolver | None = None
        self.proxy: SniProxy | None = None
        self.nflog: NflogReader | None = None
        self._control: asyncio.Server | None = None
        self._reload_lock = asyncio.Lock()
        # state.json items parsed at the last reload (gatewaystate.load_state).
        self._parsed: ParseCache = {}
        self._pruner: asyncio.Task[None] | None = None
        # For the `stats` command: decisions the resolver and proxy do not count themselves
        # (inspected requests, the datapath's logged packets), by verdict.
        self.started_at = time.time()
        self.decisions: dict[str, dict[str, int]] = {
            "http": {"allow": 0, "deny": 0},
            "datapath": {"allow": 0, "deny": 0},
        }

    # Views -----------------------------------------------------------------------------
    def lookup(self, address: str) -> SandboxEntry | None:
        return self._by_address.get(address)

    def _ca_of(self, sandbox_id: str) -> CaRef | None:
        entry = self.sandboxes.get(sandbox_id)
        return None if entry is None else entry.ca

    def emit(self, event: AuditEvent) -> None:
        self.audit.emit(event)

    async def admit(self, slot: int, timeouts: dict[str, float]) -> None:
        nft = self.nft
        if nft is None:
            raise RuntimeError("nftables unavailable")
        if nft.backend == "netlink":
            # One batch the kernel processes and ACKs within our send (0.04-0.09 ms, flat in
            # the node's size; at worst it waits for another transaction's commit): cheaper
            # on the loop than the thread hop (~0.1 ms) it would cost every cold answer.
            nft.admit(slot, timeouts)
            return
        await asyncio.to_thread(nft.admit, slot, timeouts)

    # Lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        cfg.gateway_dir.mkdir(parents=True, exist_ok=True)
        try:
            await self.audit.start()
            if self.nft is None:
                self.nft = NftSets()
            try:
                # Nothing admitted before this start is remembered, so `replace` could not
                # delete it: start from an empty resolved4 (names are admitted again).
                self.nft.reset()
            except Exception as exc:
                log.error("cannot flush resolved addresses: %s", exc)
            self._apply(self._read_state() or {})
            self.resolver = Resolver(
                lookup=self.lookup,
                upstream=cfg.upstream_dns,
                admit=self.admit,
                resolved=self.resolved,
                emit=self.emit,
                extra_ranges=self.extra_ranges,
                exempt=self.exempt,
                flood_qps=cfg.dns_flood_qps,
                flood_window_s=cfg.dns_flood_window_s,
            )
            await self.resolver.start(cfg.listen_host, cfg.dns_port)
            await self._start_proxy()
            if cfg.nflog:
                self.nflog = NflogReader(self._on_nflog)
                try:
                    self.nflog.start()
                except OSError as exc:
                    log.error("nflog group unavailable, datapath events not audited: %s", exc)
                    self.nflog = None
            self._pruner = asyncio.create_task(self._prune_loop(), name="resolved-pruner")
            await self._start_control()
        except BaseException:
            await self.stop()
            raise
        log.info(
            "gateway up: dns %s:%d, proxy %s, %d sandboxes",
            cfg.listen_host,
            cfg.dns_port,
            "on" if self.proxy else "off",
            len(self.sandboxes),
        )

    async def _start_proxy(self) -> None:
        def view(address: str) -> SandboxView | None:
            entry = self.lookup(address)
            if entry is None:
                return None
            return SandboxView(entry.sandbox_id, entry.policy, entry.inspection)

        def http_layer(ctx: InspectContext, policy: InspectionPolicy) -> HttpLayer:
            return HttpInspector(ctx, policy, secrets=self.vault, services=self.guard_services)

        kwargs: dict[str, Any] = {
            "lookup": view,
            "resolved": self.resolved,
            "audit": self._on_proxy_audit,
            "extra_non_public": self.extra_ranges,
            "non_public_exempt": self.exempt,
            "handshake_timeout": self.config.handshake_timeout,
            "leaf_contexts": self.leaves,
            "upstream_tls": upstream_context(self.config.upstream_ca),
            "http_layer": http_layer,
            "audit_http": self._on_http_audit,
            "network_gate": self._network_gate,
            "network_gated": self._network_gated,
        }
        if self.config.peek_timeout is not None:
            kwargs["peek_timeout"] = self.config.peek_timeout
        self.proxy = SniProxy(**kwargs)
        await self.proxy.start(self.config.listen_host, self.config.proxy_port)

    async def _start_control(self) -> None:
        path = self.config.control_path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # stale socket of a previous (crashed) instance
        # A `put` line carries one sandbox's item (its policy may list many names).
        self._control = await asyncio.start_unix_server(
            self._serve_control, str(path), limit=CONTROL_LINE_LIMIT
        )
        os.chmod(path, 0o600)

    async def stop(self) -> None:
        """Stop every component (reverse order of start). Idempotent."""
        control, self._control = self._control, None
        if control is not None:
            control.close()
            with contextlib.suppress(FileNotFoundError):
                self.config.control_path.unlink()
        pruner, self._pruner = self._pruner, None
        if pruner is not None:
            pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pruner
        if self.nflog is not None:
            self.nflog.stop()
            self.nflog = None
        if self.proxy is not None:
            proxy, self.proxy = self.proxy, None
            await proxy.stop()
        if self.resolver is not None:
            resolver, self.resolver = self.resolver, None
            await resolver.stop()
        await self.audit.stop()
        self.vault.close()
        if self.nft is not None:
            self.nft.close()
            self.nft = None

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT, stop."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            log.info("gateway stopping")
            await self.stop()

    # State -----------------------------------------------------------------------------
    def _read_state(self) -> dict[str, SandboxEntry] | None:
        try:
            return load_state(self.config.state_path, self.sandboxes, self._parsed)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("cannot read %s: %s", self.config.state_path, exc)
            return None

    def _apply(self, new: dict[str, SandboxEntry]) -> tuple[list[SandboxEntry], list[str]]:
        """Install a new sandbox table; returns the entries whose egress policy changed and
        the ids whose inspection policy changed."""
        old = self.sandboxes
        changed: list[SandboxEntry] = []
        inspection_changed: list[str] = []
        for sid, entry in old.items():
            fresh = new.get(sid)
            if fresh is entry:
                continue  # its item in state.json did not change (the parse cache's entry)
            if fresh is None or fresh.ca != entry.ca:
                # Gone, or a new CA under the same id (a restore): no leaf of the old one.
                self.leaves.forget(sid)
            if fresh is None or fresh.slot != entry.slot or fresh.address != entry.address:
                self.resolved.forget(sid)
                if self.resolver is not None:
                    self.resolver.forget(sid)
                if self.proxy is not None:
                    self.proxy.cut(sid, lambda *_: False)
                continue
            if fresh.policy.to_wire() != entry.policy.to_wire():
                changed.append(fresh)
            if fresh.inspection != entry.inspection or fresh.ca != entry.ca:
                inspection_changed.append(sid)
        self.sandboxes = new
        self._by_address = {e.address: e for e in new.values()}
        self._by_slot = {e.slot: e for e in new.values()}
        return changed, inspection_changed

    async def reload(self) -> None:
        async with self._reload_lock:
            new = self._read_state()
            if new is None:
                raise ValueError("state.json unreadable; previous state kept")
            await self._install(new)

    async def put(self, sandbox_id: str, item: Any) -> None:
        """One sandbox's new item (what the node just wrote into state.json for it): parsed
        alone, so a create with 500 sandboxes on the node parses one entry, not the file."""
        async with self._reload_lock:
            before = self.sandboxes.get(sandbox_id)
            entry = parse_item(sandbox_id, item, before, self._parsed)
            new = {k: v for k, v in self.sandboxes.items() if k != sandbox_id}
            if entry is not None:
                new[sandbox_id] = entry
            await self._install(new)

    async def forget(self, sandbox_id: str) -> None:
        """The sandbox left state.json."""
        async with self._reload_lock:
            self._parsed.pop(sandbox_id, None)
            if sandbox_id in self.sandboxes:
                await self._install({k: v for k, v in self.sandboxes.items() if k != sandbox_id})

    async def _install(self, new: dict[str, SandboxEntry]) -> None:
        changed, inspection_changed = self._apply(new)
        for entry in changed:
            await self._policy_changed(entry)
        if self.proxy is not None:
            for sid in inspection_changed:
                # A connection keeps the inspection it started with (passthrough, or an
                # HTTP layer built from the old policy): reset them all, so every
                # connection from now on is handled under the new one.
                self.proxy.cut(sid, lambda *_: False)

    async def _policy_changed(self, entry: SandboxEntry) -> None:
        sid, policy = entry.sandbox_id, entry.policy
        self.resolved.retain(sid, policy.name_allowed)
        if self.nft is not None:
            # resolved4 must hold exactly the addresses of names still allowed: none when
            # names no longer matter (inert then, but they would count again if a later
            # policy has names before this daemon re-seeds it).
            names = policy.domains_enforced and policy.allow_domains
            remaining = self.resolved.remaining(sid) if names else {}
            now_left = {a: max(1.0, t) for a, t in remaining.items()}
            try:
                await asyncio.to_thread(self.nft.replace, entry.slot, now_left)
            except Exception as exc:
                log.error("re-seeding resolved4 of slot %d for %s failed: %s", entry.slot, sid, exc)
        if self.resolver is not None:
            # After the set was rewritten: no cached answer may claim an admission from before.
            self.resolver.forget_answers(sid)
        if self.proxy is not None:
            self.proxy.cut(sid, self._still_allowed(entry))

    def _network_gated(self, sid: str) -> bool:
        """Whether the sandbox's custom policy has a network package (on the loop)."""
        entry = self.sandboxes.get(sid)
        custom = entry.inspection.custom if entry is not None else None
        return custom is not None and custom.has(NETWORK_PACKAGE)

    def _network_gate(self, sid: str, name: str | None, ip: str, port: int) -> Verdict | None:
        """The sandbox's custom policy on a connection about to be dialled (on an executor
        thread): a deny Verdict naming the rules, or None. Evaluation that fails follows the
        policy's default_deny; an allow despite a failure is logged."""
        entry = self.sandboxes.get(sid)
        custom = entry.inspection.custom if entry is not None else None
        if custom is None or not custom.has(NETWORK_PACKAGE):
            return None
        if name is None:  # a connection without SNI/Host: the name the sandbox resolved
            name = self.resolved.any_allowed_name_for(sid, ip, lambda _n: True)
        verdict = check_network(custom, sandbox_id=sid, name=name, ip=ip, port=port)
        if not verdict.denied:
            if verdict.error:
                log.warning("network policy of %s failed, allowed: %s", sid, verdict.error)
            return None
        messages = verdict.messages or (f"policy evaluation failed: {verdict.error}",)
        return Verdict(False, "custom_policy", name, messages=tuple(messages))

    def _still_allowed(self, entry: SandboxEntry) -> Callable[[str | None, str, int], bool]:
        policy, sid = entry.policy, entry.sandbox_id

        def check(name: str | None, address: str, _port: int) -> bool:
            if is_non_public(address, self.extra_ranges, exempt=self.exempt):
                return False
            l4 = policy.allows_address(address)
            if l4 is not None:
                return l4
            if name is None:
                return (
                    self.resolved.any_allowed_name_for(sid, address, policy.name_allowed)
                    is not None
                )
            return policy.name_allowed(name) and self.resolved.resolved_for(sid, name, address)

        return check

    def stats(self) -> dict[str, Any]:
        """Counters since this daemon started, for the `stats` command (the node's metrics):
        totals and reasons only, never a sandbox id."""
        proxy = self.proxy.stats() if self.proxy is not None else {}
        proxy.pop("per_sandbox", None)
        return {
            "started_at": self.started_at,
            "sandboxes": len(self.sandboxes),
            "proxy": proxy,
            "resolver": self.resolver.counters() if self.resolver is not None else {},
            "decisions": {kind: dict(counts) for kind, counts in self.decisions.items()},
        }

    def _decided(self, kind: str, verdict: str) -> None:
        counts = self.decisions[kind]
        key = "allow" if verdict == "allow" else "deny"
        counts[key] += 1

    # Control socket --------------------------------------------------------------------
    async def _serve_control(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                try:
                    async with asyncio.timeout(60):
                        line = await reader.readline()
                except TimeoutError:
                    break
                if not line:
                    break
                command = line.decode(errors="replace").strip()
                if command == "ping":
                    answer = "ok"
                elif command == "stats":
                    answer = json.dumps(self.stats(), sort_keys=True)
                elif command == "reload":
                    try:
                        await self.reload()
                        answer = "ok"
                    except Exception as exc:
                        log.exception("reload failed")
                        answer = f"error {exc}".replace("\n", " ")
                elif command.startswith(("put ", "forget ")):
                    answer = await self._delta(command)
                else:
                    answer = f"error unknown command {command[:40]!r}"
                writer.write(answer.encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            # The peer may have gone first: the socket's own error is no failure of ours.
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _delta(self, command: str) -> str:
        """`put <sandbox id> <its state.json item as JSON>` or `forget <sandbox id>`."""
        verb, _, rest = command.partition(" ")
        sandbox_id, _, raw = rest.partition(" ")
        if not sandbox_id:
            return f"error {verb}: no sandbox id"
        try:
            if verb == "forget":
                await self.forget(sandbox_id)
            else:
                await self.put(sandbox_id, json.loads(raw))
        except ValueError as exc:
            return f"error {verb} {sandbox_id}: {exc}".replace("\n", " ")
        except Exception as exc:
            log.exception("%s %s failed", verb, sandbox_id)
            return f"error {verb} {sandbox_id}: {exc}".replace("\n", " ")
        return "ok"

    # Audit sources ---------------------------------------------------------------------
    def _on_proxy_audit(self, event: dict[str, Any]) -> None:
        port = event.get("port")
        self.emit(
            AuditEvent(
                sandbox_id=str(event["sandbox_id"]),
                kind=str(event.get("kind") or "connection"),
                verdict=str(event.get("verdict") or "deny"),
                reason=str(event.get("reason") or ""),
                name=event.get("name"),
                address=event.get("address"),
                port=int(port) if port is not None else None,
                protocol=event.get("protocol"),
                detail=event.get("detail"),
            )
        )

    def _on_http_audit(self, sandbox_id: str, address: str, port: int, audit: HttpAudit) -> None:
        """An inspected request, as an audit event of kind `http` (its fields in `detail`);
        none at all for a sandbox whose policy says `audit.enabled = false`."""
        self._decided("http", audit.verdict)
        entry = self.sandboxes.get(sandbox_id)
        if entry is not None and not entry.inspection.audit_enabled:
            return
        record = dict(audit.record)
        url = urlsplit(str(record.get("url") or ""))
        scheme = url.scheme if url.scheme in ("http", "https") else None
        self.emit(
            AuditEvent(
                sandbox_id=sandbox_id,
                kind="http",
                verdict=audit.verdict,
                reason=audit.reason,
                name=str(record.get("host") or url.hostname or "") or None,
                address=address,
                port=port,
                protocol=scheme or ("https" if port == 443 else "http"),
                detail=record,
            )
        )

    def _on_nflog(self, record: NflogRecord) -> None:
        prefix = parse_prefix(record.prefix)
        if prefix is None:
            return
        self._decided("datapath", prefix.verdict)
        slot = slot_of(record.indev)
        entry = None if slot is None else self._by_slot.get(slot)
        if entry is None:
            log.debug("nflog event for unknown interface %s", record.indev)
            return
        packet = parse_packet(record.payload)
        self.emit(
            AuditEvent(
                sandbox_id=entry.sandbox_id,
                kind="connection",
                verdict=prefix.verdict,
                reason=prefix.reason,
                address=packet.dst if packet else None,
                port=packet.dport if packet else None,
                protocol=packet.protocol if packet else None,
            )
        )

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(60)
            self.resolved.prune()
            if self.nft is not None:
                self.nft.prune()
