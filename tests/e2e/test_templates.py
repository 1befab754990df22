"""Templates end to end: the official SDK's builder and our CLI against a real server.

Builds are small (Debian minbase, or python:3.11 + curl, plus one step) and share their
bootstrap layer across tests and runs; a per-session token keeps the later steps uncached
where a test needs a real build. Build steps that must wait or fail on cue connect to a
"gate" port on the host's loopback (build steps run in the host's network namespace).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from declaw import (
    ConflictException,
    InvalidArgumentException,
    NotFoundException,
    Sandbox,
    Template,
    TemplateBase,
    TimeoutException,
)
from declaw.exceptions import BuildError

from declawd.templates.plan import plan_spec
from declawd.templates.spec import parse_spec
from tests.e2e import conftest as c
from tests.e2e.leaks import settings_for, snapshot, wait_settled

pytestmark = pytest.mark.e2e
TOKEN = secrets.token_hex(4)
START_LOG = "/tmp/start_cmd.log"
WAIT_START_LOG = f"for i in $(seq 200); do [ -s {START_LOG} ] && break; sleep 0.05; done"


def alias(name: str) -> str:
    return f"e2e-{TOKEN}-{name}"


class Gate:
    """A loopback port that refuses connections until `open()`; build steps probe it."""

    def __init__(self) -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.sock: socket.socket | None = None

    def probe(self) -> str:  # exit 7 while closed
        return (
            f"bash -c '(echo > /dev/tcp/127.0.0.1/{self.port}) 2>/dev/null "
            "|| { echo gate-closed; exit 7; }'"
        )

    def wait(self) -> str:  # blocks the step until open
        return (
            f"bash -c 'until (echo > /dev/tcp/127.0.0.1/{self.port}) 2>/dev/null; "
            "do sleep 0.2; done'"
        )

    def open(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.sock = s

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    try:
        yield g
    finally:
        g.close()


def api(server: dict[str, str]) -> httpx.Client:
    return httpx.Client(base_url=server["url"], headers={"X-API-Key": server["key"]}, timeout=60)


def create(tpl: str, runtime: str = "runc") -> Sandbox:
    return Sandbox.create(template=tpl, timeout=120, metadata={"declaw.runtime": runtime})


def run(sbx: Sandbox, cmd: str, user: str = "user") -> str:
    r = sbx.commands.run(cmd, user=user)
    assert r.exit_code == 0, r.stderr
    return str(r.stdout)


def step_lines(logs: list[str]) -> list[str]:
    return [line for line in logs if line.startswith("step ") and ": done in" not in line]


# --- 1. the SDK's builder ------------------------------------------------------------


@pytest.fixture(scope="module")
def sdk_template(server: dict[str, str]) -> tuple[str, list[str]]:
    tpl = (
        TemplateBase()
        .from_base_image("python:3.11")
        .apt_install("curl")
        .run_cmd(["echo", f"built-{TOKEN}", ">", "/opt/marker"])
        .set_envs({"E2E_VAR": "from-template"})
        .set_start_cmd("echo started as $(id -un) in $(pwd) with $E2E_VAR; exec sleep 600")
    )
    logs: list[str] = []
    info = Template.build(tpl, alias("sdk"), on_build_logs=logs.append)
    assert info.status == "completed"
    return alias("sdk"), logs


def test_sdk_template_files_envs_and_start_command(
    sdk_template: tuple[str, list[str]], runtime: str
) -> None:
    name, logs = sdk_template
    assert logs[0].startswith("base image python:3.11:") and "python3-pip" in logs[0]
    sbx = create(name, runtime)
    try:
        out = run(sbx, "cat /opt/marker; echo $E2E_VAR; curl --version | head -c 5; echo")
        assert out == f"built-{TOKEN}\nfrom-template\ncurl \n"
        assert run(sbx, "python3 -c 'import sys; print(sys.version_info[0])'") == "3\n"
        log = run(sbx, f"{WAIT_START_LOG}; cat {START_LOG}")
        assert log == "started as user in /home/user with from-template\n"
        assert sbx.files.read(START_LOG) == log  # the documented way to read it
    finally:
        sbx.kill(wait=True)


DOCKERFILE = f"""FROM ubuntu:22.04
ENV GREETING="hello world" LEVEL=2
WORKDIR /srv/app
RUN echo "$GREETING {TOKEN}" > greeting.txt
USER user
RUN id -un > $HOME/built-by && pwd >> $HOME/built-by
CMD ["sh", "-c", "echo cmd: $(id -un) $(pwd) $LEVEL"]
"""


@pytest.fixture(scope="module")
def dockerfile_template(server: dict[str, str]) -> tuple[str, list[str]]:
    logs: list[str] = []
    Template.build(
        TemplateBase().from_dockerfile(DOCKERFILE), alias("df"), on_build_logs=logs.append
    )
    return alias("df"), logs


def test_dockerfile_subset(dockerfile_template: tuple[str, list[str]], runtime: str) -> None:
    name, logs = dockerfile_template
    assert logs[0].startswith("base image ubuntu:22.04: no registry here")
    assert "Debian bookworm" in logs[0]
    sbx = create(name, runtime)
    try:
        assert run(sbx, "cat /srv/app/greeting.txt") == f"hello world {TOKEN}\n"
        assert run(sbx, "cat /home/user/built-by") == "user\n/srv/app\n"
        assert run(sbx, "echo $GREETING/$LEVEL") == "hello world/2\n"
        # CMD is the start command: it runs as USER in WORKDIR with the ENV
        assert run(sbx, f"{WAIT_START_LOG}; cat {START_LOG}") == "cmd: user /srv/app 2\n"
    finally:
        sbx.kill(wait=True)


@pytest.mark.parametrize(
    "tpl",
    [
        TemplateBase().from_base_image("alpine:3.19"),
        TemplateBase().from_dockerfile("FROM quay.io/foo/bar:1\nRUN true\n"),
    ],
    ids=["base_image", "dockerfile"],
)
def test_unsupported_base_image_is_400_listing_forms(
    server: dict[str, str], tpl: TemplateBase
) -> None:
    with pytest.raises(InvalidArgumentException) as err:
        Template.build(tpl, alias("bad"))
    msg = str(err.value)
    assert "HTTP 400" in msg and "unsupported image" in msg
    for form in ("debian:", "ubuntu:", "python:3", "node:"):
        assert form in msg


# --- 3. a failing step, debris, rebuild ------------------------------------------------


def test_failing_step_no_debris_then_rebuild(server: dict[str, str], gate: Gate) -> None:
    dockerfile = f"FROM ubuntu:22.04\nRUN echo probing-{TOKEN} && {gate.probe()}\n"
    key = plan_spec(parse_spec({"dockerfile": dockerfile})).keys[1]
    with pytest.raises(BuildError) as err:
        Template.build(TemplateBase().from_dockerfile(dockerfile), alias("fail"))
    msg = str(err.value)
    assert f"step 2/3 (RUN echo probing-{TOKEN}" in msg
    assert "failed with exit code 7" in msg
    assert f"probing-{TOKEN}" in msg and "gate-closed" in msg  # the step's log tail
    failed_id = err.value.template_id
    # no partial layer, no temp dir, no mount, no build container
    tdir = c.TEMPLATES_DIR
    assert not (tdir / "layers" / key).exists()
    assert not [p for p in (tdir / "tmp").glob(f"{key[:16]}-*")]
    assert key[:16] not in Path("/proc/self/mountinfo").read_text()
    settings = settings_for(
        c.INSTANCE, c.STATE_DIR, os.environ.get("DECLAWD_TEST_POOL", "10.78.0.0/16")
    )
    runc_root = settings.run_dir / "runc"
    assert not list(runc_root.glob(f"*build-{key[:12]}*")) if runc_root.is_dir() else True
    with api(server) as http:
        assert http.get(f"/templates/{alias('fail')}").json()["state"] == "failed"
    # the alias names a failed template: a new build under it is refused
    with pytest.raises(ConflictException):
        Template.build(TemplateBase().from_dockerfile(dockerfile), alias("fail"))
    gate.open()  # fix the outside cause, then rerun the stored spec
    logs: list[str] = []
    info = Template.rebuild(failed_id, on_build_logs=logs.append)
    assert info.status == "completed" and info.template_id == failed_id
    assert (tdir / "layers" / key).is_dir()
    with pytest.raises(ConflictException):  # a ready template is immutable
        Template.rebuild(failed_id)


# --- 4. cache ---------------------------------------------------------------------------


def test_second_identical_build_is_fully_cached(server: dict[str, str]) -> None:
    def spec() -> TemplateBase:
        return TemplateBase().from_base_image("debian:bookworm").run_cmd([f"echo {TOKEN} > /opt/c"])

    times, logs = [], []
    for n in ("c1", "c2"):
        lines: list[str] = []
        t0 = time.monotonic()
        Template.build(spec(), alias(n), on_build_logs=lines.append)
        times.append(time.monotonic() - t0)
        logs.append(step_lines(lines))
    print(f"\ncache: first build {times[0]:.1f}s, second build {times[1]:.1f}s")
    assert any("[cached" not in line for line in logs[0])  # the RUN step really ran
    assert logs[1] and all("[cached" in line for line in logs[1]), logs[1]
    with api(server) as http:
        a, b = (http.get(f"/templates/{alias(n)}").json() for n in ("c1", "c2"))
    assert a["template_id"] != b["template_id"] and a["layers"] == b["layers"]


# --- 5. aliases, delete, list, gc --------------------------------------------------------


def test_alias_moves_on_completion_delete_list_gc(server: dict[str, str], gate: Gate) -> None:
    name = alias("moving")

    def spec(cmd: str) -> TemplateBase:
        return TemplateBase().from_base_image("debian:bookworm").run_cmd([cmd])

    v1 = Template.build(spec(f"echo v1-{TOKEN} > /opt/v"), name).template_id
    s1 = create(name)
    s2 = None
    try:
        started = Template.build_in_background(
            spec(f"{gate.wait()} && echo v2-{TOKEN} > /opt/v"), name
        )
        with api(server) as http:
            # the v2 build is blocked on the gate: the alias still names v1
            assert Template.get_build_status(started.build_id).status == "building"
            assert http.get(f"/templates/{name}").json()["template_id"] == v1
            gate.open()
            while Template.get_build_status(started.build_id).status == "building":
                time.sleep(0.5)
            assert Template.get_build_status(started.build_id).status == "completed"
            v2 = started.template_id
            assert http.get(f"/templates/{name}").json()["template_id"] == v2
            assert run(s1, "cat /opt/v") == f"v1-{TOKEN}\n"  # s1 keeps its template
            s2 = create(name)
            assert run(s2, "cat /opt/v") == f"v2-{TOKEN}\n"
            r = http.delete(f"/templates/{v1}")
            assert r.status_code == 409 and "used by 1 sandbox" in r.json()["message"]
            listing = http.get("/templates").json()
            mine = {t["template_id"]: t for t in listing["templates"]}
            for tid in (v1, v2):
                assert mine[tid]["state"] == "ready" and mine[tid]["size_bytes"] > 0
                assert mine[tid]["build_seconds"] is not None
            assert mine[v2]["alias"] == name
            assert listing["disk"]["layers_bytes"] > 0
            assert listing["disk"]["filesystem"]["free_bytes"] > 0
            v1_layers = http.get(f"/templates/{v1}").json()["layers"]
            v2_layers = http.get(f"/templates/{v2}").json()["layers"]
            s1.kill(wait=True)
            assert http.delete(f"/templates/{v1}").status_code == 200
            # gc only the layers of v1 (the layer dir is shared with other servers)
            unique = [k for k in v1_layers if k not in v2_layers]
            dry = http.post("/templates/gc", json={"layers": v1_layers, "dry_run": True}).json()
            assert sorted(dry["layers"]) == sorted(unique) and dry["freed_bytes"] > 0
            done = http.post("/templates/gc", json={"layers": v1_layers}).json()
            assert sorted(done["layers"]) == sorted(unique)
            assert not any((c.TEMPLATES_DIR / "layers" / k).exists() for k in unique)
            assert all((c.TEMPLATES_DIR / "layers" / k).is_dir() for k in v2_layers)
    finally:
        for s in (s1, s2):
            if s is not None:
                with contextlib.suppress(NotFoundException):  # s1 may be killed already
                    s.kill(wait=True)


# --- 2. the CLI: extended spec, context, ready check ------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c.BIN / "declawd"), "template", *args],
        env={**os.environ, "COLUMNS": "250"},  # rich would cut the table at 80 columns
        capture_output=True,
        text=True,
        timeout=900,
    )


def cli_spec(ready_cmd: str, ready_timeout: float) -> dict[str, object]:
    return {
        "base_image": "python:3.11",
        "packages": ["curl"],
        "pip_packages": ["six"],
        "copies": [{"src": "app", "dst": "/srv/app"}],
        "envs": {"PORT": "8000"},
        "user": "user",
        "workdir": "/srv/app",
        "start_cmd": "sleep 1; echo serving on $PORT; exec python3 -m http.server $PORT",
        "ready_cmd": ready_cmd,
        "ready_timeout": ready_timeout,
    }


@pytest.fixture(scope="module")
def cli_templates(server: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("cli")
    (d / "ctx" / "app").mkdir(parents=True)
    (d / "ctx" / "app" / "index.html").write_text(f"hello from context {TOKEN}\n")
    good, bad = d / "good.json", d / "bad.json"
    good.write_text(json.dumps(cli_spec("curl -sf localhost:8000/index.html", 60)))
    bad.write_text(json.dumps(cli_spec("curl -sf localhost:8001/", 3)))
    for spec, n in ((good, "cli"), (bad, "cli-never-ready")):
        r = cli("build", str(spec), "--alias", alias(n), "--context", str(d / "ctx"))
        assert r.returncode == 0, r.stderr[-3000:]
        assert "uploaded context" in r.stderr and "ready" in r.stderr
    return alias("cli")


def test_cli_template_ready_check_and_start_output(cli_templates: str, runtime: str) -> None:
    sbx = create(cli_templates, runtime)
    try:
        # create returned after the ready check passed: the server answers at once
        out = run(sbx, "curl -sf localhost:8000/index.html")
        assert out == f"hello from context {TOKEN}\n"
        assert run(sbx, "python3 -c 'import six; print(six.__name__)'") == "six\n"
        log = sbx.files.read(START_LOG)
        assert log.startswith("serving on 8000\n") and '"GET /index.html HTTP/1.1" 200' in log
    finally:
        sbx.kill(wait=True)


def test_cli_list_shows_templates(cli_templates: str) -> None:
    r = cli("list")
    assert r.returncode == 0, r.stderr
    assert cli_templates in r.stdout and "base" in r.stdout and "layer cache" in r.stdout


def test_ready_check_that_never_passes_fails_create_without_debris(cli_templates: str) -> None:
    settings = settings_for(
        c.INSTANCE, c.STATE_DIR, os.environ.get("DECLAWD_TEST_POOL", "10.78.0.0/16")
    )
    before = snapshot(settings)
    with pytest.raises(TimeoutException) as err:
        create(alias("cli-never-ready"))
    msg = str(err.value)
    assert "HTTP 408" in msg and "curl -sf localhost:8001/" in msg and "after 3s" in msg
    assert wait_settled(settings, before, None) == before


# --- 6. catalog --------------------------------------------------------------------------


def _require_builtin(server: dict[str, str], name: str) -> None:
    with api(server) as http:
        if http.get(f"/templates/{name}").status_code == 404:
            if os.environ.get("DECLAWD_TEST_FULL"):
                pytest.fail(f"built-in {name!r} is not built")
            pytest.skip(f"built-in {name!r} is not built (make catalog)")


def test_catalog_node(server: dict[str, str], runtime: str) -> None:
    _require_builtin(server, "node")
    sbx = create("node", runtime)
    try:
        assert run(sbx, 'node -e "console.log(1+1)"') == "2\n"
        assert run(sbx, "npm --version").strip()
    finally:
        sbx.kill(wait=True)


def test_catalog_code_interpreter(server: dict[str, str], runtime: str) -> None:
    _require_builtin(server, "code-interpreter")
    sbx = create("code-interpreter", runtime)
    try:
        out = run(sbx, "python3 -c 'import matplotlib, pandas; print(matplotlib.__name__)'")
        assert out == "matplotlib\n"
        assert "python3" in run(sbx, "jupyter kernelspec list")
        assert run(sbx, "python3 -m ipykernel --version").strip()[0].isdigit()
    finally:
        sbx.kill(wait=True)
