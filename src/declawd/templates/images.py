"""Base images: map a container image name onto a Debian suite plus packages (pure).

No container registry is reachable, so every template starts from Debian's own packages.
Invariant: a name is either mapped deterministically (same input, same suite, packages and
note) or refused with a message that lists every supported form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from declawd.errors import InvalidInput

DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SUITE = "bookworm"
# Suites the mirror serves that mmdebstrap can verify with the host's keyring.
DEBIAN_SUITES: dict[str, str] = {"bullseye": "11", "bookworm": "12", "trixie": "13"}
_DEBIAN_NUMBERS = {v: k for k, v in DEBIAN_SUITES.items()}
_UBUNTU_NAMES = {"focal": "20.04", "jammy": "22.04", "noble": "24.04"}
_PYTHON_PACKAGES = ("python3", "python3-pip", "python3-venv")
_NODE_PACKAGES = ("nodejs", "npm")
_VARIANT_SUFFIX = re.compile(
    r"-(slim|bookworm|bullseye|trixie|slim-bookworm|slim-bullseye|alpine)$"
)

SUPPORTED_FORMS = (
    "debian:<suite or version> (bookworm, bullseye, trixie, 11, 12, 13)",
    "ubuntu:<version> (mapped to debian:bookworm)",
    "python:3[.x][-slim] (debian:bookworm + python3, pip, venv)",
    "node:<major>[-slim] (debian:bookworm + nodejs, npm)",
)


@dataclass(frozen=True)
class BaseImage:
    """What a base image name means here: a suite, extra packages, and a note for the log."""

    image: str
    suite: str
    packages: tuple[str, ...]
    note: str


def _unsupported(image: str) -> InvalidInput:
    return InvalidInput(
        "base_image", f"unsupported image {image!r}; supported: " + "; ".join(SUPPORTED_FORMS)
    )


def map_base_image(image: str) -> BaseImage:
    """Map `image` (e.g. `ubuntu:22.04`) to a Debian base; InvalidInput if unsupported."""
    raw = image
    name = image.strip().lower()
    for prefix in ("docker.io/library/", "docker.io/", "library/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    if not name or "@" in name or "/" in name:
        raise _unsupported(raw)
    repo, _, tag = name.partition(":")
    tag = tag or "latest"
    if repo == "debian":
        suite = tag.removesuffix("-slim")
        suite = _DEBIAN_NUMBERS.get(suite.split(".")[0], suite)
        if suite in ("latest", "stable"):
            suite = DEFAULT_SUITE
        if suite not in DEBIAN_SUITES:
            raise _unsupported(raw)
        return BaseImage(
            raw, suite, (), f"base image {raw}: Debian {suite} (minbase) from {DEBIAN_MIRROR}"
        )
    if repo == "ubuntu":
        version = _UBUNTU_NAMES.get(tag, tag)
        if version != "latest" and not re.fullmatch(r"\d\d\.\d\d", version):
            raise _unsupported(raw)
        return BaseImage(
            raw,
            DEFAULT_SUITE,
            (),
            f"base image {raw}: no registry here, using the nearest Debian base: "
            f"Debian {DEFAULT_SUITE} (minbase)",
        )
    if repo == "python":
        version = _VARIANT_SUFFIX.sub("", tag)
        if version != "latest" and not re.fullmatch(r"3(\.\d+){0,2}", version):
            raise _unsupported(raw)
        return BaseImage(
            raw,
            DEFAULT_SUITE,
            _PYTHON_PACKAGES,
            f"base image {raw}: no registry here, using Debian {DEFAULT_SUITE} + "
            f"{', '.join(_PYTHON_PACKAGES)} (Python 3.11 from Debian)",
        )
    if repo == "node":
        version = _VARIANT_SUFFIX.sub("", tag)
        if version not in ("latest", "lts") and not re.fullmatch(r"\d+(\.\d+){0,2}", version):
            raise _unsupported(raw)
        return BaseImage(
            raw,
            DEFAULT_SUITE,
            _NODE_PACKAGES,
            f"base image {raw}: no registry here, using Debian {DEFAULT_SUITE} + "
            f"{', '.join(_NODE_PACKAGES)} (Node.js 18 from Debian)",
        )
    raise _unsupported(raw)
