"""DNS filtering for sandboxes, sans-IO: a query becomes a decision, an upstream reply a filtered one.

`decide_query` judges a client's raw query against the sandbox's EgressPolicy: answer locally
(REFUSED, sink, empty) or forward a fresh upstream query. `filter_answer` follows the CNAME
chain, strips floor addresses and returns what to admit; `pack_answer` writes such an answer
(also from the cache). Invariants: a denied name is never forwarded and never answered with
anything but the sink; only A/CNAME data reaches a sandbox. `FloodMeter` bounds each sandbox.
"""

from __future__ import annotations

import enum
import ipaddress
import itertools
import math
import re
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from dnslib import (
    CNAME,
    EDNS0,
    QTYPE,
    RCODE,
    RR,
    A,
    DNSHeader,
    DNSLabel,
    DNSRecord,
)
from dnslib.buffer import Buffer

from declawd.addresses import SINK_ADDRESS
from declawd.egress.policy import EgressPolicy, IPNetwork, is_non_public

SINK_TTL = 5
TTL_CAP = 3600  # never let a client cache longer than the datapath admits (clamp upper bound)
OUR_UDP_PAYLOAD = 1232
MAX_CNAME_CHAIN = 8
MAX_NAME = 253
MAX_LABEL = 63
# Hostname characters only: a label holding '.' or binary would match the policy as one name
# and resolve as another.
_LABEL_RE = re.compile(rb"[A-Za-z0-9_\-]+|\*")
_FORWARDED = {QTYPE.A, QTYPE.CNAME}
_HEADER = struct.Struct("!HHHHHH")  # id, flags, qd/an/ns/ar counts
_QUESTION_TAIL = struct.Struct("!HH")  # qtype, qclass
_OPT = b"\0" + struct.pack("!HHIH", QTYPE.OPT, OUR_UDP_PAYLOAD, 0, 0)  # root, no flags/data
_RR_HEAD = struct.Struct("!HHIH")  # type, class, TTL, rdata length
_REFUSED_TYPES = {QTYPE.AXFR, QTYPE.IXFR, QTYPE.ANY, 254}  # 254 = MAILA/MAILB family


class Action(enum.Enum):
    ANSWER = "answer"  # send `response` to the client now
    FORWARD = "forward"  # ask upstream, then `filter_answer`
    DROP = "drop"  # not a query we answer at all (garbage, or a response)


@dataclass(frozen=True)
class AuditNote:
    verdict: str  # "allow" | "deny"
    reason: str
    name: str
    addresses: tuple[str, ...] = ()


@dataclass
class QueryDecision:
    action: Action
    request: DNSRecord | None = None
    response: DNSRecord | None = None
    name: str = ""
    qtype: int = 0
    audit: AuditNote | None = None
    client_limit: int = 512


@dataclass
class FilteredAnswer:
    request: DNSRecord
    rcode: int
    admit: dict[str, float] = field(default_factory=dict)  # address -> TTL seconds
    names: list[str] = field(default_factory=list)  # queried name + CNAME chain
    ttl: float = 0.0
    audit: AuditNote | None = None

    @property
    def answer_ttl(self) -> int:
        return int(min(self.ttl, TTL_CAP))

    @property
    def response(self) -> DNSRecord:
        return build_answer(self.request, self.rcode, self.names, list(self.admit), self.answer_ttl)

    def wire(self, limit: int | None) -> bytes:
        """`encode(self.response, limit)`, packed directly."""
        return pack_answer(
            self.request, self.rcode, self.names, list(self.admit), self.answer_ttl, limit
        )


def _name_of(label: DNSLabel) -> str | None:
    """Normalised text form, or None if the wire name is not a hostname."""
    parts = label.label
    for part in parts:
        if len(part) > MAX_LABEL or not _LABEL_RE.fullmatch(part):
            return None
    return b".".join(parts).decode("ascii").lower()


def client_udp_limit(request: DNSRecord) -> int:
    """The client's UDP payload limit: 512 unless it advertised more with EDNS (capped)."""
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return max(512, min(int(rr.rclass), 4096))
    return 512


def _has_edns(request: DNSRecord) -> bool:
    return any(rr.rtype == QTYPE.OPT for rr in request.ar)


def make_response(request: DNSRecord, rcode: int = RCODE.NOERROR) -> DNSRecord:
    header = DNSHeader(id=request.header.id, qr=1, aa=0, ra=1, rd=request.header.rd, rcode=rcode)
    response = DNSRecord(header, q=request.q if request.questions else None)
    if _has_edns(request):
        response.add_ar(EDNS0(udp_len=OUR_UDP_PAYLOAD))
    return response


def _error_from_header(data: bytes, rcode: int) -> DNSRecord | None:
    """A bare error reply for a message we cannot parse, if it has a usable header."""
    if len(data) < 12:
        return None
    try:
        header = DNSHeader.parse(Buffer(data))
    except Exception:
        return None
    if header.qr:
        return None
    return DNSRecord(DNSHeader(id=header.id, qr=1, ra=1, rd=header.rd, rcode=rcode))


def decide_query(
    data: bytes, policy: EgressPolicy | None, *, rate_ok: bool = True
) -> QueryDecision:
    """Judge one raw client query. `policy` None means the source is not a known sandbox."""
    try:
        request = DNSRecord.parse(data)
    except Exception:
        # dnslib raises assorted errors on garbage; none may escape into the server loop.
        err = _error_from_header(data, RCODE.FORMERR)
        if err is None:
            return QueryDecision(Action.DROP)
        return QueryDecision(Action.ANSWER, response=err, audit=None)
    if request.header.qr:
        return QueryDecision(Action.DROP)
    limit = client_udp_limit(request)

    def answer(rcode: int, note: AuditNote | None, name: str = "", qtype: int = 0) -> QueryDecision:
        return QueryDecision(
            Action.ANSWER,
            request=request,
            response=make_response(request, rcode),
            name=name,
            qtype=qtype,
            audit=note,
            client_limit=limit,
        )

    if request.header.opcode != 0:
        return answer(RCODE.NOTIMP, None)
    if len(request.questions) != 1:
        return answer(RCODE.FORMERR, None)
    q = request.q
    name = _name_of(q.qname)
    qtype = int(q.qtype)
    if name is None:
        long_label = any(len(p) > MAX_LABEL for p in q.qname.label)
        rcode = RCODE.FORMERR if long_label else RCODE.REFUSED
        return answer(rcode, AuditNote("deny", "invalid_name", _printable(q.qname)), qtype=qtype)
    if policy is None:
        return answer(RCODE.REFUSED, None, name, qtype)
    if len(name) > MAX_NAME:
        return answer(RCODE.REFUSED, AuditNote("deny", "name_too_long", name[:MAX_NAME]), name)
    if not rate_ok:
        return answer(RCODE.REFUSED, AuditNote("deny", "rate_limited", name), name, qtype)
    if q.qclass != 1 or qtype in _REFUSED_TYPES:
        return answer(RCODE.REFUSED, AuditNote("deny", "qtype_blocked", name), name, qtype)
    if not name:
        return answer(RCODE.REFUSED, AuditNote("deny", "invalid_name", name), name, qtype)

    allowed = policy.name_allowed(name)
    if not allowed:
        decision = answer(RCODE.NOERROR, AuditNote("deny", "not_allowed", name), name, qtype)
        if qtype == QTYPE.A and decision.response is not None:
            decision.response.add_answer(RR(q.qname, QTYPE.A, ttl=SINK_TTL, rdata=A(SINK_ADDRESS)))
        return decision
    if qtype == QTYPE.AAAA:
        # IPv6 is blocked on this node: an empty answer makes clients use IPv4 at once.
        return answer(RCODE.NOERROR, AuditNote("allow", "ipv6_blocked", name), name, qtype)
    if qtype not in _FORWARDED:
        return answer(RCODE.NOERROR, AuditNote("deny", "qtype_blocked", name), name, qtype)
    return QueryDecision(
        Action.FORWARD, request=request, name=name, qtype=qtype, client_limit=limit
    )


def _printable(label: DNSLabel) -> str:
    text = b".".join(label.label).decode("ascii", errors="replace")
    return "".join(c if c.isprintable() else "?" for c in text)[:MAX_NAME]


def upstream_query(name: str, qtype: int, qid: int) -> bytes:
    """A fresh query for the upstream: only the question, nothing the client sent besides.

    Packed by hand (it is on every forwarded query's path; dnslib takes 20 times as long):
    header with RD, one question, one OPT record announcing OUR_UDP_PAYLOAD. `name` is a
    hostname `decide_query` validated (labels of [A-Za-z0-9_-], 63 bytes at most).
    """
    labels = [label for label in name.encode("ascii").split(b".") if label]
    qname = b"".join(bytes([len(label)]) + label for label in labels) + b"\0"
    header = _HEADER.pack(qid, 0x0100, 1, 0, 0, 1)
    return header + qname + _QUESTION_TAIL.pack(qtype, 1) + _OPT


def parse_upstream(data: bytes, qid: int, name: str, qtype: int) -> DNSRecord | None:
    """The upstream reply if it answers exactly our query (id + question), else None."""
    try:
        reply = DNSRecord.parse(data)
    except Exception:
        return None
    if not reply.header.qr or reply.header.id != qid or len(reply.questions) != 1:
        return None
    q = reply.q
    if q.qtype != qtype or q.qclass != 1 or _name_of(q.qname) != name:
        return None
    return reply


def filter_answer(
    decision: QueryDecision,
    reply: DNSRecord,
    *,
    extra_ranges: Sequence[IPNetwork] = (),
    exempt: Sequence[IPNetwork] = (),
) -> FilteredAnswer:
    """Build the client's answer from a matching upstream reply (see `parse_upstream`)."""
    request = decision.request
    assert request is not None
    name = decision.name
    rcode = reply.header.rcode
    if rcode not in (RCODE.NOERROR, RCODE.NXDOMAIN):
        return FilteredAnswer(
            request,
            RCODE.SERVFAIL,
            names=[name],
            audit=AuditNote("allow", "upstream_error", name),
        )
    chain = [name]
    ttls: list[int] = []
    seen = {name}
    current = name
    for _ in range(MAX_CNAME_CHAIN):
        link = next(
            (rr for rr in reply.rr if rr.rtype == QTYPE.CNAME and _name_of(rr.rname) == current),
            None,
        )
        if link is None:
            break
        target = _name_of(link.rdata.label)
        if target is None or target in seen or len(target) > MAX_NAME:
            break
        ttls.append(link.ttl)
        chain.append(target)
        seen.add(target)
        current = target

    kept: list[str] = []
    stripped: list[str] = []
    a_ttls: list[int] = []
    if decision.qtype == QTYPE.A:
        for rr in reply.rr:
            if rr.rtype != QTYPE.A or _name_of(rr.rname) not in seen:
                continue
            address = str(rr.rdata)
            try:
                ipaddress.IPv4Address(address)
            except ValueError:
                continue
            if is_non_public(address, extra_ranges, exempt=exempt):
                stripped.append(address)
            elif address not in kept:
                kept.append(address)
                a_ttls.append(rr.ttl)
    ttl = min(ttls + a_ttls, default=0)
    reason = "non_public_stripped" if stripped else "allowed"
    note = AuditNote("allow", reason, name, tuple(kept) + tuple(f"-{a}" for a in stripped))
    return FilteredAnswer(
        request,
        rcode,
        admit={a: float(ttl) for a in kept},
        names=chain,
        ttl=float(ttl),
        audit=note,
    )


def build_answer(
    request: DNSRecord, rcode: int, chain: Sequence[str], addresses: Sequence[str], ttl: int
) -> DNSRecord:
    """The client's answer: the CNAME chain (queried name first), then the final A records.

    Owners are rebuilt from the validated chain; the queried name keeps the client's exact
    spelling (0x20 case randomisation), so stub resolvers accept the answer.
    """
    response = make_response(request, rcode)

    def owner(n: str) -> DNSLabel:
        return request.q.qname if n == chain[0] else DNSLabel(n)

    for alias, target in itertools.pairwise(chain):
        response.add_answer(RR(owner(alias), QTYPE.CNAME, ttl=ttl, rdata=CNAME(DNSLabel(target))))
    for address in addresses:
        response.add_answer(RR(owner(chain[-1]), QTYPE.A, ttl=ttl, rdata=A(address)))
    return response


def pack_answer(
    request: DNSRecord,
    rcode: int,
    chain: Sequence[str],
    addresses: Sequence[str],
    ttl: int,
    limit: int | None,
) -> bytes:
    """`encode(build_answer(...), limit)` packed by hand: on every allowed answer's path.

    The question is copied from the client's (its spelling), the queried name's records
    point at it (0xC00C); over UDP (`limit`) an oversized answer becomes an empty one, TC=1.
    """
    q = request.q
    question = _wire_name(q.qname.label) + _QUESTION_TAIL.pack(int(q.qtype), int(q.qclass))
    opt = _OPT if _has_edns(request) else b""
    flags = 0x8080 | (request.header.rd << 8) | rcode  # QR, RA, the client's RD
    head = (request.header.id, flags, 1)
    records = []
    owner = b"\xc0\x0c"
    offset = _HEADER.size + len(question)
    for target in chain[1:]:
        rdata = _wire_name(target.encode("ascii").split(b"."))
        record = owner + _RR_HEAD.pack(QTYPE.CNAME, 1, ttl, len(rdata)) + rdata
        records.append(record)
        # The next owner is this target: a pointer to where its name was just written.
        owner = struct.pack("!H", 0xC000 | (offset + len(owner) + _RR_HEAD.size))
        offset += len(record)
    for address in addresses:
        records.append(owner + _RR_HEAD.pack(QTYPE.A, 1, ttl, 4) + socket.inet_aton(address))
    arcount = 1 if opt else 0
    data = _HEADER.pack(*head, len(records), 0, arcount) + question + b"".join(records) + opt
    if limit is not None and len(data) > limit:
        return _HEADER.pack(request.header.id, flags | 0x0200, 1, 0, 0, arcount) + question + opt
    return data


def _wire_name(labels: Sequence[bytes]) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels if label) + b"\0"


def servfail(decision: QueryDecision) -> DNSRecord:
    assert decision.request is not None
    return make_response(decision.request, RCODE.SERVFAIL)


def encode(response: DNSRecord, limit: int | None) -> bytes:
    """Wire form; over UDP (`limit` set) an oversized answer becomes an empty one with TC."""
    try:
        data = response.pack()
    except Exception:
        # e.g. echoing a question dnslib will not encode (name > 253): header only.
        bare = DNSHeader(id=response.header.id, qr=1, ra=1, rcode=response.header.rcode)
        return DNSRecord(bare).pack()
    if limit is None or len(data) <= limit:
        return data
    header = DNSHeader(
        id=response.header.id,
        qr=1,
        ra=1,
        rd=response.header.rd,
        tc=1,
        rcode=response.header.rcode,
    )
    truncated = DNSRecord(header, q=response.q if response.questions else None)
    for rr in response.ar:
        if rr.rtype == QTYPE.OPT:
            truncated.add_ar(rr)
    return truncated.pack()


class FloodMeter:
    """One sandbox's DNS budget: at most `qps * window_s` queries let through per `window_s`.

    A sliding window of `BINS` bins over the queries it let through. A client asking in a
    loop, or a burst of thousands, stays within it; only a rate above `qps` sustained for
    the window is refused, and only the excess: what falls out of the window is let through
    again. The clock is passed in.
    """

    BINS = 10

    def __init__(self, qps: float, window_s: float, now: float) -> None:
        if not (qps > 0 and window_s > 0):
            raise ValueError("flood limit: qps and window_s must be positive")
        self.limit = qps * window_s
        self._bin_s = window_s / self.BINS
        self._counts = [0] * self.BINS
        self._total = 0
        self._bin = math.floor(now / self._bin_s)

    def take(self, now: float) -> bool:
        current = math.floor(now / self._bin_s)
        if current > self._bin:
            # Bins that left the window are emptied; a long pause empties all of them.
            for index in range(self._bin + 1, min(current, self._bin + self.BINS) + 1):
                self._total -= self._counts[index % self.BINS]
                self._counts[index % self.BINS] = 0
            self._bin = current
        if self._total >= self.limit:
            return False
        self._counts[self._bin % self.BINS] += 1
        self._total += 1
        return True
