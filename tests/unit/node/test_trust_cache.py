"""What a create reuses across sandboxes: the upstream bundle as read, certifi paths per set
of layers, the resolved seccomp profile; each is read again when what it came from changes."""

from __future__ import annotations

import os
from pathlib import Path

from declawd.node import trust
from declawd.runtime.spec import seccomp_profile

PEM_A = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"
PEM_B = b"-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n"


def test_upstream_bundle_is_read_again_when_replaced_or_rewritten(tmp_path: Path) -> None:
    bundle = tmp_path / "upstream.pem"
    bundle.write_bytes(PEM_A)
    assert trust.upstream_cas(bundle) == PEM_A + b"\n"
    new = tmp_path / "new.pem"
    new.write_bytes(PEM_B)
    new.replace(bundle)  # a rotation: a new inode under the same path
    assert trust.upstream_cas(bundle) == PEM_B
    bundle.write_bytes(PEM_B + PEM_B)  # rewritten in place: size and mtime change
    os.utime(bundle, ns=(1, 1))
    assert trust.upstream_cas(bundle) == PEM_B + PEM_B
    bundle.unlink()
    assert trust.upstream_cas(bundle) == b""


def _certifi(root: Path, where: str) -> None:
    path = root / where / "certifi" / "cacert.pem"
    path.parent.mkdir(parents=True)
    path.write_bytes(PEM_B)


def test_certifi_paths_are_found_once_per_set_of_layers(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    _certifi(rootfs, "usr/lib/python3.11/dist-packages")
    layers = [tmp_path / "layer-a", tmp_path / "layer-b"]
    first = trust.certifi_of(rootfs, layers)
    assert first == ["/usr/lib/python3.11/dist-packages/certifi/cacert.pem"]
    _certifi(rootfs, "usr/local/lib/python3.11/site-packages")
    # Same layers under a fresh upper layer: the same view, not searched again.
    assert trust.certifi_of(rootfs, layers) == first
    # A rootfs with an upper layer of its own (a restore) is searched every time.
    assert trust.certifi_of(rootfs, None) == [
        "/usr/lib/python3.11/dist-packages/certifi/cacert.pem",
        "/usr/local/lib/python3.11/site-packages/certifi/cacert.pem",
    ]
    # Other layers: searched.
    assert len(trust.certifi_of(rootfs, layers[:1])) == 2


def test_seccomp_profile_is_a_copy_of_its_own() -> None:
    mine = seccomp_profile("x86_64")
    mine["syscalls"].clear()
    mine["defaultAction"] = "SCMP_ACT_ALLOW"
    again = seccomp_profile("x86_64")
    assert again["defaultAction"] == "SCMP_ACT_ERRNO"
    assert again["syscalls"]
