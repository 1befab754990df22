"""What the proxy's unit tests share: a replay driver with a fake clock around the sans-IO
connection machine, real ClientHellos, certificates (trustme) and a small fake HTTP layer."""

from __future__ import annotations

import contextlib
import ssl
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

import trustme

from declawd.egress.policy import EgressPolicy
from declawd.egress.proxy import Connection, Interception, SandboxView
from declawd.egress.proxy import commands as cmd
from declawd.egress.resolved import ResolvedNames
from declawd.inspect import model
from declawd.inspect.model import InspectContext, InspectionPolicy, TransformRule

SBX = "sbx-0123456789ab"
OPENAI = "203.0.113.10"
OTHER = "203.0.113.20"
UNRESOLVED = "203.0.113.30"
POLICY = EgressPolicy.parse(["api.openai.com", "*.example.org"], ["0.0.0.0/0"])
TRANSFORM = InspectionPolicy(transformations=(TransformRule("secret", "[x]"),))
ALPN = ["h2", "http/1.1"]


def resolved_names() -> ResolvedNames:
    resolved = ResolvedNames()
    resolved.record(SBX, "api.openai.com", [OPENAI], 300)
    resolved.record(SBX, "other.example.org", [OTHER], 300)
    return resolved


def client_hello(server_hostname: str | None, alpn: list[str] | None = None) -> bytes:
    """A ClientHello as Python's ssl module writes it (one record)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=server_hostname)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()  # stops at once: it waits for the ServerHello
    return out.read()


def as_records(hello: bytes, size: int) -> bytes:
    """The same handshake message re-cut into TLS records of `size` bytes."""
    body = hello[5:]
    return b"".join(
        b"\x16\x03\x01" + struct.pack("!H", len(body[i : i + size])) + body[i : i + size]
        for i in range(0, len(body), size)
    )


# Certificates -------------------------------------------------------------------------


class Leaves:
    """`leaf_contexts` for tests: one sandbox CA, a leaf per host, ALPN h2 + http/1.1."""

    def __init__(self, ca: trustme.CA) -> None:
        self.ca = ca
        self.asked: list[tuple[str, str]] = []

    def server_context(self, sandbox_id: str, host: str) -> ssl.SSLContext:
        self.asked.append((sandbox_id, host))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(host).configure_cert(ctx)
        ctx.set_alpn_protocols(ALPN)
        return ctx


def server_ctx(ca: trustme.CA, *hosts: str, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*hosts).configure_cert(ctx)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def client_ctx(ca: trustme.CA, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


# A fake HTTP layer ---------------------------------------------------------------------


@dataclass
class FakeLayer:
    """Byte-level stand-in for the real layer: upper-cases `hello` on the way out, passes
    responses, answers 502 (with the error) when there is no upstream."""

    context: InspectContext
    policy: InspectionPolicy
    seen_up: bytearray = field(default_factory=bytearray)
    seen_down: bytearray = field(default_factory=bytearray)
    eofs: list[str] = field(default_factory=list)

    def client_data(self, data: bytes) -> list[model.HttpCommand]:
        self.seen_up += data
        if self.context.upstream_proto is None:
            body = (self.context.upstream_error or "").encode()
            head = f"HTTP/1.1 502 Bad Gateway\r\nContent-Length: {len(body)}\r\n\r\n"
            return [model.ToClient(head.encode() + body), model.CloseClient()]
        audit = model.HttpAudit({"url": f"{self.context.scheme}://{self.context.host}/"})
        return [model.ToUpstream(data.replace(b"hello", b"HELLO")), audit]

    def upstream_data(self, data: bytes) -> list[model.HttpCommand]:
        self.seen_down += data
        return [model.ToClient(data)]

    def client_eof(self) -> list[model.HttpCommand]:
        self.eofs.append("client")
        return [model.CloseUpstream()] if self.context.upstream_proto else [model.CloseClient()]

    def upstream_eof(self) -> list[model.HttpCommand]:
        self.eofs.append("upstream")
        return [model.CloseClient()]


@dataclass
class LayerFactory:
    made: list[FakeLayer] = field(default_factory=list)

    def __call__(self, context: InspectContext, policy: InspectionPolicy) -> FakeLayer:
        layer = FakeLayer(context, policy)
        self.made.append(layer)
        return layer


# The replay driver ---------------------------------------------------------------------


@dataclass
class Replay:
    """One machine, its commands so far, and a fake clock for its one timer."""

    conn: Connection
    log: list[cmd.Command] = field(default_factory=list)
    now: float = 0.0
    deadline: tuple[str, float] | None = None
    views: dict[str, SandboxView | None] = field(default_factory=dict)  # "view": current

    @classmethod
    def of(
        cls,
        view: SandboxView | None = None,
        *,
        dst: tuple[str, int] = (OPENAI, 443),
        resolved: ResolvedNames | None = None,
        interception: Interception | None = None,
        peek_timeout: float = 2.0,
        handshake_timeout: float = 10.0,
    ) -> Replay:
        views: dict[str, SandboxView | None] = {"view": view or SandboxView(SBX, POLICY)}
        replay = cls(
            Connection(
                sandbox_id=SBX,
                dst_ip=dst[0],
                dst_port=dst[1],
                view=lambda: views["view"],
                resolved=resolved or resolved_names(),
                peek_timeout=peek_timeout,
                handshake_timeout=handshake_timeout,
                interception=interception,
            ),
            views=views,
        )
        replay._record(replay.conn.start())
        return replay

    def send(self, *events: cmd.Event) -> list[cmd.Command]:
        out: list[cmd.Command] = []
        for event in events:
            out += self._record(self.conn.handle(event))
        return out

    def advance(self, seconds: float) -> list[cmd.Command]:
        """Move the fake clock; fire the armed timer if its deadline passed."""
        self.now += seconds
        if self.deadline is not None and self.deadline[1] <= self.now + 1e-9:
            kind, self.deadline = self.deadline[0], None
            return self.send(cmd.TimerFired(kind))
        return []

    def _record(self, commands: list[cmd.Command]) -> list[cmd.Command]:
        for c in commands:
            if isinstance(c, cmd.ArmTimer):
                self.deadline = (c.kind, self.now + c.delay)
            elif isinstance(c, cmd.CancelTimer | cmd.CloseBoth | cmd.ResetBoth):
                self.deadline = None
        self.log += commands
        return commands

    # Reading the log ------------------------------------------------------------------

    def audits(self) -> list[tuple[str, str]]:
        return [
            ("allow" if c.verdict.allowed else "deny", c.verdict.reason)
            for c in self.log
            if isinstance(c, cmd.Audit)
        ]

    def upstream_bytes(self) -> bytes:
        return joined(self.log, cmd.SendUpstream)

    def client_bytes(self) -> bytes:
        return joined(self.log, cmd.SendClient)

    def dials(self) -> list[cmd.Dial]:
        return [c for c in self.log if isinstance(c, cmd.Dial)]


def joined(commands: Iterable[cmd.Command], kind: type[cmd.SendClient | cmd.SendUpstream]) -> bytes:
    return b"".join(c.data for c in commands if isinstance(c, kind))
