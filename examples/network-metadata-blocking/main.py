"""Cookbook: the cloud metadata service (169.254.169.254) is refused under every policy.

The platform floor (link-local, private and other non-public ranges) applies before any user
policy, so no policy can open it: not an open sandbox, not a domain allow-list, and not even
a policy that lists `169.254.169.254/32` or `169.254.0.0/16` in `allow_out`. A lab name that
resolves to the metadata address (metadata.lab) gets its address stripped from the answer.
Each sandbox also runs a positive control (a lab host its policy allows) so a broken network
cannot pass for a blocked one.

Run against a declawd server:  DECLAW_DOMAIN=localhost:8080 DECLAW_API_KEY=... python main.py
"""

from __future__ import annotations

import sys

from declaw import ALL_TRAFFIC, NetworkPolicy, Sandbox, SecurityPolicy

# (label, allow_out, deny_out, positive-control host); None = no policy (open internet)
POLICIES: list[tuple[str, list[str] | None, list[str] | None, str]] = [
    ("open", None, None, "evil.com"),
    ("domains_deny_all", ["api.openai.com", "metadata.lab"], [ALL_TRAFFIC], "api.openai.com"),
    ("cidr_allows_metadata", ["169.254.169.254/32", "203.0.113.10/32"], [], "203.0.113.10"),
    (
        "cidr_allows_linklocal_deny_all",
        ["169.254.0.0/16", "203.0.113.10/32"],
        [ALL_TRAFFIC],
        "203.0.113.10",
    ),
]

PROBE = r"""
import socket, sys, urllib.request

def tcp(host, port):
    try:
        socket.create_connection((host, port), timeout=5).close()
        return "REACH"
    except Exception as e:
        return f"BLOCKED: {type(e).__name__}: {e}"

def url(u):
    try:
        urllib.request.urlopen(u, timeout=5).read()
        return "REACH"
    except Exception as e:
        return f"BLOCKED: {type(e).__name__}: {e}"

print("l4_metadata=" + tcp("169.254.169.254", 80))
print("l7_metadata=" + url("http://169.254.169.254/latest/meta-data/"))
print("dns_metadata_name=" + tcp("metadata.lab", 80))
print("control_allowed_host=" + tcp(sys.argv[1], 443))
"""

EXPECT = {
    "l4_metadata": "BLOCKED: ConnectionRefusedError",
    "l7_metadata": "BLOCKED: URLError",
    "dns_metadata_name": "BLOCKED:",
    "control_allowed_host": "REACH",
}


def run_one(
    allow: list[str] | None, deny: list[str] | None, control: str
) -> tuple[dict[str, str], str]:
    security = None
    if allow is not None or deny is not None:
        security = SecurityPolicy(network=NetworkPolicy(allow_out=allow or [], deny_out=deny or []))
    sbx = Sandbox.create(template="python", timeout=120, security=security)
    try:
        sbx.files.write("/tmp/probe.py", PROBE)
        result = sbx.commands.run(f"python3 /tmp/probe.py {control}", timeout=60)
    finally:
        sbx.kill()
    lines = result.stdout.splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line), result.stderr


def main() -> int:
    ok = True
    for label, allow, deny, control in POLICIES:
        results, stderr = run_one(allow, deny, control)
        print(f"policy {label}: allow_out={allow} deny_out={deny} (control: {control})")
        for name, expected in EXPECT.items():
            got = results.get(name, f"MISSING (stderr: {stderr.strip()[-200:]})")
            print(f"  {name + ':':<22}{got}")
            ok = ok and got.startswith(expected)
        print()
    print(f"VERDICT  : {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
