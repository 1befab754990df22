"""Paths inside a volume and mount paths inside a sandbox, checked before any I/O (pure).

A volume path is canonical (`/` plus components, no `.`, `..`, empty part or NUL), so it never
names anything above the root. A mount path may not cover /proc, /sys or /dev, a system
directory, or a path the platform mounts (envd, its socket, trust bundles), nor sit above one:
that would hide or replace what the platform put there.
"""

from __future__ import annotations

from declawd.errors import InvalidInput

MAX_PATH = 4096
MAX_NAME = 255

# Never at or below these (and so never above them either).
KERNEL_PATHS = ("/proc", "/sys", "/dev")
# Mounted by the platform into every sandbox (node/spec.py, lab/upstream.py).
PLATFORM_PATHS = (
    "/opt/declawd",
    "/run/declawd",
    "/etc/declawd",
    "/etc/ld.so.preload",
    "/etc/ssl/certs/ca-certificates.crt",
)
# Exactly these are refused (below them is fine: /var/data, /usr/local/share/x).
SYSTEM_DIRS = frozenset(
    {"/", "/bin", "/boot", "/etc", "/lib", "/lib32", "/lib64", "/run", "/sbin", "/usr", "/var"}
)


def components(raw: str, label: str = "path") -> list[str]:
    """The components of a path relative to a root, refusing anything that climbs out."""
    if not isinstance(raw, str):
        raise InvalidInput(label, "must be a string")
    if "\x00" in raw:
        raise InvalidInput(label, "must not contain NUL")
    if len(raw.encode()) > MAX_PATH:
        raise InvalidInput(label, f"longer than {MAX_PATH} bytes")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidInput(label, f"must not contain '..': {raw!r}")
    for p in parts:
        if len(p.encode()) > MAX_NAME:
            raise InvalidInput(label, f"a component is longer than {MAX_NAME} bytes")
    return parts


def volume_path(raw: str | None, label: str = "path") -> str:
    """Canonical form of a path inside a volume: `/a/b`, `/` for the root.

    Relative and absolute spellings name the same file (`a/b` is `/a/b`).
    """
    if raw is None or raw == "":
        raise InvalidInput(label, "is required")
    return "/" + "/".join(components(raw, label))


def parent_of(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or "/"


def name_of(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def is_within(path: str, top: str) -> bool:
    """`path` is `top` or below it (both canonical)."""
    return path == top or top == "/" or path.startswith(top + "/")


def mount_path(raw: object, label: str) -> str:
    """A canonical absolute mount path inside the sandbox, or InvalidInput naming `label`."""
    if not isinstance(raw, str) or not raw:
        raise InvalidInput(label, "is required")
    if not raw.startswith("/"):
        raise InvalidInput(label, f"must be an absolute path, got {raw!r}")
    path = "/" + "/".join(components(raw, label))
    if path in SYSTEM_DIRS:
        raise InvalidInput(label, f"{path} is a system directory")
    for top in KERNEL_PATHS:
        if is_within(path, top):
            raise InvalidInput(label, f"{path} is under {top}, the sandbox's kernel interface")
    for top in PLATFORM_PATHS:
        if is_within(path, top) or is_within(top, path):
            raise InvalidInput(label, f"{path} would cover {top}, which the platform mounts")
    return path
