import pytest

from declawd.errors import InvalidInput
from declawd.templates.dockerfile import MAX_DOCKERFILE_BYTES, parse_dockerfile
from declawd.templates.spec import CopyOp, RunOp, parse_spec


def test_subset_semantics_follow_docker():
    spec = parse_dockerfile(
        """
        # comment
        FROM python:3.11-slim AS app
        ENV A=1 B="two words"
        RUN apt-get update && \\
            apt-get install -y curl
        WORKDIR /srv
        WORKDIR app
        USER user
        RUN ["echo", "hi there"]
        ENV LEGACY value with spaces
        CMD ["python3", "-m", "http.server"]
        """
    )
    assert spec.base_image == "python:3.11-slim"
    env1 = (("A", "1"), ("B", "two words"))
    assert spec.ops == [
        RunOp("apt-get update &&  apt-get install -y curl", env1, "/", "root"),
        RunOp("echo 'hi there'", env1, "/srv/app", "user"),
    ]
    assert spec.envs == {"A": "1", "B": "two words", "LEGACY": "value with spaces"}
    assert spec.workdir == "/srv/app"
    assert spec.user == "user"
    assert spec.start_cmd == "python3 -m http.server"


def test_defaults_without_user_or_workdir_are_the_platform_defaults():
    spec = parse_dockerfile("FROM debian:bookworm\nRUN echo hi > /hello\n")
    assert (spec.user, spec.workdir) == ("user", "/home/user")
    assert spec.ops == [RunOp("echo hi > /hello")]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("RUN echo\n", "RUN before FROM"),
        ("", "must contain FROM"),
        ("FROM debian\nEXPOSE 80\n", "line 2: unsupported instruction 'EXPOSE'"),
        ("FROM debian\nFROM ubuntu\n", "multi-stage"),
        ("RUN x\nFROM debian\n", "line 1: RUN before FROM"),
        ("FROM debian\nRUN --mount=type=cache echo\n", "RUN options"),
        ("FROM debian\nCOPY a b c /x\n", "one source"),
        ("FROM debian\nCOPY *.py /x\n", "wildcards"),
    ],
)
def test_rejections_name_the_line(text, needle):
    with pytest.raises(InvalidInput) as exc:
        parse_dockerfile(text)
    assert needle in exc.value.message


def test_size_cap():
    with pytest.raises(InvalidInput, match="64 KiB"):
        parse_dockerfile("FROM debian\n" + "#" * MAX_DOCKERFILE_BYTES)


def test_copy_needs_a_build_context():
    with pytest.raises(InvalidInput, match="COPY needs a build context"):
        parse_spec({"dockerfile": "FROM debian\nCOPY app /srv/app\n"})
    spec = parse_spec(
        {
            "dockerfile": "FROM debian\nWORKDIR /srv\nCOPY ./app app\n",
            "context_id": "ctx-" + "0" * 64,
        }
    )
    assert spec.ops == [CopyOp("app", "/srv/app")]
