"""The two upstreams without root: what each gives the gateway and every sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from declawd.config import Settings
from declawd.egress import network
from declawd.egress.network import HostUpstream
from declawd.errors import Unavailable
from declawd.lab.ca import ca_bundle_path
from declawd.lab.upstream import LabUpstream
from declawd.upstream import Upstream, choose_upstream


def _settings(tmp_path: Path, *, lab: bool) -> Settings:
    return Settings(state_dir=tmp_path, instance="dcunit", lab=lab)


def test_choose_upstream_follows_the_lab_setting(tmp_path: Path) -> None:
    lab: Upstream = choose_upstream(_settings(tmp_path, lab=True))
    host: Upstream = choose_upstream(_settings(tmp_path, lab=False))
    assert isinstance(lab, LabUpstream) and (lab.name, lab.uplink) == ("lab", "lab0")
    assert isinstance(host, HostUpstream) and (host.name, host.uplink) == ("host", "host0")


def test_lab_upstream_is_verified_against_the_lab_ca(tmp_path: Path) -> None:
    settings = _settings(tmp_path, lab=True)
    up = LabUpstream(settings)
    # The gateway verifies against it; each sandbox's own bundle starts with it.
    assert up.ca_bundle() == ca_bundle_path(settings)
    assert up.dns_server() == "198.51.100.53"


def test_host_upstream_is_verified_against_the_system_store(tmp_path: Path) -> None:
    up = HostUpstream(_settings(tmp_path, lab=False))
    assert up.ca_bundle() is None
    assert up.host_if == "dcunit-up"


def test_host_upstream_uses_the_first_resolver_reachable_from_the_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# local stub first\nnameserver 127.0.0.53\nnameserver 192.0.2.9\n")
    monkeypatch.setattr(network, "RESOLV_CONF", resolv)
    assert HostUpstream(_settings(tmp_path, lab=False)).dns_server() == "192.0.2.9"


@pytest.mark.parametrize("content", ["nameserver 127.0.0.53\n", None])
def test_host_upstream_without_a_usable_resolver_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str | None
) -> None:
    resolv = tmp_path / "resolv.conf"
    if content is not None:
        resolv.write_text(content)
    monkeypatch.setattr(network, "RESOLV_CONF", resolv)
    with pytest.raises(Unavailable, match="no upstream DNS server"):
        HostUpstream(_settings(tmp_path, lab=False)).dns_server()
