"""The wire shapes of the HTTP API as pydantic models, for the OpenAPI document only.

Routes never parse or answer through these models (bodies are read by `api/body.py`, answers
are built by the views), so declaring a model cannot change the wire: no 422, no coercion.
The invariant is the other way round: each model mirrors what the SDK sends or what our
views answer (tests/unit/test_api_docs.py validates real view output against them).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel


def _closed(schema: dict[str, Any]) -> None:
    # Extra keys are allowed so tests can find undocumented ones (`model_extra`); the
    # document itself lists the known fields only.
    schema.pop("additionalProperties", None)


class Wire(BaseModel):
    """A JSON object on the wire; unknown request fields are ignored by the server."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_closed)


# Common --------------------------------------------------------------------------------
class ErrorBody(Wire):
    """Every error: the SDK raises `HTTP <status>: <message>` and sets `.code`."""

    message: str = Field(description="What went wrong; a bad field is named first: `field: why`")
    code: str | None = Field(
        None,
        description="Machine-readable reason, when there is one (e.g. `idempotency_in_progress`,"
        " `template_not_ready`, `sandbox_paused`, `version_mismatch`); omitted otherwise",
    )


class Ok(Wire):
    ok: bool = True


class Killed(Wire):
    killed: bool


class Deleted(Wire):
    deleted: bool


class Exists(Wire):
    exists: bool


class TextData(Wire):
    data: str = Field(description="Plain UTF-8 text")


# Sandboxes -----------------------------------------------------------------------------
SandboxStateName = Literal["live", "running", "paused", "creating", "killed"]


class NetworkOpts(Wire):
    """`SandboxNetworkOpts.to_dict()`; a domain in `allow_out` needs `0.0.0.0/0` in `deny_out`."""

    allow_out: list[str] = Field(
        default_factory=list, description="CIDRs, addresses or domains (`*.x.com` wildcards)"
    )
    deny_out: list[str] = Field(
        default_factory=list,
        description="CIDRs or addresses; `0.0.0.0/0` (ALL_TRAFFIC) denies everything else",
    )
    allow_public_traffic: bool | None = Field(
        None, description="false: the ports route takes the API key only, not the traffic token"
    )
    mask_request_host: str | None = Field(
        None, description="Host header sent to servers in the sandbox (ports route); `${PORT}`"
    )


class NetworkPolicy(Wire):
    """The egress policy in force."""

    allow_out: list[str] = Field(default_factory=list)
    deny_out: list[str] = Field(default_factory=list)


class SecurityPolicyField(Wire):
    policy_json: str = Field(
        description="`json.dumps(SecurityPolicy.to_dict())`: a string holding JSON (an object is"
        " accepted too)"
    )


class Lifecycle(Wire):
    on_timeout: Literal["kill", "pause"] = "kill"
    auto_resume: bool = False


class VolumeAttachment(Wire):
    volume_id: str
    mount_path: str = Field(description="Absolute path inside the sandbox")
    mode: Literal["copy", "mount", "mount-ro"] | None = Field(None, description="Default copy")
    subpath: str | None = Field(None, description="Live mounts only: one directory of the volume")


class CreateSandboxRequest(Wire):
    template: str = Field("base", description="Template id or the team's alias")
    timeout: int = Field(300, description="Seconds until the sandbox ends; 0 means the default")
    secure: bool = True
    metadata: dict[str, str] | None = Field(
        None, description="`declaw.runtime`: `runc` or `runsc` picks the runtime"
    )
    envs: dict[str, str] | None = None
    vault_refs: dict[str, str] | None = Field(
        None, description='`{"ENV": "vault://<team>/<environment>/<secret>"}`'
    )
    network: NetworkOpts | None = None
    security: SecurityPolicyField | None = None
    lifecycle: Lifecycle | None = None
    volumes: list[VolumeAttachment] | None = None


class PIIConfig(Wire):
    enabled: bool = False
    types: list[str] = Field(default_factory=list)
    action: Literal["redact", "block", "log_only"] = "redact"
    rehydrate_response: bool = True
    domains: list[str] | None = None


class InjectionJudge(Wire):
    enabled: bool = False
    always: bool | None = None
    policy: str | None = None


class InjectionDefenseConfig(Wire):
    enabled: bool = False
    action: Literal["block", "log_only"] = "log_only"
    sensitivity: Literal["low", "medium", "high"] = "medium"
    threshold: float = 0.95
    domains: list[str] | None = None
    judge: InjectionJudge | None = None
    injection_mode: str | None = None


class TransformationRule(Wire):
    match: str = Field(description="Python regular expression")
    replace: str
    direction: Literal["outbound", "inbound", "both"] = "outbound"


class AuditConfig(Wire):
    enabled: bool = True


class EnvSecurityConfig(Wire):
    mask_patterns: list[str] = Field(default_factory=list)
    auto_mask_in_audit: bool = True


class ScannerConfig(Wire):
    """ToxicityConfig, CodeSecurityConfig, InvisibleTextConfig (their own fields vary)."""

    enabled: bool = False
    action: str | None = None
    threshold: float | None = None
    domains: list[str] | None = None
    excluded_languages: list[str] | None = None


class ContentGateConfig(Wire):
    enabled: bool = False
    domains: list[str] | None = None


class CustomPolicyConfig(Wire):
    enabled: bool = False
    inline_rego: str | None = None
    inline_modules: list[str] | None = None
    policy_ref: str | None = Field(None, description="A governance pack policy, e.g. `name@v1`")
    default_deny: bool = False


class SecurityPolicy(Wire):
    """The SDK's `SecurityPolicy.to_dict()`; `network` is the egress policy in force."""

    pii: PIIConfig | None = None
    injection_defense: InjectionDefenseConfig | bool | None = None
    transformations: list[TransformationRule] | None = None
    audit: AuditConfig | bool | None = None
    env_security: EnvSecurityConfig | None = None
    network: NetworkOpts | None = None
    toxicity: ScannerConfig | None = None
    code_security: ScannerConfig | None = None
    invisible_text: ScannerConfig | None = None
    content_gate: ContentGateConfig | None = None
    custom_policy: CustomPolicyConfig | None = None


class Sandbox(Wire):
    """The SDK's `SandboxInfo` plus what `create`/`connect` read and our extensions."""

    sandbox_id: str
    template_id: str
    name: str = Field(description="The template's alias")
    alias: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    started_at: str | None = Field(None, description="ISO-8601 UTC")
    end_at: str | None = Field(None, description="ISO-8601 UTC: when the sandbox ends")
    timeout: int | None = None
    state: SandboxStateName
    cpu_count: float | None = None
    memory_mb: int | None = None
    runtime: str | None = Field(None, description="`runc` or `runsc`")
    envs: dict[str, str] = Field(
        default_factory=dict, description="Values of names matching `mask_patterns` read `***`"
    )
    network: NetworkOpts = Field(description="The egress policy in force")
    security: SecurityPolicy | None = None
    traffic_access_token: str | None = Field(
        None,
        description="Create and connect only: the token for the ports route"
        " (`X-Declaw-Traffic-Token` or `?token=`); null with `allow_public_traffic: false`",
    )


class SandboxList(Wire):
    sandboxes: list[Sandbox]
    next_token: str | None = None


class KillManyRequest(Wire):
    sandbox_ids: list[str]


class KillOutcome(Wire):
    queued: bool | None = None
    killed: bool | None = None
    error: str | None = None


class KillManyResult(Wire):
    results: dict[str, KillOutcome]


class Queued(Wire):
    queued: bool


class SandboxStatus(Wire):
    is_running: bool
    state: SandboxStateName


class SetTimeoutRequest(Wire):
    timeout: int = Field(description="Seconds from now")


class TimeoutSet(Wire):
    ok: bool = True
    end_at: str | None


class MetricSample(Wire):
    timestamp: str
    cpu_usage_percent: float
    memory_usage_mb: float
    disk_usage_mb: float


class MetricSeries(RootModel[list[MetricSample]]):
    """Samples in the range, oldest first (a paused sandbox reads CPU 0)."""


class Paused(Wire):
    sandbox_id: str
    state: SandboxStateName


class Resumed(Wire):
    sandbox_id: str
    state: SandboxStateName
    end_at: str | None


class Restored(Wire):
    sandbox_id: str
    snapshot_id: str
    node_id: str
    state: SandboxStateName


# Commands, PTY, stdio ------------------------------------------------------------------
class RunCommandRequest(Wire):
    cmd: str = Field(description="A shell line (`/bin/sh -c`)")
    background: bool = False
    user: str = "user"
    envs: dict[str, str] | None = None
    cwd: str | None = Field(None, description="Absolute path")
    stdin: str | None = None
    timeout: float | None = Field(
        60, description="Seconds; foreground only; exceeded → 408 and the group is killed"
    )


class CommandResult(Wire):
    stdout: str = ""
    stderr: str = ""
    exit_code: int = 0


class Pid(Wire):
    pid: int


class RunCommandResult(RootModel[CommandResult | Pid]):
    """Foreground: the result (a non-zero exit is not an error); background: its pid."""


class ProcessInfo(Wire):
    pid: int
    cmd: str = ""
    is_pty: bool = False
    envs: dict[str, str] = Field(default_factory=dict)
    tag: str | None = Field(None, description="command, pty or stdio")


class ProcessList(RootModel[list[ProcessInfo]]):
    """The running commands, PTYs and stdio processes."""


class StreamCommandRequest(Wire):
    cmd: str
    stream: bool = True
    user: str = "user"
    envs: dict[str, str] | None = None
    cwd: str | None = None
    timeout: float | None = 60


class StreamEvent(Wire):
    """`event: stdout|stderr` `{"type", "data"}`, `event: exit` `{"exit_code"}`,
    `event: error` `{"error"}` (a refused command: error then exit 126)."""

    type: Literal["stdout", "stderr"] | None = None
    data: str | None = None
    exit_code: int | None = None
    error: str | None = None


class PtySize(Wire):
    cols: int = Field(80, ge=1, le=1000)
    rows: int = Field(24, ge=1, le=1000)


class CreatePtyRequest(Wire):
    size: PtySize | None = Field(None, description="Default 80 columns, 24 rows")
    user: str = "user"
    cwd: str | None = None
    envs: dict[str, str] | None = None
    timeout: float | None = Field(3600, description="Seconds until the PTY is killed; 0: never")


class ResizePtyRequest(Wire):
    size: PtySize


class PtyEvent(Wire):
    """`event: data` `{"data": base64}`; `event: exit` `{"exit_code"}`."""

    data: str | None = Field(None, description="base64 of the terminal's output")
    exit_code: int | None = None


class StartStdioRequest(Wire):
    cmd: str
    user: str = "user"
    envs: dict[str, str] | None = None
    cwd: str | None = None


class StdioStarted(Wire):
    cmd_id: str


class Base64Data(Wire):
    data: str = Field(description="base64 of the bytes")


class StdioEvent(Wire):
    """`event: stdout|stderr` `{"entry_id", "data": base64}`; `event: exit` `{"exit_code"}`."""

    entry_id: int | None = None
    data: str | None = None
    exit_code: int | None = None


# Files ---------------------------------------------------------------------------------
class WriteTextRequest(Wire):
    path: str = Field(description="Absolute path inside the sandbox")
    username: str = "user"
    data: str = ""


class WriteInfo(Wire):
    path: str
    size: int = 0


class BatchEntry(Wire):
    path: str
    data: str = ""


class WriteBatchRequest(Wire):
    files: list[BatchEntry]
    username: str = "user"


class WriteInfoList(RootModel[list[WriteInfo]]):
    """One entry per file, in request order."""


class EntryInfo(Wire):
    name: str
    path: str
    type: Literal["file", "dir"] = "file"
    size: int = 0
    mode: int | None = None
    mtime: float | None = None
    symlink_target: str | None = None


class EntryList(RootModel[list[EntryInfo]]):
    """The directory's entries (down to `depth`)."""


class RenameRequest(Wire):
    old_path: str
    new_path: str
    username: str = "user"


class PathRequest(Wire):
    path: str
    username: str = "user"


class Created(Wire):
    created: bool = Field(description="false when it existed")


class WatchRequest(Wire):
    path: str
    username: str = "user"
    recursive: bool = False


class WatchStarted(Wire):
    watch_id: str


class FilesystemEvent(Wire):
    type: Literal["create", "write", "remove", "rename", "chmod"]
    path: str
    timestamp: float | None = None


# Network policy and audit --------------------------------------------------------------
class AuditEvent(Wire):
    """One decision; `http` events add the inspected request's fields."""

    time: str = Field(description="ISO-8601 UTC")
    sandbox_id: str
    kind: Literal["dns", "connection", "http", "command", "file"]
    verdict: str = Field(description="allow or deny")
    reason: str | None = None
    name: str | None = None
    address: str | None = None
    port: int | None = None
    protocol: str | None = None


class AuditPage(Wire):
    events: list[AuditEvent]
    next_token: str | None = None


# Snapshots -----------------------------------------------------------------------------
class Snapshot(Wire):
    """Parsed by the SDK as both `Snapshot` and `SnapshotInfo`."""

    snapshot_id: str
    sandbox_id: str
    source: Literal["periodic", "pause", "manual"]
    mem_blob_key: str = ""
    vmstate_blob_key: str = ""
    mem_size_bytes: int | None = Field(None, description="null: no memory is captured")
    pause_duration_ms: int | None = None
    created_at: str | None = None
    template_id: str | None = None
    fs_size_bytes: int | None = None


class SnapshotList(Wire):
    snapshots: list[Snapshot]


class SnapshotPage(Wire):
    snapshots: list[Snapshot]
    next_token: str | None = None


# Volumes -------------------------------------------------------------------------------
class Volume(Wire):
    volume_id: str
    owner_id: str
    name: str
    blob_key: str = ""
    size_bytes: int = 0
    content_type: str = ""
    created_at: str | None = None
    updated_at: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    backend: str = "file-granular"
    quota_bytes: int = 0
    files: int | None = Field(None, description="Create/capture only: files kept")
    dropped_entries: int | None = Field(None, description="Create/capture only: entries dropped")
    dropped: dict[str, int] | None = Field(None, description="Create/capture only: by reason")


class VolumeList(Wire):
    volumes: list[Volume]


class VolumeDeleted(Wire):
    deleted: bool
    volume_id: str


class FileEntry(Wire):
    name: str
    path: str
    is_dir: bool
    size: int
    mod_time: str
    mode: int
    version: str = Field(description="Changes with every change; `if_version` compares it")


class FileEntries(Wire):
    entries: list[FileEntry]


class VolumeWriteInfo(Wire):
    path: str
    size: int
    version: str


class Removed(Wire):
    removed: bool


class VolumeRenameRequest(Wire):
    old_path: str
    new_path: str


class VolumeRenamed(Wire):
    old_path: str
    new_path: str
    version: str


class VolumePath(Wire):
    path: str


class AcquireLockRequest(Wire):
    path: str
    ttl_seconds: float | None = Field(None, description="1 s to 24 h; default 60")


class RenewLockRequest(Wire):
    path: str
    token: str
    ttl_seconds: float | None = None


class ReleaseLockRequest(Wire):
    path: str
    token: str


class Lease(Wire):
    path: str
    token: str
    ttl_seconds: float
    expires_at: str | None


class Released(Wire):
    released: bool


class LockStatus(Wire):
    held: bool
    expires_in_ms: int
    expires_at: str | None = None


# Templates -----------------------------------------------------------------------------
class CopyItem(Wire):
    src: str = Field(description="Relative path inside the build context")
    dst: str = Field(description="Absolute path in the image")
    mode: int | None = None


class TemplateSpec(Wire):
    """`{"dockerfile": ...}` or the JSON form; `pip_packages` onwards are our extensions."""

    dockerfile: str | None = Field(None, description="A Dockerfile (then the rest is ignored)")
    base_image: str | None = Field(None, description="Default ubuntu:22.04")
    run_cmds: list[str] | None = None
    envs: dict[str, str] | None = None
    packages: list[str] | None = Field(None, description="apt packages")
    start_cmd: str | None = None
    pip_packages: list[str] | None = None
    user: str | None = None
    workdir: str | None = None
    ready_cmd: str | None = None
    ready_timeout: float | None = None
    runtime: Literal["runc", "runsc"] | None = None
    copies: list[CopyItem] | None = None
    context_id: str | None = Field(None, description="From PUT /templates/contexts")


class BuildRequest(Wire):
    template: TemplateSpec
    alias: str | None = None
    cpu_count: int | None = None
    memory_mb: int | None = None
    disk_mb: int | None = None


class Build(Wire):
    build_id: str
    status: Literal["building", "completed", "failed"]
    template_id: str
    logs: list[str] = Field(
        description="The whole log so far; once trimmed its first line is"
        " `... [earlier build output truncated]`"
    )


class ContextUploaded(Wire):
    context_id: str


class Template(Wire):
    template_id: str
    alias: str | None = None
    builtin: bool
    state: Literal["building", "ready", "failed"]
    size_bytes: int = 0
    build_seconds: float | None = None
    created_at: str | None = None
    user: str | None = None
    workdir: str | None = None
    start_cmd: str | None = None
    ready_cmd: str | None = None
    ready_timeout: float | None = None
    cpu_count: int | None = None
    memory_mb: int | None = None
    runtime: str | None = None
    error: str | None = None
    envs: dict[str, str] | None = Field(None, description="GET /templates/{id} only")
    layers: list[str] | None = Field(None, description="GET /templates/{id} only")


class DiskUsage(Wire):
    templates_path: str
    layers: int
    layers_bytes: int
    contexts: int
    filesystem: dict[str, int]


class TemplateList(Wire):
    templates: list[Template]
    disk: DiskUsage


class GcRequest(Wire):
    layers: list[str] | None = Field(None, description="Only these layer keys")
    min_age_s: float = 0
    dry_run: bool = False


class GcResult(Wire):
    removed_layers: int = Field(description="Layers removed from this host's cache")
    freed_bytes: int
    layers: list[str]
    dry_run: bool
    shared: bool = Field(False, description="Whether the shared blob store was collected too")
    removed_published: int = Field(0, description="Published layers removed from the blob store")
    freed_published_bytes: int = 0
    published: list[str] = Field(default_factory=list)
    removed_contexts: int = Field(0, description="Build contexts removed from the blob store")
    freed_context_bytes: int = 0
    contexts: list[str] = Field(default_factory=list)


# Vault ---------------------------------------------------------------------------------
class TeamInfo(Wire):
    team_id: str
    name: str = Field(description="Always `default`: an API key has one team")
    created_at: str | None = None


class TeamList(Wire):
    teams: list[TeamInfo]


class NameRequest(Wire):
    name: str


class Environment(Wire):
    env_id: str
    name: str
    team_id: str
    created_at: str | None = None


class EnvironmentList(Wire):
    environments: list[Environment]


class VaultScope(Wire):
    domain_regex: str = Field(description="RE2 regular expression over the request's host")
    injection_type: Literal["bearer", "header", "basic", "query"] | None = "bearer"
    header_name: str | None = None
    value_prefix: str | None = None
    basic_username: str | None = None
    extra_headers: dict[str, str] | None = None
    query_params: dict[str, str] | None = None


class CreateSecretRequest(Wire):
    environment: str
    value: str = Field(description="8 characters to 64 KiB; never returned")
    name: str | None = None
    provider: str | None = Field(None, description="A preset key; supplies the scopes")
    scopes: list[VaultScope] | None = None
    rotation_interval_days: int = 0


class RotateRequest(Wire):
    value: str


class ScopesRequest(Wire):
    scopes: list[VaultScope]


class Secret(Wire):
    """A secret's metadata; no answer carries the value or any part of it."""

    secret_id: str
    name: str
    team_id: str
    env_id: str
    environment: str
    provider: str | None = None
    scopes: list[VaultScope]
    version: int
    created_at: str | None = None
    updated_at: str | None = None
    rotated_at: str | None = None
    rotation_interval_days: int = 0
    rotation_due: bool = False


class SecretList(Wire):
    secrets: list[Secret]


class SecretDeleted(Wire):
    deleted: bool
    secret_id: str


class Preset(Wire):
    key: str
    name: str
    category: str
    key_hint: str
    docs_url: str
    scopes: list[VaultScope]


class PresetList(Wire):
    presets: list[Preset]


# Governance ----------------------------------------------------------------------------
class GovernanceControl(Wire):
    control: str
    gate: str
    rule: str
    playbook: str


class GovernanceAdvisory(Wire):
    control: str
    reason: str


class GovernancePack(Wire):
    name: str
    version: str
    framework: str
    description: str
    gates: list[str]
    enforces: list[GovernanceControl]
    advisory: list[GovernanceAdvisory]
    policy_ref: str
    seeded: bool
    guardrails: dict[str, Any] = Field(description="Ours: the SecurityPolicy sections it sets")
    packages: list[str] = Field(description="Ours: its Rego packages")


class GovernancePackList(Wire):
    packs: list[GovernancePack]


# Operations ----------------------------------------------------------------------------
class Health(Wire):
    ok: bool
    gateway: bool
    uptime_s: float


class WarmPool(Wire):
    """One warm pool: sandboxes of one template and runtime kept made and parked."""

    template: str = Field(description="The alias the pool follows (a built-in's name)")
    template_id: str = Field(description="The template the alias names now")
    runtime: str
    target: int = Field(description="Sandboxes the pool keeps ready")
    ready: int = Field(description="Sandboxes ready to be claimed now")
    filling: int = Field(description="Sandboxes being made")
    failures: int = Field(description="Creates that failed in a row (refill backs off)")


class WarmPools(Wire):
    pools: list[WarmPool]
    parked: int = Field(description="Pooled sandboxes on the node, all pools together")
    memory_bytes: int = Field(description="What the pooled sandboxes' cgroups use now")
    budget_bytes: int = Field(description="The most the pools may use; refill stops there")


# API keys --------------------------------------------------------------------------
class ApiKey(Wire):
    """One of the team's keys; the key itself is never shown again after its creation."""

    key_id: str
    name: str
    prefix: str = Field(description="The key's first characters, to recognise it")
    created_at: str | None = None
    revoked_at: str | None = None
    state: Literal["active", "revoked"]
    current: bool = Field(description="The key this request is signed in with")


class ApiKeyList(Wire):
    keys: list[ApiKey]


class CreateKeyRequest(Wire):
    name: str = Field("", description="At most 64 characters")


class CreatedKey(ApiKey):
    key: str = Field(description="The new API key, shown this once")


class KeyRevoked(Wire):
    key_id: str
    revoked: bool = Field(description="false: it was revoked already")
    revoked_at: str | None = None
