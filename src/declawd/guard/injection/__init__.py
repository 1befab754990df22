"""Prompt-injection defense (the SDK's `injection_defense`): an offline, layered detector
(normalisation, decoding, a curated RE2 rule set, a score), the pipeline stage that runs it
on both directions, and an optional judge (an operator's OpenAI-compatible endpoint).

Invariant: pure except `Judge` (its one HTTP call, bounded by a timeout); a section without
`domains` scans nothing (docs/injection.md).
"""

from declawd.guard.injection.config import (
    ACTIONS,
    InjectionGuard,
    JudgeSettings,
    parse_injection,
)
from declawd.guard.injection.detect import Scan, detect
from declawd.guard.injection.judge import Judge, Verdict, parse_answer
from declawd.guard.injection.modes import MODES, PROFILES, SENSITIVITIES, Mode
from declawd.guard.injection.rules import CATEGORIES, RULES
from declawd.guard.injection.stage import InjectionStage

__all__ = [
    "ACTIONS",
    "CATEGORIES",
    "MODES",
    "PROFILES",
    "RULES",
    "SENSITIVITIES",
    "InjectionGuard",
    "InjectionStage",
    "Judge",
    "JudgeSettings",
    "Mode",
    "Scan",
    "Verdict",
    "detect",
    "parse_answer",
    "parse_injection",
]
