"""Build plans: a TemplateSpec becomes an ordered list of layer steps with cache keys (pure).

Layer 0 is a Debian bootstrap; every later step runs a shell script in a build container.
Invariant: a layer's key is sha256(parent key + canonical step content), so a layer is
reused exactly when it and everything below it would be built the same way; changing the
last step rebuilds only from there.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from declawd.templates.images import DEBIAN_MIRROR, BaseImage, map_base_image
from declawd.templates.spec import DEFAULT_USER, CopyOp, RunOp, TemplateSpec

# Bump when the scripts below change meaning: old layers then stop matching.
LAYER_FORMAT = 1
BUILD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONTEXT_MOUNT = "/dev/declawd-context"  # on the container's /dev tmpfs: never lands in a layer
# The host's CA bundle, for registries reached through a TLS-intercepting proxy; it is
# mounted for network steps only and never written into a layer.
HOST_CA_MOUNT = "/dev/declawd-ca.crt"
HOST_CA_ENV = tuple(
    f"{name}={HOST_CA_MOUNT}"
    for name in (
        "PIP_CERT",
        "REQUESTS_CA_BUNDLE",
        "SSL_CERT_FILE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "NODE_EXTRA_CA_CERTS",
    )
)


@dataclass(frozen=True)
class Step:
    """One layer: `kind` + canonical `content` (what the key hashes) and a log label."""

    kind: str  # bootstrap | apt | pip | run | copy | user | finalize
    content: dict[str, Any]
    label: str
    network: bool = False

    def canonical(self) -> str:
        return json.dumps(
            {"format": LAYER_FORMAT, "kind": self.kind, **self.content},
            sort_keys=True,
            separators=(",", ":"),
        )


def layer_key(parent: str, step: Step) -> str:
    return hashlib.sha256(f"{parent}\n{step.canonical()}".encode()).hexdigest()


def chain_keys(steps: list[Step]) -> list[str]:
    keys: list[str] = []
    parent = ""
    for step in steps:
        parent = layer_key(parent, step)
        keys.append(parent)
    return keys


@dataclass
class BuildPlan:
    base: BaseImage
    steps: list[Step] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return chain_keys(self.steps)


def bootstrap_step(suite: str, packages: list[str] | tuple[str, ...]) -> Step:
    pkgs = sorted(set(packages))
    label = f"bootstrap Debian {suite} (minbase)" + (f" + {' '.join(pkgs)}" if pkgs else "")
    return Step(
        "bootstrap", {"suite": suite, "mirror": DEBIAN_MIRROR, "packages": pkgs}, label, True
    )


def apt_step(packages: list[str]) -> Step:
    pkgs = sorted(set(packages))
    return Step("apt", {"packages": pkgs}, f"apt-get install {' '.join(pkgs)}", True)


def pip_step(packages: list[str]) -> Step:
    # order kept: pip resolves in the given order and the user may rely on it
    return Step("pip", {"packages": list(packages)}, f"pip install {' '.join(packages)}", True)


def run_step(op: RunOp) -> Step:
    content = {
        "cmd": op.cmd,
        "env": [list(kv) for kv in op.env],
        "workdir": op.workdir,
        "user": op.user,
    }
    return Step("run", content, f"RUN {op.cmd}", True)


def copy_step(op: CopyOp, context_id: str) -> Step:
    content = {"context": context_id, "src": op.src, "dst": op.dst, "mode": op.mode}
    return Step("copy", content, f"COPY {op.src} {op.dst}")


def user_step() -> Step:
    return Step("user", {"name": DEFAULT_USER}, f"create user {DEFAULT_USER!r} (uid 1000)")


def finalize_step() -> Step:
    return Step(
        "finalize",
        {"name": DEFAULT_USER},
        f"finalize (user {DEFAULT_USER!r}, /etc/hosts, /etc/resolv.conf)",
    )


def plan_spec(spec: TemplateSpec, parent: list[Step] | None = None) -> BuildPlan:
    """The steps for `spec`; `parent` (a catalog parent's steps, without finalize) goes first.

    With a parent, the spec's apt packages become an apt step above the parent's layers so
    the parent's layers are shared; otherwise they go into the bootstrap (one apt run).
    """
    base = map_base_image(spec.base_image)
    steps: list[Step] = []
    if parent:
        steps.extend(s for s in parent if s.kind != "finalize")
        extra = sorted(set(base.packages) | set(spec.packages))
        if extra:
            steps.append(apt_step(extra))
    else:
        steps.append(bootstrap_step(base.suite, [*base.packages, *spec.packages]))
    if spec.pip_packages:
        steps.append(pip_step(spec.pip_packages))
    have_user = False
    for op in spec.ops:
        if isinstance(op, RunOp):
            if op.user == DEFAULT_USER and not have_user:
                steps.append(user_step())  # USER user before RUN: the user must exist
                have_user = True
            steps.append(run_step(op))
        else:
            assert spec.context_id is not None  # parse_spec guarantees it
            steps.append(copy_step(op, spec.context_id))
    steps.append(finalize_step())
    return BuildPlan(base=base, steps=steps)


# --- the scripts each step runs inside its build container ----------------------------

_ENSURE_USER = f"""
if ! getent passwd {DEFAULT_USER} >/dev/null; then
  if getent passwd 1000 >/dev/null; then useradd -m -U -s /bin/bash {DEFAULT_USER}
  else useradd -m -u 1000 -U -s /bin/bash {DEFAULT_USER}; fi
fi
home=$(getent passwd {DEFAULT_USER} | cut -d: -f6)
mkdir -p "$home" && chown {DEFAULT_USER}: "$home"
"""

_FINALIZE = """
rm -f /etc/hosts /etc/resolv.conf
printf '127.0.0.1\\tlocalhost\\n::1\\tlocalhost ip6-localhost ip6-loopback\\n' >/etc/hosts
printf '# written per sandbox by declawd\\n' >/etc/resolv.conf
chmod 644 /etc/hosts /etc/resolv.conf
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /root/.cache /tmp/* 2>/dev/null || true
"""

_COPY = f"""
s="{CONTEXT_MOUNT}/$DECLAWD_SRC"; d="$DECLAWD_DST"
if [ -d "$s" ]; then mkdir -p "$d"; cp -a --no-preserve=ownership "$s/." "$d/"; t="$d"
else
  case "$d" in */) mkdir -p "$d"; t="$d$(basename "$s")";; *) mkdir -p "$(dirname "$d")"; t="$d";; esac
  cp -a --no-preserve=ownership "$s" "$t"
fi
if [ -n "$DECLAWD_MODE" ]; then chmod -R "$DECLAWD_MODE" "$t"; fi
"""


def step_command(step: Step) -> tuple[list[str], list[str]]:
    """(args, extra env) of the build container for a non-bootstrap step."""
    env = ["DEBIAN_FRONTEND=noninteractive", "HOME=/root", f"PATH={BUILD_PATH}", "LANG=C.UTF-8"]
    c = step.content
    if step.kind == "apt":
        pkgs = shlex.join(c["packages"])
        script = (
            "apt-get update -q && apt-get install -y -q --no-install-recommends "
            f"{pkgs} && apt-get clean && rm -rf /var/lib/apt/lists/*"
        )
    elif step.kind == "pip":
        script = (
            "pip install --no-cache-dir --progress-bar off --break-system-packages "
            f"{shlex.join(c['packages'])}"
        )
        env.append("PIP_ROOT_USER_ACTION=ignore")
    elif step.kind == "run":
        env.extend(f"{k}={v}" for k, v in c["env"])
        wd = shlex.quote(c["workdir"])
        inner = f"cd {wd} && {c['cmd']}" if c["user"] == "root" else c["cmd"]
        if c["user"] == "root":
            script = f"mkdir -p {wd} && {inner}"
        else:
            user = shlex.quote(c["user"])
            script = (
                f"mkdir -p {wd} && cd {wd} && "
                f"HOME=$(getent passwd {user} | cut -d: -f6) exec runuser -u {user} -- /bin/sh -c {shlex.quote(inner)}"
            )
        return ["/bin/sh", "-c", script], env
    elif step.kind == "copy":
        env += [f"DECLAWD_SRC={c['src']}", f"DECLAWD_DST={c['dst']}"]
        env.append(f"DECLAWD_MODE={c['mode']:o}" if c["mode"] is not None else "DECLAWD_MODE=")
        script = "set -e" + _COPY
    elif step.kind == "user":
        script = "set -e" + _ENSURE_USER
    elif step.kind == "finalize":
        script = "set -e" + _ENSURE_USER + _FINALIZE
    else:
        raise ValueError(f"step kind {step.kind!r} does not run in a container")
    return ["/bin/sh", "-c", script], env
