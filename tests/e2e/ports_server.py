"""The server the ports tests run inside a sandbox (stdlib only: the python template's).

`python3 ports_server.py PORT ADDRESS` serves, over HTTP/1.1:
  GET  /echo...   JSON {method, path, headers} of the request as it arrived
  POST /up        JSON {length, sha256} of the body (Content-Length or chunked)
  GET  /big/N     N bytes of the repeating 0..255 pattern
  GET  /sse       three events one second apart, each saying when it was written
  GET  /ws        (Upgrade: websocket) echoes text as "echo:<text>", bytes reversed
"""

import base64
import hashlib
import json
import struct
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
BLOCK = bytes(range(256)) * 256


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def body(self):
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            digest, length = hashlib.sha256(), 0
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return digest.hexdigest(), length
                left = size
                while left:
                    chunk = self.rfile.read(min(left, 1 << 20))
                    digest.update(chunk)
                    left -= len(chunk)
                length += size
                self.rfile.read(2)
        digest, left = hashlib.sha256(), int(self.headers.get("content-length") or 0)
        length = left
        while left:
            chunk = self.rfile.read(min(left, 1 << 20))
            digest.update(chunk)
            left -= len(chunk)
        return digest.hexdigest(), length

    def send_json(self, obj, status=200):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        sha, length = self.body()
        self.send_json({"length": length, "sha256": sha})

    def do_GET(self):
        if self.headers.get("upgrade", "").lower() == "websocket":
            return self.websocket()
        if self.path.startswith("/big/"):
            size = int(self.path[5:])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            for start in range(0, size, len(BLOCK)):
                self.wfile.write(BLOCK[: size - start])
            return
        if self.path == "/sse":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            for n in range(3):
                self.wfile.write(f"data: {n} {time.time()}\n\n".encode())
                self.wfile.flush()
                time.sleep(1)
            self.close_connection = True
            return
        self.send_json(
            {
                "method": self.command,
                "path": self.path,
                "headers": [[k.lower(), v] for k, v in self.headers.items()],
            }
        )

    def frame(self, opcode, payload):
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([n])
        elif n < 1 << 16:
            head += bytes([126]) + struct.pack(">H", n)
        else:
            head += bytes([127]) + struct.pack(">Q", n)
        self.wfile.write(head + payload)
        self.wfile.flush()

    def websocket(self):
        key = self.headers["sec-websocket-key"]
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode, n = head[0] & 0x0F, head[1] & 0x7F
            if n == 126:
                n = struct.unpack(">H", self.rfile.read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
            if opcode == 8:
                self.frame(8, data[:2])
                return
            if opcode == 9:
                self.frame(10, data)
            elif opcode == 1:
                self.frame(1, b"echo:" + data)
            elif opcode == 2:
                self.frame(2, data[::-1])


if __name__ == "__main__":
    ThreadingHTTPServer((sys.argv[2], int(sys.argv[1])), Handler).serve_forever()
