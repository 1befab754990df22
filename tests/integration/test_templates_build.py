"""End-to-end template builds with mmdebstrap + runc (root; reaches the Debian mirror)."""

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from declawd.config import Settings
from declawd.runtime.overlay import mount_points
from declawd.store import Store
from declawd.templates.builder import StepFailed
from declawd.templates.plan import plan_spec
from declawd.templates.service import TemplateService
from declawd.templates.spec import parse_spec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runc"), reason="needs root and runc"),
    pytest.mark.timeout(900),
]

# Layers are shared between test runs (they are the expensive part); everything else is
# per test. DECLAWD_TEMPLATES_DIR points the suite at the same cache as `make`.
SHARED = Path(os.environ.get("DECLAWD_TEMPLATES_DIR", "/var/lib/declawd/templates"))


@pytest.fixture
async def svc(tmp_path):
    settings = Settings(state_dir=tmp_path, templates_dir=SHARED, instance="tpltest")
    store = Store(settings.db_path)
    service = TemplateService(settings, store)
    yield service
    await service.close()
    store.close()


def _build_containers(svc) -> list[str]:
    out = subprocess.run(
        ["runc", "--root", str(svc.builder.runtime.root_dir), "list", "-q"],
        capture_output=True,
        text=True,
    ).stdout
    return [c for c in out.split() if c.startswith("tpltest-build-")]


def _no_debris(svc) -> None:
    tmp = svc.builder.cache.tmp_dir
    mine = [p for p in tmp.iterdir() if f"-{os.getpid()}-" in p.name] if tmp.is_dir() else []
    assert mine == []
    assert not [m for m in mount_points() if m.startswith(str(SHARED))]
    assert _build_containers(svc) == []


async def _build(svc, team, spec, alias):
    info = await svc.build(team, {"template": spec, "alias": alias})
    await svc.wait(info["build_id"])
    return svc.build_status(team, info["build_id"])


async def test_dockerfile_template_end_to_end_then_cache_hit(svc):
    team = svc.store.create_team("t")
    dockerfile = (
        "FROM debian:bookworm\nENV GREETING=hi\nRUN echo $GREETING > /hello\nCMD sleep infinity\n"
    )
    status = await _build(svc, team, {"dockerfile": dockerfile}, "hello")
    assert status["status"] == "completed", "\n".join(status["logs"][-20:])
    assert status["logs"][0].startswith("base image debian:bookworm")
    tpl = svc.resolve(team, "hello")
    assert (tpl.user, tpl.workdir, tpl.start_cmd, tpl.envs) == (
        "user",
        "/home/user",
        "sleep infinity",
        {"GREETING": "hi"},
    )
    run_layer, final = tpl.layer_paths[1], tpl.layer_paths[-1]
    assert (run_layer / "hello").read_text() == "hi\n"
    passwd = (final / "etc/passwd").read_text()
    assert "user:x:1000:1000::/home/user:/bin/bash" in passwd
    for name in ("etc/resolv.conf", "etc/hosts"):
        assert (final / name).is_file() and not (final / name).is_symlink()
    assert (final / "home/user").stat().st_uid == 1000
    _no_debris(svc)

    # same spec again: every layer is a cache hit
    result = await svc.builder.build(
        plan_spec(parse_spec({"dockerfile": dockerfile})), lambda _l: None
    )
    assert result.cached_steps == len(result.keys) == len(tpl.layer_keys)
    assert result.keys == tpl.layer_keys


async def test_changing_the_last_step_rebuilds_only_from_there(svc):
    # a fresh token per run: the shared cache must not already hold the changed steps
    token = uuid.uuid4().hex
    base = {"base_image": "debian:bookworm"}
    first = await svc.builder.build(
        plan_spec(parse_spec({**base, "run_cmds": ["echo one > /one", f"echo a-{token}"]})), print
    )
    second = await svc.builder.build(
        plan_spec(parse_spec({**base, "run_cmds": ["echo one > /one", f"echo b-{token}"]})), print
    )
    assert first.keys[:2] == second.keys[:2]
    assert first.keys[2] != second.keys[2]
    assert second.cached_steps == 2  # bootstrap + first RUN; the changed RUN and finalize are new
    _no_debris(svc)


async def test_failing_step_reports_step_and_exit_code_and_leaves_no_debris(svc):
    team = svc.store.create_team("t")
    spec = {"base_image": "debian:bookworm", "run_cmds": ["echo about to fail; exit 7"]}
    status = await _build(svc, team, spec, "broken")
    assert status["status"] == "failed"
    assert "about to fail" in status["logs"]
    assert (
        status["logs"][-1]
        == "error: step 2/3 (RUN echo about to fail; exit 7) failed with exit code 7"
    )
    plan = plan_spec(parse_spec(spec))
    assert not svc.builder.cache.exists(plan.keys[1])
    assert not svc.builder.cache.dir(plan.keys[1]).exists()
    _no_debris(svc)
    with pytest.raises(StepFailed) as exc:
        await svc.builder.build(plan, lambda _l: None)
    assert (exc.value.index, exc.value.exit_code) == (2, 7)
    assert "about to fail" in exc.value.tail
