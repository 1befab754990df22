"""Template specs: validate the build request body and normalise it into a `TemplateSpec`.

Two wire forms arrive at `POST /templates/build` (declaw-api.md §11.1): the SDK's JSON spec
(plus our extended keys) and `{"dockerfile": ...}`. Both become one `TemplateSpec` whose
`ops` keep build order. Invariant: known keys with a wrong type are an InvalidInput naming the
field; unknown keys are ignored, as the reference server does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from declawd.errors import InvalidInput

DEFAULT_USER = "user"
DEFAULT_WORKDIR = "/home/user"
DEFAULT_BASE_IMAGE = "ubuntu:22.04"
MAX_READY_TIMEOUT = 3600.0
_ALIAS = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_PACKAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+:=~_<>!,\[\]-]*$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$|^\d+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONTEXT_ID = re.compile(r"^ctx-[0-9a-f]{64}$")


@dataclass(frozen=True)
class RunOp:
    """One shell line run at build time as `user` in `workdir` with `env` (order matters)."""

    cmd: str
    env: tuple[tuple[str, str], ...] = ()
    workdir: str = "/"
    user: str = "root"


@dataclass(frozen=True)
class CopyOp:
    """Copy `src` (relative, inside the build context) to the absolute `dst`."""

    src: str
    dst: str
    mode: int | None = None


Op = RunOp | CopyOp


@dataclass
class TemplateSpec:
    base_image: str = DEFAULT_BASE_IMAGE
    packages: list[str] = field(default_factory=list)
    pip_packages: list[str] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    envs: dict[str, str] = field(default_factory=dict)
    user: str = DEFAULT_USER
    workdir: str = DEFAULT_WORKDIR
    start_cmd: str | None = None
    ready_cmd: str | None = None
    ready_timeout: float | None = None
    runtime: str | None = None
    context_id: str | None = None

    @property
    def copies(self) -> list[CopyOp]:
        return [op for op in self.ops if isinstance(op, CopyOp)]


@dataclass
class BuildRequest:
    spec: TemplateSpec
    raw_spec: dict[str, Any]
    alias: str | None
    cpu_count: int | None = None
    memory_mb: int | None = None
    disk_mb: int | None = None


# --- field helpers -------------------------------------------------------------------


def _str(d: dict[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    value = d.get(key)
    if value is None:
        if required:
            raise InvalidInput(f"{where}{key}", "is required")
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{where}{key}", "must be a string")
    return value


def _str_list(d: dict[str, Any], key: str, where: str) -> list[str]:
    value = d.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidInput(f"{where}{key}", "must be a list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidInput(f"{where}{key}[{i}]", "must be a string")
    return list(value)


def _positive_int(d: dict[str, Any], key: str, where: str, limit: int) -> int | None:
    value = d.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{where}{key}", "must be an integer")
    if not 0 < value <= limit:
        raise InvalidInput(f"{where}{key}", f"must be between 1 and {limit}")
    return value


def validate_packages(packages: list[str], field_name: str) -> list[str]:
    for i, p in enumerate(packages):
        if not _PACKAGE.match(p):
            raise InvalidInput(f"{field_name}[{i}]", f"invalid package name {p!r}")
    return packages


def validate_user(user: str, field_name: str) -> str:
    if not _USER.match(user):
        raise InvalidInput(field_name, f"invalid user name {user!r}")
    return user


def validate_abs_path(path: str, field_name: str) -> str:
    if not path.startswith("/") or "\x00" in path or "\n" in path:
        raise InvalidInput(field_name, "must be an absolute path")
    return path


def validate_rel_path(path: str, field_name: str) -> str:
    parts = path.replace("\\", "/").split("/")
    if not path or path.startswith("/") or ".." in parts or "\x00" in path:
        raise InvalidInput(field_name, "must be a relative path inside the build context")
    return path


def validate_envs(envs: object, field_name: str) -> dict[str, str]:
    if envs is None:
        return {}
    if not isinstance(envs, dict):
        raise InvalidInput(field_name, "must be an object of strings")
    for k, v in envs.items():
        if not isinstance(k, str) or not _ENV_NAME.match(k):
            raise InvalidInput(field_name, f"invalid variable name {k!r}")
        if not isinstance(v, str):
            raise InvalidInput(f"{field_name}.{k}", "must be a string")
    return dict(envs)


def validate_alias(alias: object) -> str:
    if not isinstance(alias, str):
        raise InvalidInput("alias", "must be a string")
    if not _ALIAS.match(alias) or alias.startswith(("tpl-", "bld-", "ctx-")):
        raise InvalidInput(
            "alias",
            "must be 1-63 characters of a-z, 0-9, '.', '_', '-', start with a letter "
            "or digit, and not start with tpl-/bld-/ctx-",
        )
    return alias


def validate_runtime(runtime: str | None, field_name: str) -> str | None:
    if runtime is not None and runtime not in ("runc", "runsc"):
        raise InvalidInput(field_name, "must be 'runc' or 'runsc'")
    return runtime


# --- parsing ------------------------------------------------------------------------


def parse_spec(raw: object, where: str = "template.") -> TemplateSpec:
    """Validate one SPEC object (JSON form or `{"dockerfile": ...}`) into a TemplateSpec."""
    if not isinstance(raw, dict):
        raise InvalidInput(where.rstrip("."), "must be an object")
    dockerfile = _str(raw, "dockerfile", where)
    if dockerfile is not None:
        from declawd.templates.dockerfile import parse_dockerfile

        spec = parse_dockerfile(dockerfile, field_name=f"{where}dockerfile")
        spec.context_id = _context_id(raw, where)
        if spec.copies and spec.context_id is None:
            raise InvalidInput(f"{where}dockerfile", "COPY needs a build context (context_id)")
        return spec
    spec = TemplateSpec()
    base = _str(raw, "base_image", where)
    if base is not None:
        spec.base_image = base
    # SDK 1.7 sends `packages`; 1.5 sent `apt_packages`: accept both, in that order.
    spec.packages = validate_packages(
        _str_list(raw, "packages", where) + _str_list(raw, "apt_packages", where),
        f"{where}packages",
    )
    spec.pip_packages = validate_packages(
        _str_list(raw, "pip_packages", where), f"{where}pip_packages"
    )
    spec.envs = validate_envs(raw.get("envs"), f"{where}envs")
    env = tuple(sorted(spec.envs.items()))
    copies = raw.get("copies")
    if copies is not None:
        if not isinstance(copies, list):
            raise InvalidInput(f"{where}copies", "must be a list of objects")
        for i, item in enumerate(copies):
            spec.ops.append(_parse_copy(item, f"{where}copies[{i}]"))
    for i, cmd in enumerate(_str_list(raw, "run_cmds", where)):
        if not cmd.strip():
            raise InvalidInput(f"{where}run_cmds[{i}]", "must not be empty")
        spec.ops.append(RunOp(cmd=cmd, env=env))
    user = _str(raw, "user", where)
    if user is not None:
        spec.user = validate_user(user, f"{where}user")
    workdir = _str(raw, "workdir", where)
    if workdir is not None:
        spec.workdir = validate_abs_path(workdir, f"{where}workdir")
    spec.start_cmd = _str(raw, "start_cmd", where) or None
    spec.ready_cmd = _str(raw, "ready_cmd", where) or None
    rt = raw.get("ready_timeout")
    if rt is not None:
        if isinstance(rt, bool) or not isinstance(rt, int | float):
            raise InvalidInput(f"{where}ready_timeout", "must be a number of seconds")
        if not 0 < rt <= MAX_READY_TIMEOUT:
            raise InvalidInput(
                f"{where}ready_timeout", f"must be between 0 and {MAX_READY_TIMEOUT:g}"
            )
        spec.ready_timeout = float(rt)
    spec.runtime = validate_runtime(_str(raw, "runtime", where), f"{where}runtime")
    spec.context_id = _context_id(raw, where)
    if spec.copies and spec.context_id is None:
        raise InvalidInput(
            f"{where}copies", "need a build context (upload one, then set context_id)"
        )
    return spec


def _context_id(raw: dict[str, Any], where: str) -> str | None:
    cid = _str(raw, "context_id", where)
    if cid is not None and not _CONTEXT_ID.match(cid):
        raise InvalidInput(f"{where}context_id", "not a context id")
    return cid


def _parse_copy(item: object, where: str) -> CopyOp:
    if not isinstance(item, dict):
        raise InvalidInput(where, "must be an object with src and dst")
    src = validate_rel_path(_str(item, "src", where + ".", required=True) or "", f"{where}.src")
    dst = validate_abs_path(_str(item, "dst", where + ".", required=True) or "", f"{where}.dst")
    mode = item.get("mode")
    if mode is not None and (
        isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777
    ):
        raise InvalidInput(f"{where}.mode", "must be an integer file mode (0 to 0o7777)")
    return CopyOp(src=src, dst=dst, mode=mode)


def parse_build_body(body: object) -> BuildRequest:
    """Validate the whole `POST /templates/build` body."""
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object")
    if "template" not in body:
        raise InvalidInput("template", "is required")
    spec = parse_spec(body["template"])
    alias = body.get("alias")
    return BuildRequest(
        spec=spec,
        raw_spec=dict(body["template"]),
        alias=None if alias is None else validate_alias(alias),
        cpu_count=_positive_int(body, "cpu_count", "", 64),
        memory_mb=_positive_int(body, "memory_mb", "", 262144),
        disk_mb=_positive_int(body, "disk_mb", "", 1048576),
    )
