import pytest

from declawd.errors import InvalidInput
from declawd.templates.images import map_base_image


@pytest.mark.parametrize(
    ("image", "suite", "packages"),
    [
        ("debian:bookworm", "bookworm", ()),
        ("debian:12", "bookworm", ()),
        ("debian:bookworm-slim", "bookworm", ()),
        ("debian", "bookworm", ()),
        ("docker.io/library/debian:bullseye", "bullseye", ()),
        ("debian:trixie", "trixie", ()),
        ("ubuntu:22.04", "bookworm", ()),
        ("ubuntu:jammy", "bookworm", ()),
        ("python:3.12-slim", "bookworm", ("python3", "python3-pip", "python3-venv")),
        ("python:3", "bookworm", ("python3", "python3-pip", "python3-venv")),
        ("node:20", "bookworm", ("nodejs", "npm")),
    ],
)
def test_known_images_map_to_debian(image, suite, packages):
    base = map_base_image(image)
    assert (base.suite, base.packages) == (suite, packages)
    assert image in base.note


def test_mapped_images_say_so():
    assert "nearest Debian base" in map_base_image("ubuntu:22.04").note


@pytest.mark.parametrize(
    "image",
    [
        "alpine:3.19",
        "debian:buster",
        "ubuntu:lunar-ish",
        "python:2.7",
        "ghcr.io/x/y:1",
        "debian@sha256:00",
        "",
    ],
)
def test_anything_else_is_a_400_listing_supported_forms(image):
    with pytest.raises(InvalidInput) as exc:
        map_base_image(image)
    msg = exc.value.message
    assert msg.startswith("base_image:")
    assert (
        "debian:<suite" in msg
        and "ubuntu:<version>" in msg
        and "python:3" in msg
        and "node:<major>" in msg
    )
