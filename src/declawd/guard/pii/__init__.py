"""PII detection, redaction and rehydration (the `pii` guardrail): see docs/pii.md."""

from declawd.guard.pii.detect import detect
from declawd.guard.pii.findings import NER, STRUCTURED, TYPES, Finding
from declawd.guard.pii.stage import PiiGuard, PiiStage, describe, redact_text, table_of
from declawd.guard.pii.tokens import Rehydrator, TokenTable, redact, rehydrate

__all__ = [
    "NER",
    "STRUCTURED",
    "TYPES",
    "Finding",
    "PiiGuard",
    "PiiStage",
    "Rehydrator",
    "TokenTable",
    "describe",
    "detect",
    "redact",
    "redact_text",
    "rehydrate",
    "table_of",
]
