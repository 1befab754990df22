"""The Kubernetes manifests (deploy/k8s), validated offline with the tools of .venv-tools.

Every overlay is rendered with `kubectl kustomize` (the kustomize `kubectl apply -k` uses),
checked against the Kubernetes schemas by kubernetes-validate (strict: unknown fields are
errors) and scanned by checkov, whose findings must each be justified in
deploy/k8s/checkov-justified.yaml. Mutated overlays show that each tool rejects a broken
manifest, so a pass means something.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from declawd.config import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("production", "test")
JUSTIFIED = K8S / "checkov-justified.yaml"
TOOLS = ROOT / ".venv-tools" / "bin"
# The oldest Kubernetes these manifests claim and the newest the pinned tools know.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
# Each Secret and its keys; EVERY_KEY: mounted whole, its keys are the operator's (one join
# token per host, named after it).
EVERY_KEY = "*"
SECRETS = {
    "declawd-database": {"url"},
    "declawd-cluster-ca": {"ca.crt", "ca.key"},
    "declawd-vault-key": {"vault.key"},
    "declawd-join-tokens": {EVERY_KEY},
}
# Offline: no platform download, no guideline mapping, no PyPI version check.
CHECKOV_ENV = {"CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE"}


@dataclass(frozen=True)
class Finding:
    check: str
    resource: str  # Kind/name, without the namespace

    def __str__(self) -> str:
        return f"{self.check} on {self.resource}"


def _tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make tools-venv` (a prerequisite of `make test`)")
    return str(path)


def _run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
    )


def render(kustomization_dir: Path) -> str:
    proc = _run(_tool("kubectl"), "kustomize", str(kustomization_dir))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@cache
def rendered(overlay: str) -> str:
    return render(K8S / "overlays" / overlay)


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
    return matches[0]


def kubernetes_validate(manifest: Path, version: str) -> subprocess.CompletedProcess[str]:
    return _run(_tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, str(manifest))


def checkov_findings(manifest: Path) -> list[Finding]:
    proc = _run(
        _tool("checkov"),
        "--file",
        str(manifest),
        "--framework",
        "kubernetes",
        "--skip-download",
        "--quiet",
        "--compact",
        "--output",
        "json",
        env=CHECKOV_ENV,
    )
    assert proc.returncode in (0, 1), proc.stderr  # 1: findings
    report = json.loads(proc.stdout)
    if isinstance(report, list):  # several check types in one run
        (report,) = [r for r in report if r["check_type"] == "kubernetes"]
    assert report["summary"]["parsing_errors"] == 0, proc.stdout
    assert report["summary"]["resource_count"] > 0, "checkov saw no resource"
    return [
        Finding(f["check_id"], _kind_name(f["resource"]))
        for f in report["results"].get("failed_checks", [])
    ]


def _kind_name(checkov_resource: str) -> str:
    kind, _namespace, name = checkov_resource.split(".", 2)
    return f"{kind}/{name}"


def justifications() -> list[dict[str, Any]]:
    entries = yaml.safe_load(JUSTIFIED.read_text())
    assert isinstance(entries, list)
    return entries


def justified(overlay: str) -> set[Finding]:
    return {
        Finding(e["check"], e["resource"])
        for e in justifications()
        if overlay in e.get("overlays", OVERLAYS)
    }


def unjustified(overlay: str, findings: list[Finding]) -> list[str]:
    return sorted(str(f) for f in set(findings) - justified(overlay))


@cache
def overlay_findings(overlay: str, tmp_root: Path) -> tuple[Finding, ...]:
    manifest = tmp_root / f"{overlay}.yaml"
    manifest.write_text(rendered(overlay))
    return tuple(checkov_findings(manifest))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("k8s")


def mutated(tmp_path: Path, overlay: str, patch: list[dict[str, Any]], kind: str) -> Path:
    """An overlay on top of `overlay` applying a JSON patch to its `kind`; the rendered file."""
    target = {"Deployment": "declawd-api", "DaemonSet": "declawd-node"}[kind]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        # kustomize takes bases by relative path only
        "resources": [os.path.relpath(K8S / "overlays" / overlay, tmp_path)],
        "patches": [
            {"patch": json.dumps(patch), "target": {"kind": kind, "name": target}},
        ],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    out = tmp_path / "rendered.yaml"
    out.write_text(render(tmp_path))
    return out


# --- what the overlays render -------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_whole_deployment_and_no_secret(overlay: str) -> None:
    docs = documents(rendered(overlay))
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == sorted(
        [
            ("Namespace", "declawd-test" if overlay == "test" else "declawd"),
            ("ServiceAccount", "declawd-api"),
            ("ServiceAccount", "declawd-node"),
            ("ConfigMap", "declawd-settings"),
            ("Deployment", "declawd-api"),
            ("Service", "declawd-api"),
            ("Service", "declawd-internal"),
            ("PodDisruptionBudget", "declawd-api"),
            ("DaemonSet", "declawd-node"),
            ("NetworkPolicy", "default-deny"),
            ("NetworkPolicy", "declawd-api"),
        ]
    )
    (namespace,) = [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {namespace}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workloads_follow_the_cluster_interface(overlay: str) -> None:
    docs = documents(rendered(overlay))
    api = find(docs, "Deployment", "declawd-api")["spec"]["template"]["spec"]
    node = find(docs, "DaemonSet", "declawd-node")["spec"]["template"]["spec"]
    (api_c,) = api["containers"]
    (node_c,) = node["containers"]
    for c in (api_c, node_c):
        assert re.fullmatch(r"ghcr\.io/declawd/declawd:\d+\.\d+\.\d+(-[a-z0-9.]+)?", c["image"])
    assert api_c["args"] == ["server", "--cluster", "--host", "0.0.0.0", "--port", "8080"]
    # A join token of its own per host (they are single use), by the host's name.
    assert node_c["args"] == ["node", "--join-token-file", "/etc/declawd/join/$(DECLAWD_NODE_NAME)"]
    assert {p["containerPort"] for p in api_c["ports"]} == {8080, 8443}
    assert {p["containerPort"] for p in node_c["ports"]} == {8444, 8445}
    # One shared filesystem for the blob store, at the configured path, on both.
    blob_dir = find(docs, "ConfigMap", "declawd-settings")["data"]["DECLAWD_BLOB_DIR"]
    for pod, c in ((api, api_c), (node, node_c)):
        (claim,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert claim["persistentVolumeClaim"]["claimName"] == "declawd-blobs"
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts[claim["name"]] == blob_dir
    assert api_c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert api_c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert node_c["lifecycle"]["preStop"]["exec"]["command"] == ["declawd", "node", "drain"]
    api_env = {e["name"]: e for e in api_c["env"]}
    node_env = {e["name"]: e for e in node_c["env"]}
    # Every name one the code reads: a Settings field, or the CLI's --control-plane.
    known = {f"DECLAWD_{f.name.upper()}" for f in fields(Settings)} | {"DECLAWD_CONTROL_PLANE"}
    for env in (api_env, node_env):
        assert set(env) - known == set()
        assert env["DECLAWD_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == (
            "declawd-database"
        )
        assert env["DECLAWD_STATE_DIR"]["value"] == "/var/lib/declawd"
    assert api_env["DECLAWD_CLUSTER_CA_DIR"]["value"] == "/etc/declawd/cluster-ca"
    assert node_env["DECLAWD_CONTROL_PLANE"]["value"] == "https://declawd-internal:8443"
    assert {"DECLAWD_NODE_NAME", "DECLAWD_NODE_ADDRESS"} <= set(node_env)
    # The vault's master key where the code reads it: <state dir>/keys/vault.key.
    assert {m["mountPath"] for m in api_c["volumeMounts"]} >= {"/var/lib/declawd/keys/vault.key"}
    # ... and on the API only: a node gets its sandboxes' values over the internal API.
    assert "declawd-vault-key" not in json.dumps(node)
    assert {m["mountPath"] for m in node_c["volumeMounts"]} >= {
        "/var/lib/declawd",
        "/sys/fs/cgroup",
        "/etc/declawd/join",
    }
    assert node["hostNetwork"] and node["hostPID"]
    assert node_c["securityContext"]["privileged"] is True
    assert api_c["securityContext"]["privileged"] is False
    assert api["securityContext"]["runAsNonRoot"] is True
    assert not api["automountServiceAccountToken"] and not node["automountServiceAccountToken"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_node_grace_period_covers_the_longest_sandbox(overlay: str) -> None:
    """The preStop drain waits for sandboxes to end; the kubelet must not kill it first."""
    docs = documents(rendered(overlay))
    settings = find(docs, "ConfigMap", "declawd-settings")["data"]
    node = find(docs, "DaemonSet", "declawd-node")["spec"]
    assert node["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1
    grace = node["template"]["spec"]["terminationGracePeriodSeconds"]
    assert int(settings["DECLAWD_MAX_TIMEOUT"]) + 60 <= grace


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_external_and_match_the_documented_ones(overlay: str) -> None:
    docs = documents(rendered(overlay))
    assert not [d for d in docs if d["kind"] == "Secret"]
    used: dict[str, set[str]] = {}
    for d in docs:
        if d["kind"] not in ("Deployment", "DaemonSet"):
            continue
        spec = d["spec"]["template"]["spec"]
        for v in spec.get("volumes", []):
            if "secret" in v:
                keys = {i["key"] for i in v["secret"].get("items", [])} or {EVERY_KEY}
                used.setdefault(v["secret"]["secretName"], set()).update(keys)
        for c in spec["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    used.setdefault(ref["name"], set()).add(ref["key"])
    assert used == SECRETS
    guide = (ROOT / "docs" / "operations.md").read_text()
    for name, keys in SECRETS.items():
        command = re.search(rf"kubectl -n declawd create secret generic {name}\b[^\n]*", guide)
        assert command, f"docs/operations.md does not say how to create {name}"
        wanted = {"--from-file="} if keys == {EVERY_KEY} else {f"--from-file={k}=" for k in keys}
        assert {w for w in wanted if w not in command[0]} == set(), command[0]


# --- kubernetes-validate ------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_kubernetes_validate(overlay: str, version: str, scratch: Path) -> None:
    manifest = scratch / f"validate-{overlay}.yaml"
    manifest.write_text(rendered(overlay))
    proc = kubernetes_validate(manifest, version)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            [{"op": "add", "path": "/spec/template/spec/containers/0/bogusField", "value": 1}],
            "bogusField",
        ),
        ([{"op": "replace", "path": "/spec/replicas", "value": "two"}], "replicas"),
        ([{"op": "remove", "path": "/spec/selector"}], "selector"),
    ],
    ids=["unknown-field", "wrong-type", "missing-required"],
)
def test_kubernetes_validate_rejects_a_broken_manifest(
    patch: list[dict[str, Any]], message: str, tmp_path: Path
) -> None:
    manifest = mutated(tmp_path, "production", patch, "Deployment")
    proc = kubernetes_validate(manifest, KUBERNETES_VERSIONS[-1])
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


# --- checkov ------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_has_no_unjustified_checkov_finding(overlay: str, scratch: Path) -> None:
    findings = overlay_findings(overlay, scratch)
    assert unjustified(overlay, list(findings)) == []


def test_every_justification_is_still_needed(scratch: Path) -> None:
    stale = [
        f"{e['check']} on {e['resource']} ({overlay})"
        for e in justifications()
        for overlay in e.get("overlays", OVERLAYS)
        if Finding(e["check"], e["resource"]) not in overlay_findings(overlay, scratch)
    ]
    assert stale == []


def test_every_justification_gives_a_reason() -> None:
    for e in justifications():
        assert set(e) <= {"check", "resource", "overlays", "reason"}, e
        assert re.fullmatch(r"CKV2?_K8S_\d+", e["check"]), e
        assert re.fullmatch(r"[A-Za-z]+/[a-z0-9-]+", e["resource"]), e
        assert set(e.get("overlays", OVERLAYS)) <= set(OVERLAYS), e
        assert len(e["reason"].split()) >= 5, e


def _security_context(field: str, value: object) -> list[dict[str, Any]]:
    path = f"/spec/template/spec/containers/0/securityContext/{field}"
    return [{"op": "add", "path": path, "value": value}]


@pytest.mark.parametrize(
    ("patch", "check"),
    [
        (_security_context("privileged", True), "CKV_K8S_16"),
        (_security_context("allowPrivilegeEscalation", True), "CKV_K8S_20"),
        ([{"op": "add", "path": "/spec/template/spec/hostNetwork", "value": True}], "CKV_K8S_19"),
        (
            [{"op": "remove", "path": "/spec/template/spec/containers/0/resources/limits"}],
            "CKV_K8S_13",
        ),
    ],
    ids=["privileged-api", "privilege-escalation", "host-network-api", "no-limits"],
)
def test_checkov_rejects_a_weakened_api_pod(
    patch: list[dict[str, Any]], check: str, tmp_path: Path
) -> None:
    manifest = mutated(tmp_path, "production", patch, "Deployment")
    # The same manifest passes kubernetes-validate: only checkov catches these.
    assert kubernetes_validate(manifest, KUBERNETES_VERSIONS[-1]).returncode == 0
    assert f"{check} on Deployment/declawd-api" in unjustified(
        "production", checkov_findings(manifest)
    )


def test_checkov_rejects_a_node_that_mounts_a_service_account_token(tmp_path: Path) -> None:
    patch = [
        {"op": "replace", "path": "/spec/template/spec/automountServiceAccountToken", "value": True}
    ]
    manifest = mutated(tmp_path, "production", patch, "DaemonSet")
    assert "CKV_K8S_38 on DaemonSet/declawd-node" in unjustified(
        "production", checkov_findings(manifest)
    )


# --- the image ----------------------------------------------------------------------------


def dockerfile_findings(dockerfile: Path) -> list[str]:
    proc = _run(
        _tool("checkov"),
        "--file",
        str(dockerfile),
        "--framework",
        "dockerfile",
        "--skip-download",
        "--quiet",
        "--compact",
        "--output",
        "json",
        env=CHECKOV_ENV,
    )
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads(proc.stdout)
    assert report["summary"]["parsing_errors"] == 0, proc.stdout
    assert report["summary"]["resource_count"] > 0, "checkov saw no Dockerfile"
    return sorted(f["check_id"] for f in report["results"].get("failed_checks", []))


def test_dockerfile_has_no_checkov_finding() -> None:
    assert dockerfile_findings(ROOT / "deploy" / "Dockerfile") == []


def test_checkov_rejects_a_dockerfile_without_its_user(tmp_path: Path) -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "\nUSER 10001:10001\n" in text
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace("\nUSER 10001:10001\n", "\n"))
    assert dockerfile_findings(broken) == ["CKV_DOCKER_3"]
