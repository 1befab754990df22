from declawd.templates.catalog import catalog_names, catalog_plan
from declawd.templates.plan import chain_keys, layer_key, plan_spec, step_command
from declawd.templates.spec import parse_spec


def _keys(raw):
    return plan_spec(parse_spec(raw)).keys


def test_changing_the_last_step_changes_only_the_last_keys():
    a = _keys({"base_image": "debian:bookworm", "run_cmds": ["echo 1", "echo 2"]})
    b = _keys({"base_image": "debian:bookworm", "run_cmds": ["echo 1", "echo 3"]})
    assert a[:2] == b[:2]  # bootstrap, first RUN
    assert a[2] != b[2] and a[3] != b[3]  # changed RUN and everything above it


def test_keys_are_deterministic_and_chain_on_the_parent():
    raw = {"base_image": "debian:bookworm", "run_cmds": ["echo 1"]}
    assert _keys(raw) == _keys(dict(raw))
    steps = plan_spec(parse_spec(raw)).steps
    assert layer_key("x", steps[0]) != layer_key("", steps[0])
    assert chain_keys(steps)[1] == layer_key(chain_keys(steps)[0], steps[1])


def test_package_order_does_not_matter_but_env_does():
    assert _keys({"base_image": "debian:bookworm", "packages": ["a", "b"]}) == _keys(
        {"base_image": "debian:bookworm", "packages": ["b", "a"]}
    )
    assert _keys({"run_cmds": ["x"], "envs": {"A": "1"}}) != _keys(
        {"run_cmds": ["x"], "envs": {"A": "2"}}
    )


def test_plan_shape():
    plan = plan_spec(
        parse_spec(
            {"base_image": "python:3.11", "pip_packages": ["requests"], "run_cmds": ["true"]}
        )
    )
    assert [s.kind for s in plan.steps] == ["bootstrap", "pip", "run", "finalize"]
    assert "python3-pip" in plan.steps[0].content["packages"]


def test_user_is_created_before_a_run_as_user():
    plan = plan_spec(parse_spec({"dockerfile": "FROM debian\nRUN echo a\nUSER user\nRUN echo b\n"}))
    assert [s.kind for s in plan.steps] == ["bootstrap", "run", "user", "run", "finalize"]
    args, _env = step_command(plan.steps[3])
    assert "runuser -u user" in args[2]


def test_catalog_children_share_their_parents_layers():
    assert {"base", "python", "node", "code-interpreter"} <= set(catalog_names())
    base, python, ci = (catalog_plan(n) for n in ("base", "python", "code-interpreter"))
    assert python.keys[0] == base.keys[0]  # bootstrap with base's packages
    assert ci.keys[:3] == python.keys[:3]  # bootstrap, python apt, python pip
    assert [s.kind for s in python.steps] == ["bootstrap", "apt", "pip", "finalize"]
    assert python.base.suite == "bookworm" and "debian:bookworm" in python.base.note
    assert "build-essential" in base.steps[0].content["packages"]


def test_finalize_makes_hosts_and_resolv_conf_regular_files():
    step = plan_spec(parse_spec({})).steps[-1]
    script = step_command(step)[0][2]
    assert "rm -f /etc/hosts /etc/resolv.conf" in script
    assert "useradd -m -u 1000" in script
