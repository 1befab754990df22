"""SniProxy behind a real nftables REDIRECT, reading SO_ORIGINAL_DST, in two throw-away netns.

Topology: client netns (10.250.77.2) --veth-- proxy netns (10.250.77.1) where 203.0.113.10 is
a local address serving HTTP (80) and a banner (25), and `redirect to :15001` catches TCP to
it. Nothing is routed anywhere else; both namespaces are deleted afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(60),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, nftables)"),
]

REPO = Path(__file__).resolve().parents[2]
PY = str(REPO / ".venv/bin/python")
PREFIX = f"dtpx{os.getpid() % 100000}"
CLIENT_NS, GW_NS = f"{PREFIX}-c", f"{PREFIX}-g"
GW_IP, CLIENT_IP, LAB_IP = "10.250.77.1", "10.250.77.2", "203.0.113.10"

GATEWAY = textwrap.dedent(
    f"""
    import asyncio, json, sys
    from declawd.egress.policy import EgressPolicy
    from declawd.egress.proxy import SandboxView, SniProxy
    from declawd.egress.resolved import ResolvedNames

    SBX = "sbx-00000000beef"

    async def http(reader, writer):
        try:
            while await reader.readuntil(b"\\r\\n\\r\\n"):
                writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
                await writer.drain()
        except Exception:
            pass
        writer.close()

    async def banner(reader, writer):
        writer.write(b"220 lab smtp\\r\\n")
        await writer.drain()
        await reader.read()
        writer.close()

    async def main():
        resolved = ResolvedNames()
        resolved.record(SBX, "api.openai.com", ["{LAB_IP}"], 300)
        view = SandboxView(SBX, EgressPolicy.parse(["api.openai.com"], ["0.0.0.0/0"]))
        emit = lambda e: print(json.dumps(e), flush=True)
        proxy = SniProxy(lookup=lambda ip: view if ip == "{CLIENT_IP}" else None,
                         resolved=resolved, audit=emit, peek_timeout=0.5)
        await asyncio.start_server(http, "{LAB_IP}", 80)
        await asyncio.start_server(banner, "{LAB_IP}", 25)
        await proxy.start("0.0.0.0", 15001)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await proxy.stop()

    asyncio.run(main())
    """
)

PROBE = textwrap.dedent(
    """
    import socket, sys
    host, port, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode().decode("unicode_escape").encode("latin-1")
    try:
        s = socket.create_connection((host, port), timeout=5)
        if payload:
            s.sendall(payload)
        data = s.recv(200)
        print("DATA " + data.decode("latin-1").splitlines()[0] if data else "EOF")
    except Exception as exc:
        print("ERR " + type(exc).__name__)
    """
)


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def cleanup() -> None:
    for ns in (CLIENT_NS, GW_NS):
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[str]]:
    subprocess.run(["/work/shared/tools/egress-guard"], check=True, capture_output=True)
    cleanup()
    proc: subprocess.Popen[str] | None = None
    try:
        sh("ip", "netns", "add", CLIENT_NS)
        sh("ip", "netns", "add", GW_NS)
        sh("ip", "-n", GW_NS, "link", "add", "px0", "type", "veth", "peer", "name", "eth0",
           "netns", CLIENT_NS)  # fmt: skip
        sh("ip", "-n", GW_NS, "addr", "add", f"{GW_IP}/30", "dev", "px0")
        sh("ip", "-n", GW_NS, "addr", "add", f"{LAB_IP}/32", "dev", "lo")
        sh("ip", "-n", GW_NS, "link", "set", "lo", "up")
        sh("ip", "-n", GW_NS, "link", "set", "px0", "up")
        sh("ip", "-n", CLIENT_NS, "addr", "add", f"{CLIENT_IP}/30", "dev", "eth0")
        sh("ip", "-n", CLIENT_NS, "link", "set", "lo", "up")
        sh("ip", "-n", CLIENT_NS, "link", "set", "eth0", "up")
        sh("ip", "-n", CLIENT_NS, "route", "add", "default", "via", GW_IP)
        rules = (
            "table ip pxtest {\n chain pre {\n type nat hook prerouting priority dstnat;\n"
            f'iifname "px0" ip daddr {LAB_IP} tcp dport {{ 25, 80, 443 }} redirect to :15001\n'
            "}\n}\n"
        )
        subprocess.run(
            ["ip", "netns", "exec", GW_NS, "nft", "-f", "-"], input=rules, text=True, check=True
        )
        script = tmp_path_factory.mktemp("gw") / "gateway.py"
        script.write_text(GATEWAY)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", GW_NS, PY, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        cleanup()


def probe(host: str, port: int, payload: str = "") -> str:
    out = subprocess.run(
        ["ip", "netns", "exec", CLIENT_NS, sys.executable, "-c", PROBE, host, str(port), payload],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return out.stdout.strip()


def next_event(gw: subprocess.Popen[str]) -> dict[str, object]:
    assert gw.stdout is not None
    return dict(json.loads(gw.stdout.readline()))


def test_redirected_http_to_allowed_host_reaches_the_server(gateway: subprocess.Popen[str]) -> None:
    assert (
        probe(LAB_IP, 80, r"GET / HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
        == "DATA HTTP/1.1 200 OK"
    )
    event = next_event(gateway)
    assert (event["verdict"], event["reason"], event["address"], event["port"]) == (
        "allow", "host_allowed", LAB_IP, 80,
    )  # fmt: skip


def test_redirected_http_to_denied_host_is_reset(gateway: subprocess.Popen[str]) -> None:
    assert (
        probe(LAB_IP, 80, r"GET / HTTP/1.1\r\nHost: evil.com\r\n\r\n") == "ERR ConnectionResetError"
    )
    assert next_event(gateway)["reason"] == "host_not_allowed"


def test_server_first_protocol_passes_after_the_peek_window(gateway: subprocess.Popen[str]) -> None:
    assert probe(LAB_IP, 25) == "DATA 220 lab smtp"
    assert next_event(gateway)["reason"] == "opaque_resolved"


def test_connection_straight_to_the_proxy_port_is_reset(gateway: subprocess.Popen[str]) -> None:
    assert probe(GW_IP, 15001, "x") == "ERR ConnectionResetError"
    assert next_event(gateway)["reason"] == "proxy_address"
