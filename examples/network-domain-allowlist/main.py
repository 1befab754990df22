"""Cookbook: a domain allow-list with a wildcard, several domains, HTTP and HTTPS.

A `python` sandbox may reach api.openai.com, api.github.com and anything under example.org
(`*.example.org` matches a.example.org and b.c.example.org, at any depth), over HTTP and
HTTPS; everything else is denied (`deny_out=[ALL_TRAFFIC]`). Names that are not listed
(evil.com, example.com, raw.githubusercontent.com) must fail, and so must the literal
address of an allowed host when this sandbox never resolved it through DNS.

Run against a declawd server:  DECLAW_DOMAIN=localhost:8080 DECLAW_API_KEY=... python main.py
"""

from __future__ import annotations

import sys

from declaw import ALL_TRAFFIC, NetworkPolicy, Sandbox, SecurityPolicy

ALLOW = ["api.openai.com", "api.github.com", "*.example.org"]

PROBE = r"""
import socket, urllib.request

def url(u):
    try:
        with urllib.request.urlopen(u, timeout=5) as r:
            return f"REACH ({r.status})"
    except Exception as e:
        return f"BLOCKED: {type(e).__name__}: {e}"

def tcp(host, port=443):
    try:
        socket.create_connection((host, port), timeout=5).close()
        return "REACH"
    except Exception as e:
        return f"BLOCKED: {type(e).__name__}: {e}"

# Literal address first: api.github.com's address is only admitted once this sandbox has
# resolved the name, so this probe runs before any lookup of api.github.com.
print("l4_github_ip_unresolved=" + tcp("203.0.113.30"))
print("https_openai=" + url("https://api.openai.com/"))
print("http_openai=" + url("http://api.openai.com/"))
print("https_github=" + url("https://api.github.com/"))
print("http_wildcard=" + url("http://a.example.org/"))
print("https_wildcard_deep=" + url("https://b.c.example.org/"))
print("https_evil=" + url("https://evil.com/"))
print("http_evil=" + url("http://evil.com/"))
print("https_unlisted_sibling=" + url("https://example.com/"))
print("https_unlisted_raw_github=" + url("https://raw.githubusercontent.com/"))
print("l4_cloudflare_dns=" + tcp("1.1.1.1"))
"""

EXPECT = {
    "l4_github_ip_unresolved": "BLOCKED: ConnectionRefusedError",
    "https_openai": "REACH",
    "http_openai": "REACH",
    "https_github": "REACH",
    "http_wildcard": "REACH",
    "https_wildcard_deep": "REACH",
    "https_evil": "BLOCKED: URLError",
    "http_evil": "BLOCKED: URLError",
    "https_unlisted_sibling": "BLOCKED: URLError",
    "https_unlisted_raw_github": "BLOCKED: URLError",
    "l4_cloudflare_dns": "BLOCKED: ConnectionRefusedError",
}


def main() -> int:
    policy = SecurityPolicy(network=NetworkPolicy(allow_out=ALLOW, deny_out=[ALL_TRAFFIC]))
    sbx = Sandbox.create(template="python", timeout=120, security=policy)
    try:
        sbx.files.write("/tmp/probe.py", PROBE)
        result = sbx.commands.run("python3 /tmp/probe.py", timeout=120)
    finally:
        sbx.kill()
    results = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    print(f"policy   : allow_out={ALLOW} deny_out=[ALL_TRAFFIC]")
    print()
    ok = True
    width = max(len(n) for n in EXPECT) + 2
    for name, expected in EXPECT.items():
        got = results.get(name, f"MISSING (stderr: {result.stderr.strip()[-200:]})")
        print(f"{name + ':':<{width}}{got}")
        ok = ok and got.startswith(expected)
    print()
    print(f"VERDICT  : {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
