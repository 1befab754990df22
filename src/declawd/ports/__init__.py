"""Ports into sandboxes: the reverse proxy behind `/sandboxes/{id}/ports/{port}/...`.

`headers` is the pure part (what is forwarded and rewritten, both ways), `upstream` opens the
connection inside the sandbox's network namespace and speaks HTTP/1.1 over it (h11), and
`websocket` bridges a WebSocket to a server in the sandbox (wsproto). The route and its
authentication are in declawd.api.ports; docs/ports.md is the user's page.
"""
