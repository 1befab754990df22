"""API documentation: `/openapi.json` built from a table of routes, `/docs` (Swagger UI, bundled).

Handlers take no pydantic parameters (bodies are parsed by hand so errors stay
`{"message"}` with our status codes), so FastAPI cannot see their shapes. `ROUTES` says, per
(method, path), the request and response models of `api/schema.py`, the query parameters and
the errors; `install_docs` rewrites FastAPI's generated document with it and serves it as
OpenAPI 3.0 (what the bundled Swagger UI 4 renders). Every asset is served by this server:
nothing on the page comes from another origin. The docs are public, like /health.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from swagger_ui_bundle import swagger_ui_path

from declawd.api import schema as s
from declawd.errors import NotFound

OPENAPI_VERSION = "3.0.3"
ASSETS = Path(swagger_ui_path)
INIT_SCRIPT = "declawd-docs.js"
# The bundle's files this page needs (plus their source maps, fetched only by devtools).
ASSET_FILES = frozenset(
    {
        "swagger-ui.css",
        "swagger-ui.css.map",
        "swagger-ui-bundle.js",
        "swagger-ui-bundle.js.map",
        "favicon-16x16.png",
        "favicon-32x32.png",
    }
)
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'"
)


# The table's vocabulary -----------------------------------------------------------------
@dataclass(frozen=True)
class Raw:
    """A body that is not JSON (file bytes, an archive, Prometheus text)."""

    media_type: str
    description: str
    binary: bool = True


@dataclass(frozen=True)
class Events:
    """A server-sent event stream whose `data:` lines are JSON objects of `model`."""

    model: type[BaseModel]
    description: str


Payload = type[BaseModel] | Raw | Events


@dataclass(frozen=True)
class Param:
    name: str
    description: str
    where: Literal["query", "header"] = "query"
    type: Literal["string", "integer", "number", "boolean"] = "string"
    required: bool = False
    repeated: bool = False


@dataclass(frozen=True)
class Op:
    """One documented operation. `errors` adds to the defaults (401 unless public, 404 for
    a path with an id, 400 when there is a request body)."""

    summary: str
    tag: str
    responses: Mapping[int, Payload]
    request: Payload | None = None
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    description: str = ""
    extension: bool = False
    public: bool = False
    auth: tuple[str, ...] = ("ApiKey", "Bearer", "DashboardSession")


ANY_METHOD = "*"

ERROR_TEXT = {
    400: "Invalid input: the message names the field (`field: reason`)",
    401: "Missing, invalid or revoked API key",
    403: "Refused by the sandbox's policy (custom_policy), or a token that is not accepted",
    404: "Not found; another team's resource is a 404 too",
    408: "The command exceeded its timeout; its process group was killed",
    409: "Conflict with the resource's state (the message says which)",
    413: "Body or file larger than the limit, or over the team's quota",
    422: "Idempotency-Key already used with different parameters (code idempotency_key_reused)",
    501: "Asks for a feature this server does not implement (the message names it)",
    502: "The sandbox's agent (or the server in the sandbox) cannot be reached",
    503: "Temporarily unavailable",
}

PATH_USER = (
    Param("path", "Absolute path inside the sandbox", required=True),
    Param("username", "User the operation runs as (default `user`)"),
)
VOLUME_PATH = (Param("path", "Path inside the volume (`a/b` = `/a/b`)", required=True),)
PAGE = (
    Param("limit", "Page size", type="integer"),
    Param("next_token", "From the previous page"),
)
ASYNC_KILL = (
    Param(
        "async",
        "`true`: answer 202 `{queued}` at once and tear down in the background",
        type="boolean",
    ),
)
OCTET = Raw("application/octet-stream", "The file's bytes")
GZIP = Raw("application/gzip", "A tar archive (gzip, bzip2, xz or plain)")

T_SANDBOX = "sandboxes"
T_COMMANDS = "commands"
T_PTY = "pty and stdio"
T_FILES = "files"
T_NETWORK = "network and audit"
T_SECURITY = "security"
T_SNAPSHOTS = "snapshots"
T_VOLUMES = "volumes"
T_TEMPLATES = "templates"
T_VAULT = "vault"
T_GOVERNANCE = "governance"
T_PORTS = "ports"
T_KEYS = "api keys"
T_OPS = "operations"

SB = "/sandboxes/{sandbox_id}"
VOL = "/volumes/{volume_id}"
TEAM = "/teams/{team_ref}"

ROUTES: dict[tuple[str, str], Op] = {
    # Sandboxes (declaw-api.md §2) -------------------------------------------------------
    ("POST", "/sandboxes"): Op(
        "Create a sandbox",
        T_SANDBOX,
        {201: s.Sandbox},
        s.CreateSandboxRequest,
        (
            Param(
                "Idempotency-Key",
                "Retries with the same key return the first sandbox (409 while it is still"
                " being created, with Retry-After; 422 if the body differs)",
                where="header",
            ),
        ),
        errors=(409, 413, 422, 501),
        description="Validates the whole request before anything is allocated.",
    ),
    ("GET", "/sandboxes"): Op(
        "List sandboxes",
        T_SANDBOX,
        {200: s.SandboxList},
        params=(
            Param("state", "live, running, paused, creating or killed", repeated=True),
            Param("metadata", "The SDK's Python-literal dict, e.g. `{'env': 'prod'}`"),
            *PAGE,
        ),
        errors=(400,),
    ),
    ("POST", "/sandboxes/kill-many"): Op(
        "Kill several sandboxes",
        T_SANDBOX,
        {200: s.KillManyResult},
        s.KillManyRequest,
        ASYNC_KILL,
    ),
    ("GET", SB): Op(
        "Get (or connect to) a sandbox",
        T_SANDBOX,
        {200: s.Sandbox},
        params=(
            Param(
                "timeout",
                "connect(): the sandbox now ends this many seconds from now; resumes a paused"
                " sandbox",
                type="integer",
            ),
        ),
    ),
    ("DELETE", SB): Op(
        "Kill a sandbox",
        T_SANDBOX,
        {200: s.Killed, 202: s.Queued},
        params=ASYNC_KILL,
        errors=(409,),
    ),
    ("POST", SB + "/pause"): Op(
        "Pause a sandbox", T_SANDBOX, {200: s.Paused}, errors=(409,), extension=False
    ),
    ("POST", SB + "/resume"): Op(
        "Resume a paused sandbox", T_SANDBOX, {200: s.Resumed}, errors=(409,)
    ),
    ("POST", SB + "/restore"): Op(
        "Restore a killed sandbox from a snapshot, under the same id",
        T_SANDBOX,
        {200: s.Restored},
        params=(Param("snapshot_id", "Default: the latest (pause > periodic > manual)"),),
        errors=(409,),
    ),
    ("GET", SB + "/status"): Op("Is the sandbox running", T_SANDBOX, {200: s.SandboxStatus}),
    ("PATCH", SB + "/timeout"): Op(
        "Set the sandbox's timeout", T_SANDBOX, {200: s.TimeoutSet}, s.SetTimeoutRequest
    ),
    ("GET", SB + "/metrics"): Op(
        "CPU, memory and disk series",
        T_SANDBOX,
        {200: s.MetricSeries},
        params=(
            Param("start", "ISO-8601 (naive = UTC)"),
            Param("end", "ISO-8601 (naive = UTC)"),
        ),
        errors=(400, 409),
    ),
    # Commands (§3) -----------------------------------------------------------------------
    ("POST", SB + "/commands"): Op(
        "Run a command",
        T_COMMANDS,
        {200: s.RunCommandResult},
        s.RunCommandRequest,
        errors=(403, 408, 409, 502),
    ),
    ("GET", SB + "/commands"): Op(
        "List running commands", T_COMMANDS, {200: s.ProcessList}, errors=(409, 502)
    ),
    ("DELETE", SB + "/commands/{pid}"): Op(
        "Kill a command", T_COMMANDS, {200: s.Killed}, errors=(400, 409)
    ),
    ("POST", SB + "/commands/{pid}/stdin"): Op(
        "Send text to a command's stdin", T_COMMANDS, {200: s.Ok}, s.TextData, errors=(409,)
    ),
    ("GET", SB + "/commands/{pid}/wait"): Op(
        "Wait for a background command", T_COMMANDS, {200: s.CommandResult}, errors=(400, 409)
    ),
    ("POST", SB + "/commands/stream"): Op(
        "Run a command and stream its output",
        T_COMMANDS,
        {200: Events(s.StreamEvent, "stdout/stderr chunks, then exit")},
        s.StreamCommandRequest,
        errors=(409, 502),
        description="A command refused by the policy answers 403 with an error event and exit"
        " code 126 (the SDK reads the events, not the status).",
    ),
    # PTY and stdio (§5) ------------------------------------------------------------------
    ("POST", SB + "/pty"): Op(
        "Open a PTY (interactive shell)",
        T_PTY,
        {200: s.Pid},
        s.CreatePtyRequest,
        errors=(403, 409, 502),
    ),
    ("GET", SB + "/pty/{pid}/stream"): Op(
        "Stream a PTY's output",
        T_PTY,
        {200: Events(s.PtyEvent, "data events (base64), then exit")},
        errors=(400, 409),
    ),
    ("POST", SB + "/pty/{pid}/stdin"): Op(
        "Type into a PTY", T_PTY, {200: s.Ok}, s.TextData, errors=(409,)
    ),
    ("PATCH", SB + "/pty/{pid}"): Op(
        "Resize a PTY", T_PTY, {200: s.Ok}, s.ResizePtyRequest, errors=(409,)
    ),
    ("DELETE", SB + "/pty/{pid}"): Op("Kill a PTY", T_PTY, {200: s.Killed}, errors=(400, 409)),
    ("POST", SB + "/stdio"): Op(
        "Start a process with piped stdio",
        T_PTY,
        {200: s.StdioStarted},
        s.StartStdioRequest,
        errors=(403, 409, 502),
    ),
    ("POST", SB + "/stdio/{cmd_id}/stdin"): Op(
        "Write bytes to its stdin", T_PTY, {200: s.Ok}, s.Base64Data, errors=(409,)
    ),
    ("POST", SB + "/stdio/{cmd_id}/stdin/close"): Op(
        "Close its stdin", T_PTY, {200: s.Ok}, errors=(400, 409)
    ),
    ("GET", SB + "/stdio/{cmd_id}/stream"): Op(
        "Stream its stdout and stderr",
        T_PTY,
        {200: Events(s.StdioEvent, "stdout/stderr entries (base64), then exit")},
        params=(Param("last_entry_id", "Replay only later entries", type="integer"),),
        errors=(400, 409),
    ),
    ("DELETE", SB + "/stdio/{pid}"): Op(
        "Kill a stdio process", T_PTY, {200: s.Killed}, errors=(400, 409)
    ),
    # Files (§4) --------------------------------------------------------------------------
    ("GET", SB + "/files"): Op(
        "Read a file", T_FILES, {200: OCTET}, params=PATH_USER, errors=(400, 409)
    ),
    ("GET", SB + "/files/raw"): Op(
        "Download a file (download_url)", T_FILES, {200: OCTET}, params=PATH_USER, errors=(400, 409)
    ),
    ("POST", SB + "/files"): Op(
        "Write a text file", T_FILES, {200: s.WriteInfo}, s.WriteTextRequest, errors=(409,)
    ),
    ("PUT", SB + "/files/raw"): Op(
        "Upload a file (raw bytes, up to 500 MiB)",
        T_FILES,
        {200: s.WriteInfo},
        Raw("application/octet-stream", "The file's bytes"),
        PATH_USER,
        errors=(409, 413),
    ),
    ("POST", SB + "/files/batch"): Op(
        "Write several text files",
        T_FILES,
        {200: s.WriteInfoList},
        s.WriteBatchRequest,
        errors=(409,),
    ),
    ("GET", SB + "/files/list"): Op(
        "List a directory",
        T_FILES,
        {200: s.EntryList},
        params=(*PATH_USER, Param("depth", "1 to 100 (default 1)", type="integer")),
        errors=(400, 409),
    ),
    ("GET", SB + "/files/exists"): Op(
        "Does a path exist", T_FILES, {200: s.Exists}, params=PATH_USER, errors=(400, 409)
    ),
    ("GET", SB + "/files/info"): Op(
        "Stat a path", T_FILES, {200: s.EntryInfo}, params=PATH_USER, errors=(400, 409)
    ),
    ("DELETE", SB + "/files"): Op(
        "Remove a file or directory", T_FILES, {200: s.Ok}, params=PATH_USER, errors=(400, 409)
    ),
    ("PATCH", SB + "/files"): Op(
        "Rename or move", T_FILES, {200: s.EntryInfo}, s.RenameRequest, errors=(409,)
    ),
    ("POST", SB + "/files/mkdir"): Op(
        "Make a directory (and its parents)",
        T_FILES,
        {200: s.Created},
        s.PathRequest,
        errors=(409,),
    ),
    ("POST", SB + "/files/watch"): Op(
        "Watch a directory", T_FILES, {200: s.WatchStarted}, s.WatchRequest, errors=(409,)
    ),
    ("GET", SB + "/files/watch/{watch_id}/events"): Op(
        "Stream a watch's events",
        T_FILES,
        {200: Events(s.FilesystemEvent, "`event: event` per change")},
        errors=(409,),
        extension=True,
    ),
    ("DELETE", SB + "/files/watch/{watch_id}"): Op(
        "Stop a watch", T_FILES, {200: s.Ok}, errors=(409,), extension=True
    ),
    # Network policy and audit (§11.4) ----------------------------------------------------
    ("GET", SB + "/network"): Op(
        "The egress policy in force", T_NETWORK, {200: s.NetworkPolicy}, extension=True
    ),
    ("PUT", SB + "/network"): Op(
        "Replace the egress policy",
        T_NETWORK,
        {200: s.NetworkPolicy},
        s.NetworkOpts,
        errors=(409, 501),
        extension=True,
        description="Atomic; established connections the new policy no longer allows are cut.",
    ),
    ("GET", SB + "/audit"): Op(
        "Query the audit (DNS, connections, requests, commands, files)",
        T_NETWORK,
        {200: s.AuditPage},
        params=(
            Param("since", "ISO-8601 or unix time"),
            Param("until", "ISO-8601 or unix time"),
            Param("verdict", "allow or deny"),
            Param("kind", "dns, connection, http, command or file"),
            *PAGE,
        ),
        errors=(400,),
        extension=True,
    ),
    ("GET", SB + "/audit/stream"): Op(
        "Follow the audit live",
        T_NETWORK,
        {200: Events(s.AuditEvent, "`event: audit` per decision, as it happens")},
        params=(Param("from_start", "`true`: replay what is stored first", type="boolean"),),
        extension=True,
    ),
    # Security policy (§12.1) -------------------------------------------------------------
    ("GET", SB + "/security"): Op(
        "The security policy in force", T_SECURITY, {200: s.SecurityPolicy}, extension=True
    ),
    ("PUT", SB + "/security"): Op(
        "Replace sections of the security policy",
        T_SECURITY,
        {200: s.SecurityPolicy},
        s.SecurityPolicy,
        errors=(409, 501),
        extension=True,
        description="Replaces the sections the body carries; `network` changes the egress"
        " policy as PUT /network does.",
    ),
    # Snapshots (§2.1, §12.4) -------------------------------------------------------------
    ("POST", SB + "/snapshot"): Op(
        "Snapshot the sandbox's filesystem", T_SNAPSHOTS, {201: s.Snapshot}, errors=(400, 409)
    ),
    ("GET", SB + "/snapshots"): Op(
        "List a sandbox's snapshots", T_SNAPSHOTS, {200: s.SnapshotList}
    ),
    ("DELETE", SB + "/snapshots/{snapshot_id}"): Op(
        "Delete a snapshot", T_SNAPSHOTS, {200: s.Deleted}, errors=(409,)
    ),
    ("GET", "/snapshots"): Op(
        "Page through the team's snapshots",
        T_SNAPSHOTS,
        {200: s.SnapshotPage},
        params=(Param("sandbox_id", "Only this sandbox's"), *PAGE),
        errors=(400,),
    ),
    # Volumes (§9, §12.5) -----------------------------------------------------------------
    ("POST", "/volumes"): Op(
        "Create a volume (empty, or from an archive)",
        T_VOLUMES,
        {201: s.Volume},
        GZIP,
        (Param("name", "The volume's name", required=True),),
        errors=(400, 413),
    ),
    ("POST", "/volumes/empty"): Op(
        "Create an empty volume",
        T_VOLUMES,
        {201: s.Volume},
        params=(Param("name", "The volume's name", required=True),),
        errors=(400, 413),
    ),
    ("POST", "/volumes/ingest"): Op(
        "Create a volume from an archive",
        T_VOLUMES,
        {201: s.Volume},
        GZIP,
        (Param("name", "The volume's name", required=True),),
        errors=(413,),
    ),
    ("GET", "/volumes"): Op("List the team's volumes", T_VOLUMES, {200: s.VolumeList}),
    ("GET", VOL): Op("Get a volume", T_VOLUMES, {200: s.Volume}),
    ("DELETE", VOL): Op("Delete a volume", T_VOLUMES, {200: s.VolumeDeleted}, errors=(409,)),
    ("GET", VOL + "/download"): Op(
        "Download a volume as tar.gz", T_VOLUMES, {200: Raw("application/gzip", "tar.gz")}
    ),
    ("PUT", VOL + "/files/raw"): Op(
        "Write a file",
        T_VOLUMES,
        {200: s.VolumeWriteInfo},
        Raw("application/octet-stream", "The file's bytes"),
        (
            *VOLUME_PATH,
            Param("if_version", "Write only if the file is at this version (0: absent)"),
        ),
        errors=(400, 409, 413),
    ),
    ("GET", VOL + "/files/raw"): Op(
        "Read a file", T_VOLUMES, {200: OCTET}, params=VOLUME_PATH, errors=(400,)
    ),
    ("GET", VOL + "/files/list"): Op(
        "List a directory", T_VOLUMES, {200: s.FileEntries}, params=VOLUME_PATH, errors=(400,)
    ),
    ("GET", VOL + "/files/info"): Op(
        "Stat a path", T_VOLUMES, {200: s.FileEntry}, params=VOLUME_PATH, errors=(400,)
    ),
    ("GET", VOL + "/files/exists"): Op(
        "Does a path exist", T_VOLUMES, {200: s.Exists}, params=VOLUME_PATH, errors=(400,)
    ),
    ("DELETE", VOL + "/files"): Op(
        "Remove a path",
        T_VOLUMES,
        {200: s.Removed},
        params=(
            *VOLUME_PATH,
            Param("recursive", "Needed for a non-empty directory", type="boolean"),
        ),
        errors=(400,),
    ),
    ("PATCH", VOL + "/files"): Op(
        "Rename a path", T_VOLUMES, {200: s.VolumeRenamed}, s.VolumeRenameRequest, errors=(409,)
    ),
    ("POST", VOL + "/files/mkdir"): Op(
        "Make a directory", T_VOLUMES, {200: s.VolumePath}, s.VolumePath
    ),
    ("POST", VOL + "/locks"): Op(
        "Acquire a lease on a path", T_VOLUMES, {200: s.Lease}, s.AcquireLockRequest, errors=(409,)
    ),
    ("POST", VOL + "/locks/renew"): Op(
        "Renew a lease", T_VOLUMES, {200: s.Lease}, s.RenewLockRequest, errors=(409,)
    ),
    ("DELETE", VOL + "/locks"): Op(
        "Release a lease", T_VOLUMES, {200: s.Released}, s.ReleaseLockRequest, errors=(409,)
    ),
    ("GET", VOL + "/locks"): Op(
        "Is a path leased", T_VOLUMES, {200: s.LockStatus}, params=VOLUME_PATH, errors=(400,)
    ),
    ("POST", SB + "/volumes/snapshot"): Op(
        "New volume from a path in the sandbox",
        T_VOLUMES,
        {201: s.Volume},
        params=(
            Param("path", "Absolute path inside the sandbox", required=True),
            Param("name", "Default `snapshot`"),
        ),
        errors=(400, 409, 413),
    ),
    ("POST", SB + "/volumes/{volume_id}/commit"): Op(
        "New volume from what the sandbox has where it attached a volume",
        T_VOLUMES,
        {201: s.Volume},
        params=(Param("name", "Default `<source name>-commit`"),),
        errors=(400, 409, 413),
    ),
    # Templates (§11.1) -------------------------------------------------------------------
    ("POST", "/templates/build"): Op(
        "Build a template",
        T_TEMPLATES,
        {202: s.Build},
        s.BuildRequest,
        errors=(409,),
        description="Answers at once; poll GET /templates/builds/{build_id}.",
    ),
    ("GET", "/templates/builds/{build_id}"): Op(
        "A build's status and log", T_TEMPLATES, {200: s.Build}
    ),
    ("POST", "/templates/{template_id}/rebuild"): Op(
        "Rebuild a failed template", T_TEMPLATES, {202: s.Build}, errors=(409,)
    ),
    ("PUT", "/templates/contexts"): Op(
        "Upload a build context",
        T_TEMPLATES,
        {200: s.ContextUploaded},
        Raw("application/gzip", "A tar.gz of the files `copies` refer to"),
        errors=(400, 413),
        extension=True,
    ),
    ("GET", "/templates"): Op(
        "List templates (with disk use)", T_TEMPLATES, {200: s.TemplateList}, extension=True
    ),
    ("POST", "/templates/gc"): Op(
        "Remove unreferenced layers",
        T_TEMPLATES,
        {200: s.GcResult},
        s.GcRequest,
        extension=True,
    ),
    ("GET", "/templates/{template_id}"): Op(
        "Inspect a template", T_TEMPLATES, {200: s.Template}, extension=True
    ),
    ("DELETE", "/templates/{template_id}"): Op(
        "Delete a template (409 while used)",
        T_TEMPLATES,
        {200: s.Deleted},
        errors=(409,),
        extension=True,
    ),
    # Vault (§9, §12.2) -------------------------------------------------------------------
    ("GET", "/teams"): Op("The caller's team", T_VAULT, {200: s.TeamList}),
    ("POST", "/teams"): Op(
        "Create the team (`default`, idempotent)", T_VAULT, {200: s.TeamInfo}, s.NameRequest
    ),
    ("GET", TEAM): Op("Get the team", T_VAULT, {200: s.TeamInfo}),
    ("GET", TEAM + "/environments"): Op("List environments", T_VAULT, {200: s.EnvironmentList}),
    ("POST", TEAM + "/environments"): Op(
        "Create an environment",
        T_VAULT,
        {200: s.Environment, 201: s.Environment},
        s.NameRequest,
    ),
    ("GET", TEAM + "/vault/secrets"): Op("List secrets", T_VAULT, {200: s.SecretList}),
    ("POST", TEAM + "/vault/secrets"): Op(
        "Store a secret", T_VAULT, {201: s.Secret}, s.CreateSecretRequest, errors=(409, 413)
    ),
    ("GET", TEAM + "/vault/secrets/{secret}"): Op(
        "Get a secret's metadata", T_VAULT, {200: s.Secret}, errors=(409,)
    ),
    ("POST", TEAM + "/vault/secrets/{secret}/rotate"): Op(
        "Rotate a secret's value", T_VAULT, {200: s.Secret}, s.RotateRequest, errors=(409, 413)
    ),
    ("POST", TEAM + "/vault/secrets/{secret}/scopes"): Op(
        "Replace a secret's scopes", T_VAULT, {200: s.Secret}, s.ScopesRequest, errors=(409,)
    ),
    ("DELETE", TEAM + "/vault/secrets/{secret}"): Op(
        "Delete a secret", T_VAULT, {200: s.SecretDeleted}, errors=(409,)
    ),
    ("GET", "/vault/presets"): Op("Provider presets", T_VAULT, {200: s.PresetList}),
    # Governance (§12.3) ------------------------------------------------------------------
    ("GET", "/governance/packs"): Op(
        "List governance packs", T_GOVERNANCE, {200: s.GovernancePackList}
    ),
    ("GET", "/governance/packs/{name}"): Op(
        "Get a governance pack (name or name@vN)", T_GOVERNANCE, {200: s.GovernancePack}
    ),
    # Operations --------------------------------------------------------------------------
    ("GET", "/health"): Op("Liveness", T_OPS, {200: s.Health}, public=True, extension=True),
    ("GET", "/pools"): Op("The node's warm pools", T_OPS, {200: s.WarmPools}, extension=True),
    ("GET", "/metrics"): Op(
        "Prometheus metrics",
        T_OPS,
        {200: Raw("text/plain", "Prometheus text exposition format", binary=False)},
        extension=True,
    ),
    # API keys (the dashboard's own routes are hidden from the document) ----------
    ("GET", "/keys"): Op("The team's API keys", T_KEYS, {200: s.ApiKeyList}, extension=True),
    ("POST", "/keys"): Op(
        "Create an API key for the team",
        T_KEYS,
        {201: s.CreatedKey},
        s.CreateKeyRequest,
        extension=True,
    ),
    ("DELETE", "/keys/{key_id}"): Op(
        "Revoke one of the team's keys",
        T_KEYS,
        {200: s.KeyRevoked},
        errors=(409,),
        extension=True,
        description="Not the key this request is signed in with (409, code current_key).",
    ),
    # Ports (§12.6): any method, HTTP, SSE and WebSocket ----------------------------------
    (ANY_METHOD, SB + "/ports/{port}/{path}"): Op(
        "Reverse proxy to a server inside the sandbox",
        T_PORTS,
        {200: Raw("*/*", "Whatever the sandbox's server answers (streamed)")},
        Raw("*/*", "Forwarded as is (streamed)"),
        (Param("token", "The sandbox's traffic_access_token (instead of a header)"),),
        errors=(403, 502),
        extension=True,
        auth=("ApiKey", "Bearer", "DashboardSession", "TrafficToken", "TrafficTokenQuery"),
        description="`sbx.get_host(port)` is this URL without `/{path}`. Connects to"
        " 127.0.0.1:`port` inside the sandbox's network namespace. Our credentials (API key,"
        " session cookie, traffic token) are stripped before forwarding; X-Forwarded-Prefix,"
        " -Proto and -For are set. Answers carry `Content-Security-Policy: sandbox allow-scripts"
        " allow-forms allow-popups`. Nothing listening: 502 naming the port. WebSocket upgrades"
        " go through the same path.",
    ),
    (ANY_METHOD, SB + "/ports/{port}"): Op(
        "Reverse proxy to a server inside the sandbox (its root)",
        T_PORTS,
        {200: Raw("*/*", "Whatever the sandbox's server answers (streamed)")},
        Raw("*/*", "Forwarded as is (streamed)"),
        (Param("token", "The sandbox's traffic_access_token (instead of a header)"),),
        errors=(403, 502),
        extension=True,
        auth=("ApiKey", "Bearer", "DashboardSession", "TrafficToken", "TrafficTokenQuery"),
    ),
}


# Building the document -------------------------------------------------------------------
_PARAM = re.compile(r"\{[^}]*\}")
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def route_key(method: str, path: str) -> tuple[str, str]:
    """(METHOD, path with every `{param}` as `{}`): path parameter names do not matter."""
    return method.upper(), _PARAM.sub("{}", path)


_INDEX: dict[tuple[str, str], Op] = {route_key(m, p): op for (m, p), op in ROUTES.items()}


def op_for(method: str, path: str) -> Op | None:
    key = route_key(method, path)
    return _INDEX.get(key) or _INDEX.get((ANY_METHOD, key[1]))


def _models(ops: Iterable[Op]) -> list[type[BaseModel]]:
    seen: dict[type[BaseModel], None] = {s.ErrorBody: None}
    for op in ops:
        for payload in (op.request, *op.responses.values()):
            if isinstance(payload, Events):
                seen[payload.model] = None
            elif isinstance(payload, type):
                seen[payload] = None
    return list(seen)


def _content(payload: Payload, refs: Mapping[type[BaseModel], dict[str, Any]]) -> dict[str, Any]:
    if isinstance(payload, Raw):
        body: dict[str, Any] = {"type": "string"}
        if payload.binary:
            body["format"] = "binary"
        return {payload.media_type: {"schema": body}}
    if isinstance(payload, Events):
        return {
            "text/event-stream": {
                "schema": {
                    "type": "string",
                    "description": "Server-sent events; each `data:` line is one JSON object"
                    f" of {payload.model.__name__}",
                },
                "x-event-data": refs[payload.model],
            }
        }
    return {"application/json": {"schema": refs[payload]}}


def _describe(payload: Payload) -> str:
    if isinstance(payload, Raw | Events):
        return payload.description
    return (payload.__doc__ or payload.__name__).strip().splitlines()[0]


def _errors(op: Op, path: str) -> list[int]:
    codes = set(op.errors)
    if not op.public:
        codes.add(401)
    if "{" in path:
        codes.add(404)
    if op.request is not None and not isinstance(op.request, Raw):
        codes.add(400)
    return sorted(codes)


def _operation(
    generated: Mapping[str, Any],
    op: Op,
    path: str,
    refs: Mapping[type[BaseModel], dict[str, Any]],
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "tags": [op.tag],
        "summary": op.summary,
        "operationId": generated.get("operationId"),
    }
    note = "**declawd extension** (not in the Declaw SDK)." if op.extension else ""
    description = " ".join(x for x in (op.description, note) if x)
    if description:
        out["description"] = description
    params = [p for p in generated.get("parameters", []) if p.get("in") == "path"]
    for p in op.params:
        schema: dict[str, Any] = {"type": p.type}
        if p.repeated:
            schema = {"type": "array", "items": schema}
        params.append(
            {
                "name": p.name,
                "in": p.where,
                "required": p.required,
                "description": p.description,
                "schema": schema,
            }
        )
    if params:
        out["parameters"] = params
    if op.request is not None:
        out["requestBody"] = {
            "required": not isinstance(op.request, Raw),
            "content": _content(op.request, refs),
        }
    responses: dict[str, Any] = {}
    for status, payload in sorted(op.responses.items()):
        responses[str(status)] = {
            "description": _describe(payload),
            "content": _content(payload, refs),
        }
    error = {"application/json": {"schema": refs[s.ErrorBody]}}
    for status in _errors(op, path):
        responses[str(status)] = {"description": ERROR_TEXT[status], "content": error}
    responses["default"] = {"description": "Any other error, same shape", "content": error}
    out["responses"] = responses
    out["security"] = [] if op.public else [{name: []} for name in op.auth]
    return out


SECURITY_SCHEMES = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "Bearer": {"type": "http", "scheme": "bearer", "description": "The API key as a token"},
    "DashboardSession": {
        "type": "apiKey",
        "in": "cookie",
        "name": "declawd_session",
        "description": "The dashboard's session; state-changing calls also need X-CSRF-Token",
    },
    "TrafficToken": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Declaw-Traffic-Token",
        "description": "The sandbox's traffic_access_token; the ports route only",
    },
    "TrafficTokenQuery": {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "The same token as a query parameter; the ports route only",
    },
}

DESCRIPTION = """\
The Declaw API as declawd serves it: the official `declaw` Python SDK talks to it unchanged
(`DECLAW_DOMAIN=localhost:8080`, `DECLAW_API_KEY=...`). Operations marked **declawd
extension** are ours.

Every route but /health and these docs needs an API key: `X-API-Key` or
`Authorization: Bearer`. A key belongs to one team; another team's resources answer 404.

Errors are always `{"message": ..., "code"?: ...}`. A bad field is a 400 whose message
names it (never a 422 `{"detail"}`); 422 means only a reused Idempotency-Key.
"""


def build_openapi(app: FastAPI) -> dict[str, Any]:
    generated = get_openapi(
        title=app.title, version=app.version, routes=app.routes, description=DESCRIPTION
    )
    ops = [op for op in ROUTES.values()]
    mapping, defs = models_json_schema(
        [(m, "validation") for m in _models(ops)], ref_template="#/components/schemas/{model}"
    )
    refs: dict[type[BaseModel], dict[str, Any]] = {
        model: ref
        for (model, _), ref in mapping.items()
        if isinstance(model, type) and issubclass(model, BaseModel)
    }
    paths: dict[str, Any] = {}
    for path, item in generated.get("paths", {}).items():
        documented: dict[str, Any] = {}
        for method, operation in item.items():
            if method not in METHODS:
                continue
            op = op_for(method, path)
            documented[method] = (
                _operation(operation, op, path, refs) if op else _undocumented(operation)
            )
        paths[path] = documented
    for (method, path), op in ROUTES.items():
        if method == ANY_METHOD and route_key("GET", path)[1] not in {
            route_key("GET", p)[1] for p in paths
        }:
            paths[path] = {
                m: _operation(_path_params(path, m), op, path, refs) for m in ANY_METHODS
            }
    tags = list(dict.fromkeys(op.tag for op in ops))  # in table order: sandboxes first
    doc = {
        "openapi": "3.1.0",
        "info": generated["info"],
        "tags": [{"name": t} for t in tags],
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": copy.deepcopy(SECURITY_SCHEMES),
        },
    }
    return to_openapi_30(doc)


ANY_METHODS = ("get", "post", "put", "patch", "delete")
INTEGER_PARAMS = frozenset({"port", "pid"})


def _path_params(path: str, method: str) -> dict[str, Any]:
    """What FastAPI would generate for a route it does not see (a raw ASGI endpoint)."""
    names = re.findall(r"\{([^}:]+)[^}]*\}", path)
    slug = re.sub(r"[^a-z0-9]+", "_", path.lower()).strip("_")
    return {
        "operationId": f"proxy_{slug}_{method}",
        "parameters": [
            {
                "name": n,
                "in": "path",
                "required": True,
                "schema": {"type": "integer" if n in INTEGER_PARAMS else "string"},
            }
            for n in names
        ],
    }


def _undocumented(operation: Mapping[str, Any]) -> dict[str, Any]:
    """A route missing from ROUTES: FastAPI's guess without its 422 (never on our wire)."""
    out = {k: v for k, v in operation.items() if k != "responses"}
    out["responses"] = {"200": {"description": "Not documented yet"}}
    return out


# OpenAPI 3.1 (pydantic's JSON Schema) → 3.0 (what Swagger UI 4 renders) ------------------
def to_openapi_30(doc: dict[str, Any]) -> dict[str, Any]:
    out = _convert(doc)
    out["openapi"] = OPENAPI_VERSION
    return out


def _convert(node: Any) -> Any:
    if isinstance(node, list):
        return [_convert(x) for x in node]
    if not isinstance(node, dict):
        return node
    node = {k: _convert(v) for k, v in node.items()}
    for key in ("anyOf", "oneOf"):
        options = node.get(key)
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            del node[key]
            if len(rest) == 1 and "$ref" in rest[0]:
                node["allOf"] = rest
                node["nullable"] = True
            elif len(rest) == 1:
                node.update({k: v for k, v in rest[0].items() if k not in node})
                node["nullable"] = True
            else:
                # 3.0's nullable only counts next to a type: let a typed option take null.
                typed = next((i for i, o in enumerate(rest) if "type" in o), None)
                if typed is None:
                    rest.append({"type": "object", "nullable": True, "maxProperties": 0})
                else:
                    rest[typed] = {**rest[typed], "nullable": True}
                node[key] = rest
    if isinstance(node.get("type"), list):
        types = [t for t in node["type"] if t != "null"]
        if len(types) < len(node["type"]):
            node["nullable"] = True
        node["type"] = types[0] if len(types) == 1 else types
    if "default" in node and node["default"] is None and node.get("nullable"):
        del node["default"]  # optional: absent and null mean the same
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "examples" in node and isinstance(node["examples"], list):
        examples = node.pop("examples")
        if examples:
            node["example"] = examples[0]
    if "$ref" in node and len(node) > 1:
        # 3.0 ignores siblings of $ref: keep them by wrapping the reference.
        node = {**{k: v for k, v in node.items() if k != "$ref"}, "allOf": [{"$ref": node["$ref"]}]}
    return node


# Serving ---------------------------------------------------------------------------------
PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>declawd API</title>
<link rel="stylesheet" href="{root}/docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="{root}/docs/assets/favicon-32x32.png">
</head>
<body data-openapi="{root}{openapi}">
<div id="swagger-ui"></div>
<script src="{root}/docs/assets/swagger-ui-bundle.js"></script>
<script src="{root}/docs/assets/{init}"></script>
</body>
</html>
"""

INIT_JS = """\
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: document.body.dataset.openapi,
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
"""


def docs_router(openapi_url: str) -> APIRouter:
    router = APIRouter()

    @router.get("/docs", include_in_schema=False)
    async def docs_page(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        html = PAGE_HTML.format(root=root, openapi=openapi_url, init=INIT_SCRIPT)
        return HTMLResponse(html, headers={"Content-Security-Policy": DOCS_CSP})

    @router.get("/docs/assets/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        if name == INIT_SCRIPT:
            return Response(INIT_JS, media_type="text/javascript")
        if name not in ASSET_FILES:
            raise NotFound(f"docs asset '{name}' not found")
        return FileResponse(ASSETS / name, headers={"Cache-Control": "public, max-age=3600"})

    return router


def install_docs(app: FastAPI) -> None:
    """Serve /docs and make `app.openapi()` (served at /openapi.json) the documented schema.

    Call after every router is included. FastAPI's own /docs and /redoc must be off
    (`docs_url=None, redoc_url=None`), its /openapi.json on."""
    if app.docs_url is not None or app.redoc_url is not None:
        raise RuntimeError("create the app with docs_url=None, redoc_url=None: /docs is ours")
    if app.openapi_url is None:
        raise RuntimeError("install_docs needs FastAPI's openapi_url (/openapi.json)")
    app.include_router(docs_router(app.openapi_url))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


__all__ = ["ROUTES", "Op", "build_openapi", "install_docs", "op_for", "route_key"]
