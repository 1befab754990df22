"""Benchmark: persistence (pause/resume, snapshot, restore, volumes), each against a baseline.

Per runtime, through the official SDK: `pause()` and `resume()` p50 against a
`commands.run("true")` round trip on the same sandbox, interleaved; `snapshot()` of a
sandbox with 100 MiB of random data written, against `cp -a --sparse=always` of its
writable layer on the host into the same filesystem, fsynced as the snapshot's blob is;
`Sandbox.restore(id, snapshot_id)` of a killed sandbox p50 against a plain `Sandbox.create`
of the same template, interleaved. Once (runc): `Volumes.create` from a tar.gz and
`Volumes.download` in MiB/s against `files.write` / `files.read` of the same bytes.
A section whose feature fails is reported and skipped.
Usage: .venv/bin/python bench/bench_persistence.py [--quick]
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from common import Report, header, pct, summary
from declaw import Sandbox, Volumes
from harness import Server, run_standalone

from declawd.runtime import RuntimeName

RUNTIMES: tuple[RuntimeName, ...] = ("runc", "runsc")
SNAPSHOT_DATA_MIB = 100
DATA_FILE = "/home/user/data.bin"
MiB = 1 << 20


def _ms(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def _create(runtime: str, timeout: int = 900) -> Sandbox:
    return Sandbox.create(template="base", timeout=timeout, metadata={"declaw.runtime": runtime})


def _run_true(s: Sandbox) -> None:
    r = s.commands.run("true")
    if r.exit_code != 0:
        raise RuntimeError(f"true exited {r.exit_code}")


def pause_resume(report: Report, runtime: str, n: int) -> None:
    s = _create(runtime)
    try:
        for _ in range(3):  # warm: connection pool, the runtime's pause path
            _run_true(s)
            s.pause()
            s.resume()
        true_ms, pause_ms, resume_ms = [], [], []
        for _ in range(n):
            true_ms.append(_ms(lambda: _run_true(s)))
            pause_ms.append(_ms(s.pause))
            resume_ms.append(_ms(s.resume))
        _run_true(s)  # processes run again after the last resume
    finally:
        s.kill(wait=True)
    label = f"{runtime}: "
    base = "SDK run(true) round trip"
    report.samples[label + base + " ms"] = summary(true_ms)
    for what, samples in (("pause", pause_ms), ("resume", resume_ms)):
        report.samples[f"{label}{what} ms"] = summary(samples)
        report.add(
            f"{label}{what}() p50 ms", pct(samples, 50), pct(true_ms, 50), "ms", base, "goal <= 5x"
        )


def _upper(server: Server, sandbox_id: str) -> Path:
    return server.state_dir / "sandboxes" / sandbox_id / "disk" / "upper"


def _cp_sparse_ms(src: Path, scratch: Path) -> float:
    """`cp -a --sparse=always` of the upper dir, then fsync of every copied file: the
    snapshot fsyncs its blob before it answers, so the baseline is as durable."""
    dest = scratch / "upper"
    shutil.rmtree(dest, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run(["cp", "-a", "--sparse=always", str(src), str(dest)], check=True)
    for path in dest.rglob("*"):
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    elapsed = (time.perf_counter() - t) * 1000
    shutil.rmtree(dest, ignore_errors=True)
    return elapsed


def snapshot_100mib(report: Report, server: Server, runtime: str, reps: int) -> None:
    s = _create(runtime)
    scratch = server.state_dir / "bench-cp"
    scratch.mkdir(parents=True, exist_ok=True)
    captured: list[dict[str, Any]] = []
    try:
        r = s.commands.run(
            f"head -c {SNAPSHOT_DATA_MIB}M /dev/urandom > {DATA_FILE} && sync", timeout=300
        )
        if r.exit_code != 0:
            raise RuntimeError(f"writing the data failed: {r.stderr[-500:]}")
        upper = _upper(server, s.sandbox_id)
        if not (upper / DATA_FILE.lstrip("/")).is_file():
            raise RuntimeError(f"{DATA_FILE} is not in the writable layer {upper}")
        snap_ms, cp_ms = [], []
        for _ in range(reps):
            cp_ms.append(_cp_sparse_ms(upper, scratch))
            t = time.perf_counter()
            snap = s.snapshot(request_timeout=600)
            snap_ms.append((time.perf_counter() - t) * 1000)
            captured.append(
                {
                    "mem_size_bytes": snap.mem_size_bytes,
                    "memory captured": bool(snap.vmstate_blob_key),
                    "pause_duration_ms": snap.pause_duration_ms,
                }
            )
            s.delete_snapshot(snap.snapshot_id)
    finally:
        s.kill(wait=True)
        shutil.rmtree(scratch, ignore_errors=True)
    label = f"{runtime}: "
    report.samples[label + "snapshot ms"] = summary(snap_ms)
    report.samples[label + "cp --sparse=always ms"] = summary(cp_ms)
    report.extra[label + "snapshots"] = captured
    report.add(
        f"{label}snapshot() of {SNAPSHOT_DATA_MIB} MiB written, p50 ms",
        pct(snap_ms, 50),
        pct(cp_ms, 50),
        "ms",
        "cp -a --sparse=always + fsync",
        "memory captured" if captured and captured[0]["memory captured"] else "filesystem only",
    )


def restore_vs_create(report: Report, runtime: str, n: int) -> None:
    s = _create(runtime, timeout=300)
    sandbox_id = s.sandbox_id
    try:
        s.files.write("/home/user/marker.txt", "restored\n")
        snap = s.snapshot(request_timeout=600)
    finally:
        s.kill(wait=True)
    create_ms, restore_ms = [], []
    back = s
    for i in range(n + 1):  # the first round warms both paths and is not counted
        t = time.perf_counter()
        fresh = _create(runtime, timeout=300)
        c = (time.perf_counter() - t) * 1000
        fresh.kill(wait=True)
        t = time.perf_counter()
        back = Sandbox.restore(sandbox_id, snapshot_id=snap.snapshot_id, request_timeout=600)
        r = (time.perf_counter() - t) * 1000
        try:
            if i == 0 and back.files.read("/home/user/marker.txt") != "restored\n":
                raise RuntimeError("the restored sandbox lacks the snapshot's file")
        finally:
            back.kill(wait=True)
        if i:
            create_ms.append(c)
            restore_ms.append(r)
    # Snapshots outlive their sandbox: delete this one by the (killed) sandbox's id.
    back.delete_snapshot(snap.snapshot_id)
    label = f"{runtime}: "
    report.samples[label + "restore ms"] = summary(restore_ms)
    report.samples[label + "create ms"] = summary(create_ms)
    report.add(
        f"{label}restore() p50 ms",
        pct(restore_ms, 50),
        pct(create_ms, 50),
        "ms",
        "Sandbox.create same template",
        "goal <= 2x",
    )


def _tar_gz(payload: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("data.bin")
        info.size = len(payload)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def volumes_vs_files(report: Report, mib: int, reps: int) -> None:
    blob = _tar_gz(os.urandom(mib * MiB))  # random: gzip cannot shrink it
    size_mib = len(blob) / MiB
    up, down, write, read = [], [], [], []
    s = _create("runc")
    try:
        for i in range(reps):
            t = time.perf_counter()
            vol = Volumes.create(f"bench-{os.getpid()}-{i}", blob, request_timeout=600)
            up.append(size_mib / (time.perf_counter() - t))
            try:
                t = time.perf_counter()
                got = Volumes.download(vol.volume_id, request_timeout=600)
                down.append(len(got) / MiB / (time.perf_counter() - t))
                if len(got) < len(blob) // 2:
                    raise RuntimeError(f"download has {len(got)} bytes of {len(blob)}")
            finally:
                Volumes.delete(vol.volume_id)
            path = f"/home/user/blob-{i}.tar.gz"
            t = time.perf_counter()
            s.files.write(path, blob, request_timeout=600)
            write.append(size_mib / (time.perf_counter() - t))
            t = time.perf_counter()
            back = s.files.read(path, format="bytes", request_timeout=600)
            read.append(size_mib / (time.perf_counter() - t))
            if len(back) != len(blob):
                raise RuntimeError(f"files.read gave {len(back)} bytes of {len(blob)}")
            s.files.remove(path)
    finally:
        s.kill(wait=True)
    for name, samples in (
        ("Volumes.create", up),
        ("Volumes.download", down),
        ("files.write", write),
        ("files.read", read),
    ):
        report.samples[f"{name} MiB/s"] = summary(samples)
    report.add(
        f"Volumes.create of a {size_mib:.0f} MiB tar.gz, p50",
        pct(up, 50),
        pct(write, 50),
        "MiB/s",
        "files.write same bytes",
    )
    report.add(
        "Volumes.download of it, p50",
        pct(down, 50),
        pct(read, 50),
        "MiB/s",
        "files.read same bytes",
    )


def main(server: Server, quick: bool) -> Report:
    n = 10 if quick else 30
    reps = 1 if quick else 5
    restores = 3 if quick else 10
    vol_mib = 16 if quick else 64
    report = Report(
        "persistence",
        params={
            "pause_resume_n": n,
            "snapshot_reps": reps,
            "snapshot_data_mib": SNAPSHOT_DATA_MIB,
            "restore_n": restores,
            "volume_mib": vol_mib,
            "template": "base",
            "runtimes": list(RUNTIMES),
        },
    )
    header(f"persistence: pause/resume ({n}), snapshot ({reps}), restore ({restores}), volumes")
    failed: list[str] = []

    def section(name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            traceback.print_exc()
            failed.append(f"{name}: {type(exc).__name__}: {exc}"[:300])

    for runtime in RUNTIMES:
        section(f"{runtime} pause/resume", partial(pause_resume, report, runtime, n))
        section(f"{runtime} snapshot", partial(snapshot_100mib, report, server, runtime, reps))
        section(f"{runtime} restore", partial(restore_vs_create, report, runtime, restores))
    section("volumes", partial(volumes_vs_files, report, vol_mib, reps))
    report.extra["not measured"] = failed
    report.write()
    if failed:
        raise RuntimeError("persistence: not measured: " + "; ".join(failed))
    return report


if __name__ == "__main__":
    run_standalone(main)
