"""OCI spec building: capabilities, namespaces, limits, mounts and the seccomp profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from declawd.runtime import FORBIDDEN_CAPABILITIES, ROOT_CAPABILITIES, Limits, Mount, build_spec
from declawd.runtime.spec import MASKED_PATHS, READONLY_PATHS, seccomp_profile

EXPECTED_CAPS = {
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_SETFCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
}


def spec(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "sandbox_id": "sbx-0123456789ab",
        "rootfs": Path("/var/lib/declawd/sandboxes/sbx-0123456789ab/rootfs"),
        "hostname": "sbx-0123456789ab",
        "args": ["/opt/declawd/envd"],
        "env": ["PATH=/usr/bin:/bin"],
        "netns_path": "/var/run/netns/declawd-sbx-0123456789ab",
        "limits": Limits(memory_mb=512, cpu_count=1.5, pids=256),
        "mounts": [Mount("/opt/declawd/envd", "/var/lib/declawd/bin/envd")],
        "cgroups_path": "/declawd/sbx-0123456789ab",
        "runtime": "runc",
        "nofile": 65536,
    }
    args.update(overrides)
    return build_spec(**args)


def test_process_is_root_with_exactly_the_container_capability_set() -> None:
    process = spec()["process"]
    assert process["user"] == {"uid": 0, "gid": 0}
    assert process["cwd"] == "/"
    assert process["noNewPrivileges"] is True
    caps = process["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        assert set(caps[kind]) == EXPECTED_CAPS
        assert not set(caps[kind]) & FORBIDDEN_CAPABILITIES
    assert caps["inheritable"] == []
    assert caps["ambient"] == []
    assert set(ROOT_CAPABILITIES) == EXPECTED_CAPS


def test_nofile_rlimit_is_set() -> None:
    assert spec()["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 65536, "soft": 65536}]


def test_default_nofile_never_exceeds_this_process_hard_limit() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    (rlimit,) = spec(nofile=None)["process"]["rlimits"]
    assert rlimit["hard"] <= 65536
    if hard != resource.RLIM_INFINITY:
        assert rlimit["hard"] <= hard


def test_private_namespaces_and_the_sandbox_netns() -> None:
    namespaces = spec()["linux"]["namespaces"]
    assert {ns["type"] for ns in namespaces} == {
        "pid",
        "mount",
        "uts",
        "ipc",
        "cgroup",
        "network",
    }
    (net,) = [ns for ns in namespaces if ns["type"] == "network"]
    assert net["path"] == "/var/run/netns/declawd-sbx-0123456789ab"
    assert all("path" not in ns for ns in namespaces if ns["type"] != "network")


def test_host_network_when_netns_path_is_none() -> None:
    namespaces = spec(netns_path=None)["linux"]["namespaces"]
    assert "network" not in {ns["type"] for ns in namespaces}
    assert {"pid", "mount", "uts", "ipc", "cgroup"} <= {ns["type"] for ns in namespaces}


def test_root_is_the_writable_overlay_and_hostname_is_set() -> None:
    s = spec()
    assert s["ociVersion"] == "1.0.2"
    assert s["root"] == {
        "path": "/var/lib/declawd/sandboxes/sbx-0123456789ab/rootfs",
        "readonly": False,
    }
    assert s["hostname"] == "sbx-0123456789ab"
    assert s["process"]["args"] == ["/opt/declawd/envd"]
    assert s["process"]["env"] == ["PATH=/usr/bin:/bin"]


def test_standard_mounts_come_first_then_the_callers() -> None:
    extra = Mount("/run/declawd", "/var/lib/declawd/sandboxes/x/envd", options=["rbind", "rw"])
    mounts = spec(mounts=[Mount("/opt/declawd/envd", "/bin/envd"), extra])["mounts"]
    assert [m["destination"] for m in mounts] == [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
        "/opt/declawd/envd",
        "/run/declawd",
    ]
    by_dest = {m["destination"]: m for m in mounts}
    assert "ro" in by_dest["/sys"]["options"]
    assert "ro" in by_dest["/sys/fs/cgroup"]["options"]
    assert any(o.startswith("size=") for o in by_dest["/dev/shm"]["options"])
    assert by_dest["/opt/declawd/envd"]["type"] == "bind"
    assert by_dest["/run/declawd"]["options"] == ["rbind", "rw"]


def test_bind_mounts_default_to_read_only() -> None:
    m = Mount("/x", "/host/x")
    assert m.type == "bind"
    assert "ro" in m.options
    assert "rw" not in m.options


def test_masked_and_readonly_paths_are_runc_defaults() -> None:
    linux = spec()["linux"]
    assert linux["maskedPaths"] == list(MASKED_PATHS)
    assert "/proc/kcore" in linux["maskedPaths"]
    assert linux["readonlyPaths"] == list(READONLY_PATHS)
    assert "/proc/sys" in linux["readonlyPaths"]


def test_resources_follow_limits() -> None:
    linux = spec(limits=Limits(memory_mb=512, cpu_count=1.5, pids=256))["linux"]
    res = linux["resources"]
    assert res["memory"] == {"limit": 512 * 1024 * 1024, "swap": 512 * 1024 * 1024}
    assert res["pids"] == {"limit": 256}
    assert res["cpu"]["period"] == 100_000
    assert res["cpu"]["quota"] == 150_000
    assert res["cpu"]["shares"] == 1536
    assert res["devices"][0] == {"allow": False, "access": "rwm"}
    allowed = {(d["major"], d.get("minor")) for d in res["devices"][1:]}
    assert (1, 3) in allowed  # /dev/null
    assert linux["cgroupsPath"] == "/declawd/sbx-0123456789ab"


@pytest.mark.parametrize(
    "limits",
    [
        {"memory_mb": 0, "cpu_count": 1, "pids": 1},
        {"memory_mb": 1, "cpu_count": 0, "pids": 1},
        {"memory_mb": 1, "cpu_count": 1, "pids": 0},
    ],
)
def test_limits_must_be_positive(limits: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Limits(**limits)


def test_unknown_runtime_and_empty_args_are_rejected() -> None:
    with pytest.raises(ValueError, match="runtime"):
        spec(runtime="crun")
    with pytest.raises(ValueError, match="args"):
        spec(args=[])


def test_runc_gets_seccomp_and_runsc_does_not() -> None:
    assert spec(runtime="runc")["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert "seccomp" not in spec(runtime="runsc")["linux"]


# Seccomp profile semantics ---------------------------------------------------------


def _allowed(profile: dict[str, Any], name: str, arg0: int | None = None) -> bool:
    """Evaluate the profile for one syscall with an optional first argument."""
    for rule in profile["syscalls"]:
        if name not in rule["names"] or rule["action"] != "SCMP_ACT_ALLOW":
            continue
        ok = True
        for cond in rule.get("args", []):
            assert cond["index"] == 0
            if arg0 is None:
                ok = False
                break
            value, op = cond["value"], cond["op"]
            ok = {
                "SCMP_CMP_EQ": arg0 == value,
                "SCMP_CMP_NE": arg0 != value,
                "SCMP_CMP_LT": arg0 < value,
                "SCMP_CMP_GT": arg0 > value,
                "SCMP_CMP_MASKED_EQ": (arg0 & value) == cond.get("valueTwo", 0),
            }[op]
            if not ok:
                break
        if ok:
            return True
    return False


@pytest.fixture(scope="module")
def profile() -> dict[str, Any]:
    return seccomp_profile("x86_64")


def test_profile_defaults_to_errno_with_an_allowlist(profile: dict[str, Any]) -> None:
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["architectures"][0] == "SCMP_ARCH_X86_64"
    for name in ("read", "write", "execve", "openat", "connect", "fork", "chroot", "arch_prctl"):
        assert _allowed(profile, name), name


@pytest.mark.parametrize(
    "name",
    [
        "unshare",
        "setns",
        "mount",
        "umount2",
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "ptrace",
        "process_vm_readv",
        "kexec_load",
        "kexec_file_load",
        "open_by_handle_at",
        "perf_event_open",
        "init_module",
        "finit_module",
        "reboot",
        "swapon",
        "userfaultfd",
        "io_uring_setup",
        "pivot_root",
        "clock_settime",
    ],
)
def test_profile_denies_privileged_syscalls(profile: dict[str, Any], name: str) -> None:
    assert not _allowed(profile, name)
    assert not _allowed(profile, name, 0)


def test_socket_allows_every_family_but_packet_and_vsock(profile: dict[str, Any]) -> None:
    for family in range(0, 64):
        assert _allowed(profile, "socket", family) == (family not in (17, 40)), family


def test_clone_allows_threads_but_no_new_namespaces(profile: dict[str, Any]) -> None:
    clone_thread = 0x3D0F00  # glibc pthread_create flags
    assert _allowed(profile, "clone", clone_thread)
    assert _allowed(profile, "clone", 0x11)  # fork: SIGCHLD
    for flag in (0x20000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000, 0x2000000):
        assert not _allowed(profile, "clone", 0x11 | flag), hex(flag)
    (clone3,) = [r for r in profile["syscalls"] if r["names"] == ["clone3"]]
    assert clone3["action"] == "SCMP_ACT_ERRNO"
    assert clone3["errnoRet"] == 38  # ENOSYS: libc falls back to clone(2)


def test_personality_only_allows_harmless_values(profile: dict[str, Any]) -> None:
    assert _allowed(profile, "personality", 0)
    assert _allowed(profile, "personality", 0xFFFFFFFF)
    assert not _allowed(profile, "personality", 0x0040000)  # ADDR_NO_RANDOMIZE


def test_profile_for_an_unknown_arch_is_an_error() -> None:
    with pytest.raises(ValueError, match="seccomp"):
        seccomp_profile("sparc")
