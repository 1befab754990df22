import pytest

from declawd.errors import InvalidInput
from declawd.templates.spec import CopyOp, RunOp, parse_build_body, parse_spec

CTX = "ctx-" + "a" * 64


def test_sdk_spec_becomes_ordered_ops_with_envs_applied():
    spec = parse_spec(
        {
            "base_image": "debian:bookworm",
            "run_cmds": ["echo a", "echo b"],
            "envs": {"A": "1"},
            "packages": ["curl"],
            "start_cmd": "sleep infinity",
        }
    )
    assert spec.base_image == "debian:bookworm"
    assert spec.packages == ["curl"]
    assert spec.ops == [RunOp("echo a", (("A", "1"),)), RunOp("echo b", (("A", "1"),))]
    assert spec.start_cmd == "sleep infinity"
    assert (spec.user, spec.workdir) == ("user", "/home/user")


def test_sdk_default_base_image_is_ubuntu_2204():
    assert parse_spec({}).base_image == "ubuntu:22.04"


def test_unknown_keys_are_ignored():
    spec = parse_spec({"base_image": "debian:bookworm", "future_thing": [1, 2]})
    assert spec.ops == []


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"run_cmds": "echo"}, "template.run_cmds"),
        ({"run_cmds": ["ok", 3]}, "template.run_cmds[1]"),
        ({"envs": ["A"]}, "template.envs"),
        ({"envs": {"A": 1}}, "template.envs.A"),
        ({"packages": [1]}, "template.packages[0]"),
        ({"packages": ["bad name; rm"]}, "template.packages[0]"),
        ({"base_image": 5}, "template.base_image"),
        ({"start_cmd": ["a"]}, "template.start_cmd"),
        ({"ready_timeout": "5"}, "template.ready_timeout"),
        ({"ready_timeout": -1}, "template.ready_timeout"),
        ({"workdir": "rel/dir"}, "template.workdir"),
        ({"user": "Bad User"}, "template.user"),
        ({"runtime": "kata"}, "template.runtime"),
        ({"copies": [{"src": "a", "dst": "/a"}]}, "template.copies"),
        ({"copies": [{"src": "../a", "dst": "/a"}], "context_id": CTX}, "template.copies[0].src"),
        ({"copies": [{"src": "a", "dst": "a"}], "context_id": CTX}, "template.copies[0].dst"),
        (
            {"copies": [{"src": "a", "dst": "/a", "mode": "755"}], "context_id": CTX},
            "template.copies[0].mode",
        ),
        ({"context_id": "nope"}, "template.context_id"),
    ],
)
def test_wrong_types_name_the_field(raw, field):
    with pytest.raises(InvalidInput) as exc:
        parse_spec(raw)
    assert exc.value.message.startswith(field + ":"), exc.value.message
    assert exc.value.field == field


def test_extended_spec_keys():
    spec = parse_spec(
        {
            "base_image": "debian:bookworm",
            "pip_packages": ["requests==2.32.3"],
            "user": "root",
            "workdir": "/srv",
            "ready_cmd": "curl -sf localhost:8000",
            "ready_timeout": 30,
            "copies": [{"src": "app", "dst": "/srv/app", "mode": 0o755}],
            "context_id": CTX,
        }
    )
    assert spec.pip_packages == ["requests==2.32.3"]
    assert spec.ops == [CopyOp("app", "/srv/app", 0o755)]
    assert (spec.user, spec.workdir, spec.ready_timeout) == ("root", "/srv", 30.0)


def test_build_body_validation():
    req = parse_build_body(
        {"template": {"base_image": "debian:bookworm"}, "alias": "my-tpl", "cpu_count": 2}
    )
    assert (req.alias, req.cpu_count, req.memory_mb) == ("my-tpl", 2, None)
    for body, field in [
        ({"alias": "x"}, "template"),
        ({"template": {}, "alias": 3}, "alias"),
        ({"template": {}, "alias": "Has Space"}, "alias"),
        ({"template": {}, "alias": "tpl-123"}, "alias"),
        ({"template": {}, "alias": "a", "cpu_count": "2"}, "cpu_count"),
        ({"template": {}, "alias": "a", "memory_mb": True}, "memory_mb"),
        ({"template": {}, "alias": "a", "memory_mb": 0}, "memory_mb"),
        ({"template": [], "alias": "a"}, "template"),
    ]:
        with pytest.raises(InvalidInput) as exc:
            parse_build_body(body)
        assert exc.value.message.startswith(field + ":"), exc.value.message
        assert exc.value.field == field
