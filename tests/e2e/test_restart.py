"""Fail-closed across crashes: kill -9 the API server, and kill -9 the gateway daemon.

A probe loop inside a locked-down sandbox records every attempt with its start and end
time, so the test can pick out exactly the attempts made while the server (or the
resolver + proxy) was dead and assert that none of the denied ones got through. After the
server's restart the same sandboxes are listed and usable, files are intact, a short sandbox
timeout set before the crash is still enforced, and nothing leaks once all are killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time

import pytest
from declaw import ALL_TRAFFIC, NetworkPolicy, Sandbox, SecurityPolicy
from declaw.exceptions import NotFoundError

from tests.e2e.leaks import OwnServer, eventually, wait_settled

pytestmark = pytest.mark.e2e

# Probes: `ip_denied` a literal denied address, `tcp_evil` a denied name, `dns_allowed` a raw
# DNS query for an allowed name, `tcp_allowed` the allowed name. One JSON line per attempt.
LOOP = r"""
import json, os, socket, struct, sys, time

NS = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")][0]

def tcp(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return "CONNECTED"
    except Exception as e:
        return type(e).__name__

def dns(name):
    q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    q += struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1)
    try:
        s.sendto(q, (NS, 53))
        data = s.recv(2048)
        an = struct.unpack(">H", data[6:8])[0]
        return "ANSWER" if an else "NOANSWER"
    except Exception as e:
        return type(e).__name__
    finally:
        s.close()

PROBES = {
    "ip_denied": lambda: tcp("203.0.113.66", 443),
    "tcp_evil": lambda: tcp("evil.com", 443),
    "dns_allowed": lambda: dns("api.openai.com"),
    "tcp_allowed": lambda: tcp("api.openai.com", 443),
}
out = open(sys.argv[1], "a", buffering=1)
end = time.time() + float(sys.argv[2])
only = sys.argv[3:]  # a subset of PROBES, for a tighter loop
while time.time() < end and not os.path.exists("/tmp/stop"):
    for kind, fn in PROBES.items():
        if only and kind not in only:
            continue
        t0 = time.time()
        r = fn()
        out.write(json.dumps({"kind": kind, "t0": t0, "t1": time.time(), "r": r}) + "\n")
    time.sleep(0.002 if only else 0.02)
"""


def _locked(own: OwnServer, runtime: str, timeout: int = 300) -> Sandbox:
    s = Sandbox.create(
        template="python",
        timeout=timeout,
        metadata={"declaw.runtime": runtime},
        security=SecurityPolicy(
            network=NetworkPolicy(allow_out=["api.openai.com"], deny_out=[ALL_TRAFFIC])
        ),
        **own.sdk_opts(),
    )
    s.files.write("/tmp/loop.py", LOOP)
    return s


def _kill_quietly(s: Sandbox) -> None:
    # The sandbox may be gone already (its timeout); a 404 then is the expected answer.
    with contextlib.suppress(NotFoundError):
        s.kill()


def _samples(s: Sandbox, path: str) -> list[dict]:
    return [json.loads(line) for line in s.files.read(path).splitlines() if line.strip()]


def _window(samples: list[dict], start: float, end: float) -> list[dict]:
    return [x for x in samples if x["t0"] >= start and x["t1"] <= end]


def _probe_once(s: Sandbox, expr: str) -> str:
    r = s.commands.run(
        'python3 -c \'import runpy,sys; sys.argv=["x","/dev/null","0"]; '
        f'g=runpy.run_path("/tmp/loop.py"); print(g["PROBES"]["{expr}"]())\'',
        timeout=30,
    )
    return r.stdout.strip()


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
def test_server_kill9_keeps_sandboxes_timeouts_and_rules(own: OwnServer, runtime: str) -> None:
    if own.proc is None or own.proc.poll() is not None:
        own.start()
    baseline = own.baseline()
    a = _locked(own, runtime)
    b = Sandbox.create(
        template="base", timeout=40, metadata={"declaw.runtime": runtime}, **own.sdk_opts()
    )
    try:
        a.files.write("/home/user/before.txt", "written before the crash")
        during = own.snapshot()
        print(f"\n[{runtime}] resources with 2 sandboxes: {during}")
        assert during["sandbox_netns"] == baseline["sandbox_netns"] + 2
        assert during["containers"] == baseline["containers"] + 2
        assert during["cgroups"] > baseline["cgroups"] and during["mounts"] > baseline["mounts"]
        a.commands.run("python3 /tmp/loop.py /tmp/probes.jsonl 600", background=True)
        streamed: list[str] = []
        errors: list[BaseException] = []

        def stream() -> None:
            try:
                a.commands.run_stream(
                    "for i in $(seq 1 600); do echo line$i; sleep 0.1; done",
                    on_stdout=streamed.append,
                )
            except BaseException as exc:  # the server dies under this stream
                errors.append(exc)

        t = threading.Thread(target=stream, daemon=True)
        t.start()
        assert eventually(lambda: len(streamed) >= 3, 60)
        t_kill = time.time()
        own.kill9()
        t.join(120)
        assert not t.is_alive() and errors, "the stream must end with an error, not hang"
        time.sleep(2)  # downtime during which the probe loop keeps probing
        own.start()
        t_back = time.time()
        print(f"[{runtime}] server down for {t_back - t_kill:.1f} s")

        listed = own.listed_ids()
        assert a.sandbox_id in listed
        b_end = b.get_info().end_at
        if b_end is not None and time.time() < b_end.timestamp() - 2:
            assert b.sandbox_id in listed
        a2 = Sandbox.connect(a.sandbox_id, **own.sdk_opts())
        assert a2.commands.run("echo after").stdout == "after\n"
        assert a2.files.read("/home/user/before.txt") == "written before the crash"
        a2.files.write("/home/user/after.txt", "ok")
        assert a2.files.read("/home/user/after.txt") == "ok"

        # The rules never left: during the downtime denied probes were refused and the
        # allowed name kept resolving and connecting.
        down = _window(_samples(a2, "/tmp/probes.jsonl"), t_kill, t_back)
        kinds = {x["kind"] for x in down}
        assert kinds == {"ip_denied", "tcp_evil", "dns_allowed", "tcp_allowed"}, down[:5]
        for x in down:
            if x["kind"] in ("ip_denied", "tcp_evil"):
                assert x["r"] == "ConnectionRefusedError", x
        assert any(x["r"] == "CONNECTED" for x in down if x["kind"] == "tcp_allowed")
        # and after the restart
        assert _probe_once(a2, "ip_denied") == "ConnectionRefusedError"
        assert _probe_once(a2, "tcp_evil") == "ConnectionRefusedError"
        assert _probe_once(a2, "tcp_allowed") == "CONNECTED"

        # b's short timeout, set before the crash, is still enforced by the new server
        assert eventually(lambda: b.sandbox_id not in own.listed_ids(), 180)
        with own.http() as h:
            assert h.get(f"/sandboxes/{b.sandbox_id}").status_code == 404
        a2.commands.run("touch /tmp/stop")
    finally:
        for s in (a, b):
            _kill_quietly(s)
    after = wait_settled(own.settings, baseline, None)
    assert after == baseline


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
def test_gateway_daemon_kill9_fails_closed_and_recovers(own: OwnServer, runtime: str) -> None:
    if own.proc is None or own.proc.poll() is not None:
        own.start()
    baseline = own.baseline()
    pid_path = own.settings.gateway_dir / "gateway.pid"
    s = _locked(own, runtime)
    try:
        assert _probe_once(s, "tcp_allowed") == "CONNECTED"
        s.commands.run("python3 /tmp/loop.py /tmp/gw.jsonl 600", background=True)
        s.commands.run("python3 /tmp/loop.py /tmp/dns.jsonl 600 dns_allowed", background=True)
        assert eventually(lambda: s.files.exists("/tmp/dns.jsonl"), 30)
        time.sleep(1)
        # Five outages: from the kill until the supervisor has spawned a new daemon (its
        # pid file is written before the new process can bind the resolver's port), so
        # every probe sent inside such a window met a dead resolver and proxy.
        windows: list[tuple[float, float]] = []
        for _ in range(5):
            old = int(pid_path.read_text())
            t_kill = time.time()
            os.kill(old, signal.SIGKILL)

            def new_pid(old: int = old) -> bool:
                try:
                    pid = int(pid_path.read_text())
                except (OSError, ValueError):
                    return False
                return pid != old and os.path.exists(f"/proc/{pid}")

            assert eventually(new_pid, 60, step=0.01), "the supervisor did not restart it"
            windows.append((t_kill, time.time()))
            assert eventually(lambda: _probe_once(s, "dns_allowed") == "ANSWER", 60)
        t_new = windows[-1][1]
        print(f"\n[{runtime}] outages: {[round(b - a, 2) for a, b in windows]} s")
        # allowed traffic resumes
        assert eventually(lambda: _probe_once(s, "tcp_allowed") == "CONNECTED", 60)
        # the in-sandbox loop itself sees answers again after the last outage
        assert eventually(
            lambda: any(
                x["r"] == "ANSWER" and x["t0"] > t_new for x in _samples(s, "/tmp/dns.jsonl")
            ),
            60,
        )
        s.commands.run("touch /tmp/stop")
        time.sleep(1)
        samples = _samples(s, "/tmp/gw.jsonl") + _samples(s, "/tmp/dns.jsonl")
        down = [x for x in samples if any(a <= x["t0"] <= b for a, b in windows)]
        print(f"[{runtime}] probes started during the outages: {len(down)}")
        assert any(x["kind"] == "dns_allowed" for x in down), "no DNS probe in the outages"
        for x in down:
            if x["kind"] == "dns_allowed":
                assert x["r"] != "ANSWER", x  # DNS fails closed rather than answering
        # nothing denied got through at any time
        assert all(x["r"] != "CONNECTED" for x in samples if x["kind"] in ("ip_denied", "tcp_evil"))
        assert any(x["r"] == "ANSWER" for x in samples if x["t0"] > t_new)
    finally:
        _kill_quietly(s)
    assert wait_settled(own.settings, baseline, None) == baseline
