"""Cookbook: an MCP server inside a sandbox, called from the host through the ports route.

A `python` sandbox runs a small MCP server (Streamable HTTP transport: JSON-RPC over HTTP
POST at /mcp, stdlib only, one tool `add`) on port 50005, bound to the sandbox's own
loopback. The host waits until the port answers, then uses the `mcp` package's client
(`streamablehttp_client` + `ClientSession`) on `sbx.get_mcp_url()` with the API key:
initialize, list the tools, call `add(20, 22)`. The verdict is computed from the answers.

Run against a declawd server:  DECLAW_DOMAIN=localhost:8080 DECLAW_API_KEY=... python main.py
"""

from __future__ import annotations

import asyncio
import sys
import time

import httpx
from declaw import Sandbox
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

SERVER = r"""
import json
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SESSION = uuid.uuid4().hex
TOOLS = [{
    "name": "add",
    "description": "Add two integers.",
    "inputSchema": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
}]


class MCP(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, obj=None, headers=()):
        body = b"" if obj is None else json.dumps(obj).encode()
        self.send_response(status)
        if obj is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # no server-initiated stream: clients carry on without one
        self.reply(405, {"error": "this server sends no SSE stream"})

    def do_DELETE(self):  # the client ends its session
        self.reply(200 if self.headers.get("mcp-session-id") == SESSION else 404)

    def do_POST(self):
        if self.path.split("?")[0] != "/mcp":
            return self.reply(404, {"error": "not found"})
        msg = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
        if "id" not in msg:  # a notification (notifications/initialized)
            return self.reply(202)
        method, params, headers = msg.get("method"), msg.get("params") or {}, []
        if method == "initialize":
            headers = [("Mcp-Session-Id", SESSION)]
            result = {
                "protocolVersion": params.get("protocolVersion", "2025-03-26"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "sandbox-adder", "version": "1.0"},
            }
        elif self.headers.get("mcp-session-id") != SESSION:
            return self.reply(400, {"jsonrpc": "2.0", "id": msg["id"],
                                    "error": {"code": -32600, "message": "no session"}})
        elif method == "tools/list":
            result = {"tools": TOOLS}
        elif method == "tools/call" and params.get("name") == "add":
            args = params.get("arguments") or {}
            total = int(args["a"]) + int(args["b"])
            result = {"content": [{"type": "text", "text": str(total)}], "isError": False}
        elif method == "ping":
            result = {}
        else:
            return self.reply(200, {"jsonrpc": "2.0", "id": msg["id"],
                                    "error": {"code": -32601, "message": f"no method {method}"}})
        self.reply(200, {"jsonrpc": "2.0", "id": msg["id"], "result": result}, headers)


ThreadingHTTPServer(("127.0.0.1", 50005), MCP).serve_forever()
"""


def wait_until_listening(url: str, headers: dict[str, str], timeout: float = 30) -> float:
    """Seconds until the port answers: 502 means nothing listens on it yet."""
    started = time.monotonic()
    while True:
        status = httpx.get(url, headers=headers, timeout=10).status_code
        if status != 502:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"nothing listened at {url} after {timeout:g} s")
        time.sleep(0.2)


async def use_tools(url: str, headers: dict[str, str]) -> tuple[str, list[str], str]:
    async with (
        streamablehttp_client(url, headers=headers) as (read, write, _session_id),
        ClientSession(read, write) as session,
    ):
        init = await session.initialize()
        tools = await session.list_tools()
        result = await session.call_tool("add", {"a": 20, "b": 22})
        text = result.content[0].text if result.content else ""  # type: ignore[union-attr]
        return init.serverInfo.name, [t.name for t in tools.tools], text


def main() -> int:
    sbx = Sandbox.create(template="python", timeout=300)
    try:
        sbx.files.write("/tmp/mcp_server.py", SERVER)
        sbx.commands.run("python3 /tmp/mcp_server.py", background=True, timeout=None)
        headers = {"X-API-Key": sbx.connection_config.api_key}
        url = sbx.get_mcp_url()
        waited = wait_until_listening(url, headers)
        server, tools, answer = asyncio.run(use_tools(url, headers))
    finally:
        sbx.kill()
    print(f"mcp url  : {url}")
    print(f"ready in : {waited:.1f} s")
    print(f"server   : {server}")
    print(f"tools    : {tools}")
    print(f"add(20,22): {answer}")
    ok = server == "sandbox-adder" and tools == ["add"] and answer == "42"
    print()
    print(f"VERDICT  : {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
