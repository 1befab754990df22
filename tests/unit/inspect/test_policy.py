"""SecurityPolicy JSON → SecuritySpec (validation naming the request's field, the SDK's
defaults filled, unbuilt sections refused) → the InspectionPolicy the proxy enforces."""

from __future__ import annotations

from typing import Any

import pytest
from declaw import (
    AuditConfig,
    CodeSecurityConfig,
    ContentGateConfig,
    CustomPolicyConfig,
    EnvSecurityConfig,
    InjectionDefenseConfig,
    InvisibleTextConfig,
    PIIConfig,
    SecurityPolicy,
    ToxicityConfig,
    TransformationRule,
)
from declaw.security import NetworkPolicy

from declawd.config import Settings
from declawd.errors import InvalidInput, NotSupported
from declawd.inspect.model import (
    PLACEHOLDER,
    InspectionPolicy,
    InvisibleTextGuard,
    TransformRule,
    VaultBinding,
    VaultScope,
)
from declawd.inspect.policy import SecuritySpec, inspection_policy, parse_security

LINEAR = "(patterns run in linear time)"


def sdk(policy: SecurityPolicy) -> dict[str, Any]:
    """What the SDK puts in `policy_json`, without the network (the record keeps that)."""
    return {k: v for k, v in policy.to_dict().items() if k != "network"}


# --- the SDK's shape ---------------------------------------------------------------------


def test_no_policy_reads_back_as_the_sdks_defaults() -> None:
    assert parse_security(None).to_dict() == sdk(SecurityPolicy())
    assert parse_security({}).to_dict() == sdk(SecurityPolicy())
    assert SecuritySpec().to_dict() == sdk(SecurityPolicy())


def test_a_policy_the_sdk_writes_reads_back_unchanged() -> None:
    policy = SecurityPolicy(
        transformations=[
            TransformationRule(r"sk-\w+", "[KEY]"),
            TransformationRule("prod", "staging", "both"),
        ],
        audit=AuditConfig(enabled=False),
        env_security=EnvSecurityConfig(mask_patterns=["MY_*"], auto_mask_in_audit=False),
        toxicity=ToxicityConfig(enabled=False, domains=["a.com"]),
        pii=PIIConfig(types=["email"]),
        network=NetworkPolicy(allow_out=["1.2.3.4"]),
    )
    spec = parse_security(policy.to_dict(), "security.policy_json")
    assert spec.to_dict() == sdk(policy)
    assert spec.transformations == (
        TransformRule(r"sk-\w+", "[KEY]", "outbound"),
        TransformRule("prod", "staging", "both"),
    )
    assert (spec.audit_enabled, spec.mask_patterns, spec.auto_mask_in_audit) == (
        False,
        ("MY_*",),
        False,
    )
    assert spec.network == {"allow_out": ["1.2.3.4"]}


def test_the_bool_forms_of_audit_and_injection_defense_are_accepted() -> None:
    spec = parse_security({"audit": False, "injection_defense": False})
    assert spec.audit_enabled is False
    assert spec.to_dict()["audit"] == {"enabled": False}
    assert spec.to_dict()["injection_defense"] == sdk(SecurityPolicy())["injection_defense"]


def test_carried_names_the_sections_the_request_had() -> None:
    spec = parse_security(
        {"transformations": [], "network": {}, "pii": None, "unknown": 1}, field=""
    )
    assert spec.carried == {"transformations", "network"}
    assert spec.carried_sections() == {"transformations": []}


# --- refusals ----------------------------------------------------------------------------


def test_toxicity_enabled_is_501_saying_why() -> None:
    for value in ({"enabled": True}, True):
        with pytest.raises(NotSupported) as err:
            parse_security({"toxicity": value}, "")
        assert err.value.message.startswith("security.toxicity: no offline detector meets")
        assert "docs/guardrails-quality.md" in err.value.message


def test_every_guardrail_section_round_trips_in_the_sdk_shape() -> None:
    policy = SecurityPolicy(
        pii=PIIConfig(enabled=True, types=["email", "ssn"], action="block", domains=["a.com"]),
        injection_defense=InjectionDefenseConfig(
            enabled=True, action="block", domains=["example.com"], injection_mode="strict"
        ),
        code_security=CodeSecurityConfig(enabled=True, action="block"),
        content_gate=ContentGateConfig(enabled=True, domains=["api.openai.com"]),
        custom_policy=CustomPolicyConfig(
            enabled=True, inline_rego='deny contains "no" if input.action.command == "x"'
        ),
    )
    spec = parse_security(policy.to_dict(), "security.policy_json")
    again = parse_security(spec.to_dict(), "security.policy_json")
    assert again.to_dict() == spec.to_dict()
    assert spec.pii is not None and spec.pii.types == ("email", "ssn")
    assert spec.pii.action == "block" and spec.pii.domains == ("a.com",)
    assert spec.injection is not None and spec.injection.mode == "strict"
    assert spec.code_security is not None and spec.code_security.action == "block"
    assert spec.content_gate == ("api.openai.com",)
    assert spec.custom is not None and spec.custom.has("declaw.platform.cmd")
    ip = inspection_policy(spec, (), {}, Settings())
    assert ip.active and ip.inspects("api.openai.com", tls=True)  # content_gate lists it
    assert ip.inspects("example.com", tls=True)  # injection lists it (code_security: all)
    assert InspectionPolicy.from_wire(ip.to_wire()) == ip


def test_a_policy_ref_adds_the_packs_guardrails_where_the_sandbox_has_none() -> None:
    spec = parse_security(
        {"custom_policy": {"enabled": True, "policy_ref": "owasp-llm-top10@v1"}}, ""
    )
    assert spec.pii is not None and spec.pii.action == "redact"  # the pack's PII
    assert spec.injection is not None and spec.injection.action == "block"
    own = parse_security(
        {
            "pii": {"enabled": True, "action": "log_only"},
            "custom_policy": {"enabled": True, "policy_ref": "owasp-llm-top10@v1"},
        },
        "",
    )
    assert own.pii is not None and own.pii.action == "log_only"  # the sandbox's own stays
    assert own.to_dict()["pii"]["action"] == "log_only"


def test_a_cmd_only_custom_policy_needs_no_inspection_but_a_network_one_does() -> None:
    cmd = parse_security({"custom_policy": {"enabled": True, "inline_rego": "x := 1"}}, "")
    assert not inspection_policy(cmd, (), {}, Settings()).active
    net = parse_security(
        {
            "custom_policy": {
                "enabled": True,
                "inline_modules": ['package declaw.platform.network\ndeny contains "n" if false'],
            }
        },
        "",
    )
    ip = inspection_policy(net, (), {}, Settings())
    assert ip.active and not ip.inspects("example.com", tls=True)


@pytest.mark.parametrize(
    ("prefix", "label"),
    [("security.policy_json", "security.policy_json."), ("", "")],
)
def test_errors_name_the_field_where_the_request_carries_it(prefix: str, label: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_security({"transformations": [{"match": "(?<=a)b", "replace": "x"}]}, prefix)
    assert err.value.message == (
        f"{label}transformations[0].match: lookbehind is not supported {LINEAR}"
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"transformations": {"match": "a"}}, "transformations: must be an array"),
        ({"transformations": ["a"]}, "transformations[0]: must be an object"),
        ({"transformations": [{"replace": "x"}]}, "transformations[0].match: is required"),
        ({"transformations": [{"match": "a"}]}, "transformations[0].replace: is required"),
        (
            {"transformations": [{"match": "a", "replace": 3}]},
            "transformations[0].replace: must be a string",
        ),
        (
            {"transformations": [{"match": "a", "replace": "b", "direction": "egress"}]},
            "transformations[0].direction: must be 'outbound', 'inbound' or 'both' (got 'egress')",
        ),
        ({"audit": "yes"}, "audit: must be a boolean or an object"),
        ({"audit": {"enabled": "no"}}, "audit.enabled: must be a boolean"),
        ({"env_security": []}, "env_security: must be an object"),
        ({"env_security": {"mask_patterns": "X"}}, "env_security.mask_patterns: must be an array"),
        (
            {"env_security": {"mask_patterns": [1]}},
            "env_security.mask_patterns[0]: must be a string",
        ),
        (
            {"env_security": {"auto_mask_in_audit": 1}},
            "env_security.auto_mask_in_audit: must be a boolean",
        ),
        ({"pii": []}, "pii: must be an object"),
        (
            {"pii": {"types": ["ssn", "dna"]}},
            "pii.types[1]: unknown PII type 'dna': must be one of ssn, credit_card, email, "
            "phone, person_name, api_key, address, ip_address",
        ),
        ({"pii": {"action": "mask"}}, "pii.action: must be 'redact', 'block' or 'log_only'"),
        (
            {"injection_defense": {"enabled": True, "threshold": 1.5}},
            "injection_defense.threshold: must be between 0 and 1",
        ),
        (
            {"content_gate": {"domains": "x"}},
            "content_gate.domains: must be an array of host names",
        ),
        (
            {"custom_policy": {"enabled": True, "policy_ref": "nope@v9"}},
            "custom_policy.policy_ref: unknown governance pack policy 'nope@v9'",
        ),
        ({"toxicity": {"enabled": "yes"}}, "toxicity.enabled: must be a boolean"),
        ({"network": ["1.2.3.4"]}, "network: must be an object"),
    ],
)
def test_each_malformed_section_is_400_naming_it(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_security(raw, "security.policy_json")
    assert err.value.message == f"security.policy_json.{message}"


def test_a_body_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidInput) as err:
        parse_security([], "")  # type: ignore[arg-type]
    assert err.value.message == "request body: must be a JSON object"


# --- the InspectionPolicy ----------------------------------------------------------------


def binding() -> VaultBinding:
    return VaultBinding(
        "OPENAI_API_KEY", "sec-1", "vault://t/prod/openai", (VaultScope(r"api\.openai\.com"),)
    )


def test_inspection_policy_carries_rules_vault_audit_and_settings() -> None:
    spec = parse_security(
        {"transformations": [{"match": "a", "replace": "b"}], "audit": {"enabled": False}}
    )
    settings = Settings(inspect_buffer_limit_mb=2.0, vault_plain_http=True)
    policy = inspection_policy(spec, [binding()], {}, settings)
    assert policy.transformations == (TransformRule("a", "b"),)
    assert policy.vault == (binding(),)
    assert policy.audit_enabled is False
    assert policy.buffer_limit == 2 * 1024 * 1024
    assert policy.vault_plain_http is True
    assert policy.active


def test_no_policy_inspects_nothing_but_keeps_the_default_masks() -> None:
    envs = {"GITHUB_TOKEN": "ghp_1234", "HOME": "/home/user"}
    policy = inspection_policy(None, [], envs, Settings())
    assert not policy.active and not policy.inspects("api.openai.com", tls=True)
    assert policy.audit_enabled is True
    assert policy.masked_values == ("ghp_1234",)
    assert policy.buffer_limit == 8 * 1024 * 1024


def test_masked_values_follow_the_patterns_on_the_upper_cased_name() -> None:
    envs = {
        "db_password": "hunter2",  # the SDK upper-cases the name
        "MY_SECRET": "s3cret-longer",
        "OTHER_SECRET": "hunter2",  # once
        "EMPTY_KEY": "",  # nothing to mask
        "OPENAI_API_KEY": PLACEHOLDER,  # a vault env holds the placeholder: not a secret
        "PATH": "/usr/bin",
    }
    spec = parse_security({"env_security": {"mask_patterns": ["*_PASSWORD", "*_SECRET"]}})
    policy = inspection_policy(spec, [], envs, Settings())
    assert policy.masked_values == ("s3cret-longer", "hunter2")  # longest first
    assert policy.mask_patterns == ("*_PASSWORD", "*_SECRET")


def test_without_auto_mask_in_audit_no_value_is_masked() -> None:
    spec = parse_security({"env_security": {"auto_mask_in_audit": False}})
    policy = inspection_policy(spec, [], {"API_KEY": "k-123"}, Settings())
    assert policy.masked_values == () and policy.auto_mask_in_audit is False


def test_the_policy_survives_the_gateways_wire_form() -> None:
    spec = parse_security(
        {"transformations": [{"match": "x", "replace": "y", "direction": "both"}]}
    )
    policy = inspection_policy(spec, [binding()], {"A_TOKEN": "t"}, Settings())
    assert type(policy).from_wire(policy.to_wire()) == policy


# --- invisible text ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        InvisibleTextConfig(enabled=True),
        InvisibleTextConfig(enabled=True, action="block", domains=["api.openai.com", "*.x.io"]),
        InvisibleTextConfig(enabled=True, action="log_only", domains=[]),
        InvisibleTextConfig(enabled=False, action="block"),
    ],
)
def test_invisible_text_reads_back_as_the_sdk_wrote_it(config: InvisibleTextConfig) -> None:
    policy = SecurityPolicy(invisible_text=config)
    spec = parse_security(policy.to_dict(), "security.policy_json")
    assert spec.to_dict() == sdk(policy)
    assert policy.requires_tls_interception is config.enabled
    inspection = inspection_policy(spec, [], {}, Settings())
    assert inspection.active is config.enabled
    if config.enabled:
        domains = None if config.domains is None else tuple(config.domains)
        assert inspection.invisible_text == InvisibleTextGuard(config.action, domains)  # type: ignore[arg-type]
    else:
        assert inspection.invisible_text is None


def test_invisible_text_domains_decide_which_hosts_are_inspected() -> None:
    spec = parse_security({"invisible_text": {"enabled": True, "domains": ["*.openai.com"]}})
    policy = inspection_policy(spec, [], {}, Settings())
    assert policy.inspects("api.openai.com", tls=True)
    assert policy.inspects("openai.com", tls=False)
    assert not policy.inspects("example.com", tls=True)
    assert not policy.inspects(None, tls=True)  # an unknown host is in no list
    every = inspection_policy(parse_security({"invisible_text": True}), [], {}, Settings())
    assert every.inspects(None, tls=True) and every.invisible_text == InvisibleTextGuard()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("on", "invisible_text: must be an object"),
        ({"enabled": 1}, "invisible_text.enabled: must be a boolean"),
        (
            {"enabled": True, "action": "redact"},
            "invisible_text.action: must be 'strip', 'block' or 'log_only'",
        ),
        (
            {"enabled": True, "domains": "a.com"},
            "invisible_text.domains: must be an array of host names",
        ),
        (
            {"enabled": True, "domains": ["a.com", 3]},
            "invisible_text.domains[1]: must be a non-empty string",
        ),
        (
            {"enabled": True, "domains": [" "]},
            "invisible_text.domains[0]: must be a non-empty string",
        ),
    ],
)
def test_a_malformed_invisible_text_is_400_naming_the_field(raw: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_security({"invisible_text": raw}, "security.policy_json")
    assert err.value.message == f"security.policy_json.{message}"


def test_an_invisible_text_domain_regex_must_compile() -> None:
    with pytest.raises(InvalidInput) as err:
        parse_security({"invisible_text": {"enabled": True, "domains": ["~(a"]}}, "")
    assert err.value.message.startswith("invisible_text.domains[0]: is not a valid pattern")
