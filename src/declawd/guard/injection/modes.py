"""The injection modes (`injection_mode`) as data: how much each category weighs in each
direction, how deep encodings are decoded, what obfuscation adds, which weak cues count,
and how wide the judge's grey band is. Pure constants; docs/injection.md lists them.

Invariant: `MODES` names exactly the profiles of `PROFILES`; a mode of None is derived from
the sensitivity (`low` → permissive, `medium` → balanced, `high` → strict), and sensitivity
always scales the evidence on top (`SENSITIVITY_SCALE`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

Way = Literal["outbound", "inbound"]
MODES: tuple[str, ...] = (
    "strict",
    "balanced",
    "permissive",
    "agentic-tool",
    "data-egress-sensitive",
)
SENSITIVITIES: tuple[str, ...] = ("low", "medium", "high")
SENSITIVITY_SCALE: Mapping[str, float] = MappingProxyType({"low": 0.8, "medium": 1.0, "high": 1.2})
MODE_OF_SENSITIVITY: Mapping[str, str] = MappingProxyType(
    {"low": "permissive", "medium": "balanced", "high": "strict"}
)


def _weights(**by: tuple[float, float]) -> Mapping[str, tuple[float, float]]:
    return MappingProxyType(dict(by))


@dataclass(frozen=True)
class Mode:
    """One posture. `weights[category] = (outbound, inbound)` multipliers (absent: 1.0);
    `scale` multiplies all evidence; `min_rule_weight` drops weaker cues; `combo_bonus` is
    added when a window has findings of two categories or more; `obfuscation_bonus` when a
    finding was only visible once decoded; `band` is the judge's grey band, in evidence
    (nats) either side of the threshold."""

    name: str
    scale: float = 1.0
    decode_depth: int = 2
    obfuscation_bonus: float = 0.6
    combo_bonus: float = 0.4
    min_rule_weight: float = 0.0
    band: float = 1.0
    weights: Mapping[str, tuple[float, float]] = field(default_factory=lambda: _weights())

    def multiplier(self, category: str, way: Way) -> float:
        out, inb = self.weights.get(category, (1.0, 1.0))
        return out if way == "outbound" else inb


PROFILES: Mapping[str, Mode] = MappingProxyType(
    {
        "strict": Mode(
            "strict",
            scale=1.25,
            decode_depth=3,
            obfuscation_bonus=1.0,
            combo_bonus=0.6,
            band=1.5,
        ),
        "balanced": Mode("balanced"),
        "permissive": Mode(
            "permissive",
            scale=0.85,
            decode_depth=1,
            obfuscation_bonus=0.3,
            combo_bonus=0.2,
            min_rule_weight=1.5,
            band=0.7,
        ),
        # Agents reading tool output and web pages: what comes in weighs more, the agent's own
        # requests (tool schemas, earlier calls, its system prompt) less.
        "agentic-tool": Mode(
            "agentic-tool",
            band=1.2,
            weights=_weights(
                tool_call_smuggling=(0.7, 1.4),
                instruction_override=(1.0, 1.2),
                delimiter_injection=(1.0, 1.2),
                exfiltration=(1.0, 1.2),
                role_hijack=(1.0, 1.1),
                system_prompt_leak=(0.8, 1.0),
            ),
        ),
        # Where data leaving matters most: exfiltration and prompt leaks weigh more both ways,
        # encodings are decoded one level deeper.
        "data-egress-sensitive": Mode(
            "data-egress-sensitive",
            decode_depth=3,
            obfuscation_bonus=0.8,
            band=1.2,
            weights=_weights(
                exfiltration=(1.5, 1.5),
                system_prompt_leak=(1.3, 1.2),
                tool_call_smuggling=(1.0, 1.2),
            ),
        ),
    }
)


def resolve(mode: str | None, sensitivity: str) -> Mode:
    """The profile of a guard: its mode, or the one its sensitivity implies."""
    if mode:
        return PROFILES[mode]
    return PROFILES[MODE_OF_SENSITIVITY.get(sensitivity, "balanced")]
