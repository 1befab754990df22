"""Built-in provider presets (`GET /vault/presets`, `provider` at secret create).

A preset is the injection contract of a well-known API: which hosts get the credential and
how. It carries no secret material. Each scope here passes `parse_scope` like a user's (a
unit test holds that), and each regex is anchored by the full match (`api\\.openai\\.com`
matches that host only, never `api.openai.com.evil.example`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from declawd.errors import InvalidInput
from declawd.inspect.model import VaultScope


@dataclass(frozen=True)
class Preset:
    key: str
    name: str
    category: str
    key_hint: str
    docs_url: str
    scopes: tuple[VaultScope, ...]

    def to_wire(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "category": self.category,
            "key_hint": self.key_hint,
            "docs_url": self.docs_url,
            "scopes": [s.to_wire() for s in self.scopes],
        }


PRESETS: tuple[Preset, ...] = (
    Preset(
        key="openai",
        name="OpenAI",
        category="llm",
        key_hint="sk-...",
        docs_url="https://platform.openai.com/docs/api-reference/authentication",
        scopes=(VaultScope(domain_regex=r"api\.openai\.com", injection_type="bearer"),),
    ),
    Preset(
        key="anthropic",
        name="Anthropic",
        category="llm",
        key_hint="sk-ant-...",
        docs_url="https://docs.anthropic.com/en/api/overview",
        scopes=(
            VaultScope(
                domain_regex=r"api\.anthropic\.com",
                injection_type="header",
                header_name="x-api-key",
                # The Messages API refuses a request without a version header.
                extra_headers={"anthropic-version": "2023-06-01"},
            ),
        ),
    ),
    Preset(
        key="github",
        name="GitHub",
        category="vcs",
        key_hint="ghp_... or github_pat_...",
        docs_url="https://docs.github.com/en/rest/authentication/authenticating-to-the-rest-api",
        # The REST API (and release uploads) take `Authorization: Bearer`; raw file
        # downloads of private repositories take the same header.
        scopes=(
            VaultScope(domain_regex=r"(api|uploads)\.github\.com", injection_type="bearer"),
            VaultScope(domain_regex=r"raw\.githubusercontent\.com", injection_type="bearer"),
        ),
    ),
    Preset(
        key="gemini",
        name="Google Gemini",
        category="llm",
        key_hint="AIza...",
        docs_url="https://ai.google.dev/gemini-api/docs/api-key",
        scopes=(
            VaultScope(
                domain_regex=r"generativelanguage\.googleapis\.com",
                injection_type="header",
                header_name="x-goog-api-key",
            ),
        ),
    ),
    Preset(
        key="mistral",
        name="Mistral AI",
        category="llm",
        key_hint="",
        docs_url="https://docs.mistral.ai/api/",
        scopes=(VaultScope(domain_regex=r"api\.mistral\.ai", injection_type="bearer"),),
    ),
    Preset(
        key="groq",
        name="Groq",
        category="llm",
        key_hint="gsk_...",
        docs_url="https://console.groq.com/docs/api-reference",
        scopes=(VaultScope(domain_regex=r"api\.groq\.com", injection_type="bearer"),),
    ),
)

_BY_KEY = {p.key: p for p in PRESETS}


def preset(key: str, field: str = "provider") -> Preset:
    found = _BY_KEY.get(key.lower())
    if found is None:
        known = ", ".join(sorted(_BY_KEY))
        raise InvalidInput(field, f"unknown provider {key!r} (presets: {known})")
    return found
