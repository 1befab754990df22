"""Governance packs: versioned policy bundles shipped as data in `packs/` (issue 10 item 6).

A pack is `<name>.<version>.json` (the SDK's `GovernancePack` fields, less the derived
`policy_ref`, plus the Rego files it ships and the guardrail settings it implies). Invariant:
a pack that loads only claims what it enforces: each Rego-gated control names a rule its own
Rego denies on, each guardrail-gated control a section its settings enable, and its Rego
compiles. Packs only add denials; the platform's own rules stay whatever the pack says.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from declawd.errors import Internal, NotFound
from declawd.guard.rego import RegoPolicy, compile_policy, package_of

PACKS_DIR = Path(__file__).with_name("packs")

# The gates a control can name, and where each is decided: Rego packages for the first
# three, a SecurityPolicy section (the guardrails) for the others.
REGO_GATES = {
    "commands": "declaw.platform.cmd",
    "network": "declaw.platform.network",
    "content": "declaw.platform.content",
}
GUARDRAIL_GATES = {
    "pii": "pii",
    "injection": "injection_defense",
    "invisible_text": "invisible_text",
}
GATES = (*REGO_GATES, *GUARDRAIL_GATES)

_VERSION = re.compile(r"^v([1-9][0-9]*)$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclass(frozen=True)
class GovernanceControl:
    """A framework control this pack enforces: the gate, the rule that fires, what follows."""

    control: str
    gate: str
    rule: str
    playbook: str


@dataclass(frozen=True)
class GovernanceAdvisory:
    """A framework control with no runtime signal at the sandbox layer, and why."""

    control: str
    reason: str


@dataclass(frozen=True)
class GovernancePack:
    name: str
    version: str
    framework: str
    description: str
    gates: tuple[str, ...]
    enforces: tuple[GovernanceControl, ...]
    advisory: tuple[GovernanceAdvisory, ...]
    seeded: bool
    # file name -> Rego source, the pack's own modules and the shared `lib.*` it imports
    modules: Mapping[str, str]
    # A SecurityPolicy fragment (SDK wire shape): the guardrail sections the pack implies.
    guardrails: Mapping[str, Any]
    _compiled: list[RegoPolicy] = field(default_factory=list, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def policy_ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def packages(self) -> tuple[str, ...]:
        """The platform packages (`declaw.platform.*`) this pack's Rego decides in."""
        found = {package_of(src) or "" for src in self.modules.values()}
        return tuple(sorted(p for p in found if p.startswith("declaw.platform.")))

    def policy(self) -> RegoPolicy:
        """The pack's Rego, compiled once (the modules are shipped and checked at load)."""
        with self._lock:
            if not self._compiled:
                self._compiled.append(compile_policy(dict(self.modules), field=self.policy_ref))
            return self._compiled[0]

    def to_wire(self) -> dict[str, Any]:
        """The SDK's `GovernancePack` fields, then our extensions (guardrails, packages)."""
        return {
            "name": self.name,
            "version": self.version,
            "framework": self.framework,
            "description": self.description,
            "gates": list(self.gates),
            "enforces": [
                {"control": c.control, "gate": c.gate, "rule": c.rule, "playbook": c.playbook}
                for c in self.enforces
            ],
            "advisory": [{"control": a.control, "reason": a.reason} for a in self.advisory],
            "policy_ref": self.policy_ref,
            "seeded": self.seeded,
            "guardrails": json.loads(json.dumps(dict(self.guardrails))),
            "packages": list(self.packages),
        }


def _fail(path: Path, reason: str) -> Internal:
    return Internal(f"governance pack {path.name}: {reason}")


def _text(data: Mapping[str, Any], key: str, path: Path) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise _fail(path, f"'{key}' must be a non-empty string")
    return value


def _controls(data: Mapping[str, Any], path: Path) -> tuple[GovernanceControl, ...]:
    out = []
    for i, item in enumerate(data.get("enforces") or []):
        where = f"enforces[{i}]"
        control = GovernanceControl(
            **{k: _text(item, k, path) for k in ("control", "gate", "rule", "playbook")}
        )
        if control.gate not in GATES:
            raise _fail(path, f"{where}: unknown gate '{control.gate}' (one of {list(GATES)})")
        out.append(control)
    return tuple(out)


def _check_claims(pack: GovernancePack, own: Mapping[str, str], path: Path) -> None:
    """Every enforced control is backed by a rule or a guardrail section of this pack."""
    if set(pack.gates) != {c.gate for c in pack.enforces}:
        raise _fail(path, f"gates {list(pack.gates)} differ from the gates its controls use")
    for c in pack.enforces:
        if c.gate in REGO_GATES:
            package = REGO_GATES[c.gate]
            sources = [s for s in own.values() if package_of(s) == package]
            # deny messages name the rule id: `<policy_ref> <control> <rule>: <why>`
            needle = f"{pack.policy_ref} {c.control} {c.rule}:"
            if not any(needle in s for s in sources):
                raise _fail(path, f"{c.control}: no deny in {package} names '{needle}'")
        else:
            section = GUARDRAIL_GATES[c.gate]
            if c.rule != f"guardrails.{section}":
                raise _fail(path, f"{c.control}: rule of gate {c.gate} is guardrails.{section}")
            if not (pack.guardrails.get(section) or {}).get("enabled"):
                raise _fail(path, f"{c.control}: its guardrails do not enable {section}")


def load_pack(path: Path) -> GovernancePack:
    """One pack from its JSON file and the Rego files it lists (next to it)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _fail(path, f"unreadable: {exc}") from exc
    name, version = _text(data, "name", path), _text(data, "version", path)
    if not _NAME.match(name) or not _VERSION.match(version):
        raise _fail(path, f"bad name or version '{name}@{version}'")
    if path.name != f"{name}.{version}.json":
        raise _fail(path, f"file name must be {name}.{version}.json")
    modules: dict[str, str] = {}
    own: dict[str, str] = {}
    for file in data.get("rego") or []:
        try:
            modules[file] = (path.parent / file).read_text()
        except OSError as exc:
            raise _fail(path, f"rego file {file}: {exc}") from exc
        if not file.startswith("lib."):
            own[file] = modules[file]
    if not own:
        raise _fail(path, "ships no Rego of its own")
    pack = GovernancePack(
        name=name,
        version=version,
        framework=_text(data, "framework", path),
        description=_text(data, "description", path),
        gates=tuple(data.get("gates") or ()),
        enforces=_controls(data, path),
        advisory=tuple(
            GovernanceAdvisory(_text(a, "control", path), _text(a, "reason", path))
            for a in data.get("advisory") or []
        ),
        seeded=bool(data.get("seeded", True)),
        modules=MappingProxyType(modules),
        guardrails=MappingProxyType(dict(data.get("guardrails") or {})),
    )
    _check_claims(pack, own, path)
    return pack


@cache
def load_packs(directory: Path = PACKS_DIR) -> tuple[GovernancePack, ...]:
    """Every pack in `directory`, by name then version (shipped data: loaded once)."""
    packs = [load_pack(p) for p in sorted(directory.glob("*.json"))]
    return tuple(sorted(packs, key=lambda p: (p.name, _version_number(p.version))))


def _version_number(version: str) -> int:
    found = _VERSION.match(version)
    return int(found.group(1)) if found else 0


def find_pack(ref: str, directory: Path = PACKS_DIR) -> GovernancePack:
    """A pack by `name@vN`, or by `name` alone for its latest version."""
    name, _, version = ref.partition("@")
    matches = [
        p for p in load_packs(directory) if p.name == name and (not version or p.version == version)
    ]
    if not matches:
        raise NotFound(f"governance pack '{ref}' not found")
    return matches[-1]


__all__ = [
    "GATES",
    "GovernanceAdvisory",
    "GovernanceControl",
    "GovernancePack",
    "find_pack",
    "load_pack",
    "load_packs",
]
