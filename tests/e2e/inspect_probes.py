"""In-sandbox scripts of the content-inspection e2e tests (test_inspection*.py).

`PROBE` is written to /tmp/insp.py and run as `python3 /tmp/insp.py '<expr>'`: it prints
the expression's value as JSON (client calls answer `{"status", "version", "text"}` or
`{"error"}`). `NODE_FETCH` is the node `fetch` client, for the `node` template.
"""

PROBE = r"""
import base64, json, os, socket, ssl, subprocess, sys, tempfile, time
import urllib.error, urllib.request

BODY = json.dumps({"msg": "hello-out", "ask": "pong-in"})
JSON = {"Content-Type": "application/json"}

def _err(e):
    return {"error": type(e).__name__ + ": " + str(e)[:300]}

def curl(url, http="1.1", data=BODY, ctype="application/json", extra=()):
    out = tempfile.mktemp()
    args = ["curl", "-sS", "--max-time", "60", "-o", out, "-w", "%{http_code} %{http_version}"]
    args.append("--http1.1" if http == "1.1" else "--http2")
    if data is not None:
        args += ["-X", "POST", "-H", "Content-Type: " + ctype, "--data-binary", data]
    p = subprocess.run(args + list(extra) + [url], capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": "curl exit %d: %s" % (p.returncode, p.stderr.strip()[:300]),
                "exit": p.returncode}
    code, version = p.stdout.split()
    with open(out, encoding="utf-8", errors="replace") as f:
        return {"status": int(code), "version": version, "text": f.read()}

def urllib_post(url, data=BODY, ctype="application/json", headers=None):
    req = urllib.request.Request(url, data=data.encode(), method="POST",
                                 headers={"Content-Type": ctype, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return {"status": r.status, "version": "1.1" if r.version == 11 else str(r.version),
                    "text": r.read().decode()}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "version": "", "text": e.read().decode(errors="replace")}
    except Exception as e:
        return _err(e)

def requests_post(url):
    import requests
    try:
        r = requests.post(url, data=BODY, headers=JSON, timeout=60)
    except Exception as e:
        return _err(e)
    return {"status": r.status_code, "version": "%d.%d" % divmod(r.raw.version, 10),
            "text": r.text}

def httpx_post(url, http2=False):
    import httpx
    try:
        with httpx.Client(http2=http2, timeout=60) as c:
            r = c.post(url, content=BODY, headers=JSON)
    except Exception as e:
        return _err(e)
    return {"status": r.status_code, "version": r.http_version.removeprefix("HTTP/"),
            "text": r.text}

def post(client, url):
    if client == "curl-h1":
        return curl(url, "1.1")
    if client == "curl-h2":
        return curl(url, "2")
    if client == "urllib":
        return urllib_post(url)
    if client == "requests":
        return requests_post(url)
    if client == "httpx":
        return httpx_post(url)
    if client == "httpx-h2":
        return httpx_post(url, http2=True)
    raise ValueError(client)

def httpx_h2_concurrent(url, n):
    # n requests multiplexed as concurrent streams (after one warm-up on the same client)
    import asyncio, httpx
    async def run():
        async with httpx.AsyncClient(http2=True, timeout=60) as c:
            await c.post(url + "&i=warm", content=BODY, headers=JSON)
            rs = await asyncio.gather(*[c.post(url + "&i=%d" % i, content=BODY, headers=JSON)
                                        for i in range(n)])
        return [{"status": r.status_code, "version": r.http_version, "text": r.text} for r in rs]
    try:
        return asyncio.run(run())
    except Exception as e:
        return _err(e)

def openai_chat(stream, prompt, model="gpt-4o-mini"):
    from openai import OpenAI
    client = OpenAI(base_url="https://api.openai.com/v1", api_key="sk-x", max_retries=0,
                    timeout=60)
    msgs = [{"role": "user", "content": prompt}]
    try:
        if not stream:
            r = client.chat.completions.create(model=model, messages=msgs)
            m = r.choices[0].message
            return {"role": m.role, "content": m.content, "object": r.object}
        pieces = []
        for chunk in client.chat.completions.create(model=model, messages=msgs,
                                                    stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
        return {"pieces": pieces}
    except Exception as e:
        out = _err(e)
        resp = getattr(e, "response", None)
        if resp is not None:  # the refusal's body: {"error": code, "reason": ...}
            out["body"] = resp.text
        return out

def tls_peer(host, addr=None, port=443):
    # the certificate the sandbox is shown for `host`, verified with the default trust store
    ctx = ssl.create_default_context()
    try:
        with socket.create_connection((addr or host, port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as s:
                issuer = {k: v for rdn in s.getpeercert()["issuer"] for k, v in rdn}
                der = s.getpeercert(binary_form=True)
                return {"issuer": issuer, "der": base64.b64encode(der).decode()}
    except Exception as e:
        return _err(e)

def raw_tls(host, request_b64, addr=None, port=443):
    # exact request bytes over TLS (the request must say Connection: close)
    ctx = ssl.create_default_context()
    try:
        with socket.create_connection((addr or host, port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as s:
                s.sendall(base64.b64decode(request_b64))
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
    except Exception as e:
        return _err(e)
    head, _, body = data.partition(b"\r\n\r\n")
    return {"head": head.decode(errors="replace"), "body": body.decode(errors="replace")}

def tcp(host, port, payload=None, timeout=5):
    try:
        s = socket.create_connection((host, port), timeout=timeout)
    except Exception as e:
        return type(e).__name__
    try:
        if payload is not None:
            s.sendall(payload)
            data = s.recv(200)
            return "DATA:" + data.decode(errors="replace") if data else "EOF"
        return "CONNECTED"
    except Exception as e:
        return type(e).__name__
    finally:
        s.close()

def udp(host, port, timeout=2):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(b"ping", (host, port))
        return "DATA:" + s.recvfrom(100)[0].decode()
    except Exception as e:
        return type(e).__name__
    finally:
        s.close()

print(json.dumps(eval(sys.argv[1])))
"""

# node fetch (the `node` template has no python): prints {"status", "text"} or {"error"}.
NODE_FETCH = r"""
const url = process.argv[2];
try {
  const r = await fetch(url, {method: "POST", headers: {"content-type": "application/json"},
                             body: JSON.stringify({msg: "hello-out", ask: "pong-in"})});
  console.log(JSON.stringify({status: r.status, version: "", text: await r.text()}));
} catch (e) {
  console.log(JSON.stringify({error: String(e) + " " + String(e.cause)}));
}
"""
