"""Seed scenario: L4 egress enforcement with a domain allow-list.

A `python` sandbox may reach api.openai.com and nothing else. Inside it, raw TCP to
evil.com and to 1.1.1.1 must be refused by the kernel (ConnectionRefusedError), urllib to
https://evil.com must fail, and raw TCP to api.openai.com:443 must connect.

Run against a declawd server:  DECLAW_DOMAIN=localhost:8080 DECLAW_API_KEY=... python main.py
"""

from __future__ import annotations

import sys

from declaw import ALL_TRAFFIC, NetworkPolicy, Sandbox, SecurityPolicy

PROBE = r"""
import socket, urllib.request

def tcp(host, port=443):
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.close()
        return "REACH"
    except Exception as e:
        return f"BLOCKED: {type(e).__name__}: {e}"

def url(u):
    try:
        urllib.request.urlopen(u, timeout=5).read()
        return "REACH"
    except Exception as e:
        return f"BLOCKED: {type(e).__name__}: {e}"

print("l4_evil_com=" + tcp("evil.com"))
print("l4_cloudflare_dns=" + tcp("1.1.1.1"))
print("l7_evil_com=" + url("https://evil.com"))
print("l4_allowed_openai=" + tcp("api.openai.com"))
"""

EXPECT = {
    "l4_evil_com": "BLOCKED: ConnectionRefusedError",
    "l4_cloudflare_dns": "BLOCKED: ConnectionRefusedError",
    "l7_evil_com": "BLOCKED: URLError",
    "l4_allowed_openai": "REACH",
}


def main() -> int:
    policy = SecurityPolicy(
        network=NetworkPolicy(allow_out=["api.openai.com"], deny_out=[ALL_TRAFFIC])
    )
    sbx = Sandbox.create(template="python", timeout=120, security=policy)
    try:
        sbx.files.write("/tmp/probe.py", PROBE)
        result = sbx.commands.run("python3 /tmp/probe.py", timeout=60)
    finally:
        sbx.kill()
    results = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    ok = True
    for name, expected in EXPECT.items():
        got = results.get(name, f"MISSING (stderr: {result.stderr.strip()[-200:]})")
        print(f"{name + ':':<19}{got}")
        ok = ok and got.startswith(expected)
    print()
    print(f"VERDICT  : {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
