"""What the ports route forwards to a sandbox's server, and what it lets back (pure).

Invariants, both directions. Toward the sandbox: no credential of ours is forwarded (the
API key in `X-API-Key`, `Authorization` when it carried our key, the dashboard's
`declawd_*` cookies, the traffic token header and the `token` query parameter), hop-by-hop
headers are dropped, and `X-Forwarded-Prefix`/`-Proto`/`-Host`/`-For` say where the app
is published (client-sent values of the first three are replaced, not trusted). Toward the
client: every response carries `Content-Security-Policy: sandbox allow-scripts allow-forms
allow-popups`, so a page from a sandbox runs in an opaque origin and cannot act as the
user on the API's origin; it cannot set or clear cookies outside its own prefix either
(`Set-Cookie` is scoped under the prefix, `declawd_*` and `__Host-` cookies and
`Clear-Site-Data` are dropped), and redirects to absolute paths stay under the prefix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from declawd.errors import InvalidInput

Headers = list[tuple[bytes, bytes]]  # ASGI's shape: lowercase names, raw values

CSP = b"sandbox allow-scripts allow-forms allow-popups"
TOKEN_HEADER = "x-declaw-traffic-token"
TOKEN_QUERY = "token"
# The dashboard's session cookie is `declawd_session`; the whole prefix is ours.
RESERVED_COOKIE_PREFIX = "declawd_"
PORT_PLACEHOLDER = "${PORT}"
MAX_PORT = 65535

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Set by us toward the sandbox; a client's own values are not passed on.
_OURS_UPSTREAM = frozenset(
    {
        b"host",
        b"content-length",
        b"expect",
        b"x-api-key",
        TOKEN_HEADER.encode(),
        b"x-forwarded-prefix",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    }
)
# What a sandbox's response may not say on the API's origin.
_DROPPED_DOWNSTREAM = frozenset(
    {
        b"date",  # the server adds its own
        b"clear-site-data",  # would sign the user out of the dashboard
        b"strict-transport-security",  # a policy for the whole host, not the sandbox's
    }
)
_WEBSOCKET_HANDSHAKE = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-protocol",
        b"sec-websocket-extensions",
        b"sec-websocket-accept",
    }
)
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]{2,45}\]")


def parse_port(raw: str) -> int:
    """The port of the route: 1..65535, digits only (400 naming `port` otherwise)."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 5 or not 1 <= int(raw) <= MAX_PORT:
        raise InvalidInput("port", f"must be an integer from 1 to {MAX_PORT}, not {raw!r}")
    return int(raw)


def route_prefix(sandbox_id: str, port: int) -> str:
    """Where the sandbox's port is published: what `X-Forwarded-Prefix` says."""
    return f"/sandboxes/{sandbox_id}/ports/{port}"


def validate_mask(value: object, field: str) -> str:
    """A `mask_request_host`: a host[:port], where `${PORT}` may stand for the port."""
    if not isinstance(value, str):
        raise InvalidInput(field, "must be a string")
    if not _is_host(value.replace(PORT_PLACEHOLDER, "1")):
        raise InvalidInput(
            field, f"must be a host[:port] (with {PORT_PLACEHOLDER} for the port), not {value!r}"
        )
    return value


def _is_host(value: str) -> bool:
    """host[:port]: a DNS name or IPv4 address (labels of 1..63), or a bracketed IPv6."""
    if not value or len(value) > 255:
        return False
    host, sep, port = value.rpartition(":") if not value.endswith("]") else ("", "", "")
    if sep and not (port.isascii() and port.isdigit() and 1 <= int(port) <= MAX_PORT):
        return False
    host = host if sep else value
    if host.startswith("["):
        return _IPV6.fullmatch(host) is not None
    labels = host.removesuffix(".").split(".")
    return all(_LABEL.fullmatch(label) for label in labels)


def masked_host(mask: str, port: int) -> str:
    return mask.replace(PORT_PLACEHOLDER, str(port))


def upstream_target(raw_path: bytes, query_string: bytes) -> bytes:
    """The request target for the sandbox's server: the path after the route's prefix, as
    the client encoded it, and the query without our `token` parameter."""
    parts = raw_path.split(b"/", 5)  # "", "sandboxes", id, "ports", port, rest
    target = b"/" + (parts[5] if len(parts) == 6 else b"")
    query = strip_token(query_string)
    return target + b"?" + query if query else target


def strip_token(query_string: bytes) -> bytes:
    """The query without any `token` parameter (ours, whatever its value), else as sent."""
    kept = [
        pair
        for pair in query_string.split(b"&")
        if pair and unquote_plus(pair.split(b"=", 1)[0].decode("latin-1")) != TOKEN_QUERY
    ]
    return b"&".join(kept)


def bearer_of(value: str) -> str:
    """The credential of an `Authorization: Bearer ...` header, '' for any other scheme."""
    return value[7:].strip() if value[:7].lower() == "bearer " else ""


def without_reserved_cookies(value: bytes) -> bytes:
    """A `Cookie` header without the dashboard's cookies (b'' when nothing is left)."""
    kept = []
    for part in value.split(b";"):
        name = part.split(b"=", 1)[0].strip().decode("latin-1")
        if part.strip() and not name.lower().startswith(RESERVED_COOKIE_PREFIX):
            kept.append(part.strip())
    return b"; ".join(kept)


@dataclass(frozen=True)
class Forwarding:
    """How one request reached us, and how it is published to the sandbox's server."""

    prefix: str  # /sandboxes/{id}/ports/{port}
    scheme: str  # the client's: http or https (ws/wss are named by their HTTP scheme)
    host: str  # the Host the client sent (our address as it knows it)
    client: str | None  # the client's address
    upstream_host: str  # the Host sent to the sandbox's server (mask_request_host or `host`)
    strip_authorization: bool  # the Authorization header carried our API key


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Headers named in `Connection:` are hop-by-hop too (RFC 9110 §7.6.1)."""
    out: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            out.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return out


def request_headers(headers: Headers, fwd: Forwarding, *, websocket: bool = False) -> Headers:
    """The client's headers as the sandbox's server gets them (no Host for a WebSocket:
    wsproto writes it, from `fwd.upstream_host`). Framing headers are the caller's."""
    hop = HOP_BY_HOP | _connection_tokens(headers)
    out: Headers = []
    forwarded_for: list[bytes] = []
    for raw_name, value in headers:
        name = raw_name.lower()
        if name in hop or name in _OURS_UPSTREAM:
            continue
        if websocket and name in _WEBSOCKET_HANDSHAKE:
            continue
        if name == b"authorization" and fwd.strip_authorization:
            continue
        if name == b"x-forwarded-for":
            forwarded_for.append(value.strip())
            continue
        if name == b"cookie":
            value = without_reserved_cookies(value)
            if not value:
                continue
        out.append((name, value))
    if fwd.client:
        forwarded_for.append(fwd.client.encode())
    if not websocket:
        out.insert(0, (b"host", fwd.upstream_host.encode()))
    out += [
        (b"x-forwarded-prefix", fwd.prefix.encode()),
        (b"x-forwarded-proto", fwd.scheme.encode()),
        (b"x-forwarded-host", fwd.host.encode()),
    ]
    if forwarded_for:
        out.append((b"x-forwarded-for", b", ".join(v for v in forwarded_for if v)))
    return out


def response_headers(headers: Iterable[tuple[bytes, bytes]], fwd: Forwarding) -> Headers:
    """The sandbox server's response headers as the client gets them, CSP added."""
    headers = list(headers)
    hop = HOP_BY_HOP | _connection_tokens(headers)
    out: Headers = []
    for raw_name, value in headers:
        name = raw_name.lower()
        if name in hop or name in _DROPPED_DOWNSTREAM:
            continue
        if name == b"set-cookie":
            scoped = scoped_cookie(value, fwd.prefix)
            if scoped is not None:
                out.append((name, scoped))
            continue
        if name in (b"location", b"content-location"):
            value = rewrite_location(value.decode("latin-1"), fwd).encode("latin-1")
        out.append((name, value))
    # Appended even when the app sent its own: every CSP header applies, so ours holds.
    out.append((b"content-security-policy", CSP))
    return out


def scoped_cookie(value: bytes, prefix: str) -> bytes | None:
    """A `Set-Cookie` confined to the sandbox's port: Path under `prefix`, no Domain; None
    for a cookie that would be ours (`declawd_*`) or claims the whole origin (`__Host-`)."""
    parts = [p.strip() for p in value.decode("latin-1").split(";")]
    name = parts[0].split("=", 1)[0].strip()
    if name.lower().startswith(RESERVED_COOKIE_PREFIX) or name.startswith("__Host-"):
        return None
    attrs = [parts[0]]
    path = ""
    for attr in parts[1:]:
        key = attr.split("=", 1)[0].strip().lower()
        if key == "domain" or not attr:
            continue
        if key == "path":
            path = attr.split("=", 1)[1].strip() if "=" in attr else ""
            continue
        attrs.append(attr)
    attrs.insert(1, "Path=" + under_prefix(path if path.startswith("/") else "/", prefix))
    return "; ".join(attrs).encode("latin-1")


def under_prefix(path: str, prefix: str) -> str:
    """`path` (absolute) published under `prefix`, unless it already is (an app that
    honours X-Forwarded-Prefix builds its URLs with it)."""
    if path == prefix or path.startswith((prefix + "/", prefix + "?", prefix + "#")):
        return path
    return prefix + path


def rewrite_location(value: str, fwd: Forwarding) -> str:
    """A redirect target the client can follow: an absolute path, or an absolute URL on
    the host the app was sent, is moved under the prefix; anything else is left alone."""
    if value.startswith("/") and not value.startswith("//"):
        return under_prefix(value, fwd.prefix)
    try:
        url = urlsplit(value)
    except ValueError:
        return value
    if url.scheme in ("http", "https") and url.netloc.lower() in (
        fwd.upstream_host.lower(),
        fwd.host.lower(),
    ):
        path = under_prefix(url.path or "/", fwd.prefix)
        return urlunsplit((fwd.scheme, fwd.host, path, url.query, url.fragment))
    return value
