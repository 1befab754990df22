"""Cookbook: a web app inside a sandbox, opened from the host with a shareable URL.

A `python` sandbox serves a small site with `python3 -m http.server 8080`. The host
fetches it through `sbx.get_host(8080)`, authenticated by the sandbox's own traffic access
token in the query (`?token=...`, a URL one can hand to a browser without the API key),
and checks: the page is what the sandbox wrote, a missing page is the app's own 404, the
response carries the sandbox CSP (the page runs in an opaque origin), and without any
credential the route refuses with 401. The verdict is computed from those answers.

Run against a declawd server:  DECLAW_DOMAIN=localhost:8080 DECLAW_API_KEY=... python main.py
"""

from __future__ import annotations

import sys
import time

import httpx
from declaw import Sandbox

PAGE = "<!doctype html><title>hello</title><h1>Served from a sandbox</h1>\n"
CSP = "sandbox allow-scripts allow-forms allow-popups"


def main() -> int:
    sbx = Sandbox.create(template="python", timeout=300)
    try:
        sbx.files.write("/tmp/site/index.html", PAGE)
        sbx.commands.run(
            "python3 -m http.server 8080 --directory /tmp/site", background=True, timeout=None
        )
        base = sbx.get_host(8080)
        token = sbx.traffic_access_token or ""
        deadline = time.monotonic() + 30
        while (page := httpx.get(f"{base}/?token={token}", timeout=10)).status_code == 502:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        missing = httpx.get(f"{base}/nope.html", params={"token": token}, timeout=10)
        anonymous = httpx.get(f"{base}/", timeout=10)
    finally:
        sbx.kill()
    checks = {
        "page": (f"{page.status_code} {page.text == PAGE}", "200 True"),
        "csp": (page.headers.get("content-security-policy", "MISSING"), CSP),
        "missing": (str(missing.status_code), "404"),
        "anonymous": (str(anonymous.status_code), "401"),
    }
    print(f"url      : {base}/?token=<traffic_access_token>")
    ok = True
    for name, (got, want) in checks.items():
        print(f"{name + ':':<10}{got}")
        ok = ok and got == want
    print()
    print(f"VERDICT  : {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
