"""DNS filtering for sandboxes, sans-IO: a query becomes a decision, an upstream reply a filtered one.

`decide_query` judges a client's raw query against the sandbox's EgressPolicy: answer locally
(REFUSED, sink address, empty) or forward a freshly built upstream query. `filter_answer`
checks that an upstream reply matches, follows the CNAME chain, strips floor addresses and
returns the addresses to admit into the datapath. Invariants: a name the policy denies is never
forwarded and never answered with anything but the sink; only A/CNAME data reaches a sandbox.
"""

from __future__ import annotations

import enum
import ipaddress
import re
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
    DNSQuestion,
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
    response: DNSRecord
    admit: dict[str, float] = field(default_factory=dict)  # address -> TTL seconds
    names: list[str] = field(default_factory=list)  # queried name + CNAME chain
    ttl: float = 0.0
    audit: AuditNote | None = None


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
    """A fresh query for the upstream: only the question, nothing the client sent besides."""
    query = DNSRecord(DNSHeader(id=qid, rd=1), q=None)
    query.add_question(DNSQuestion(name, qtype))
    query.add_ar(EDNS0(udp_len=OUR_UDP_PAYLOAD))
    return query.pack()


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
            make_response(request, RCODE.SERVFAIL),
            names=[name],
            audit=AuditNote("allow", "upstream_error", name),
        )
    response = make_response(request, rcode)
    chain = [name]
    chain_rrs: list[RR] = []
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
        chain_rrs.append(link)
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
    out_ttl = min(ttl, TTL_CAP)

    # Owners are rebuilt from the validated chain; the queried name keeps the client's exact
    # spelling (0x20 case randomisation), so stub resolvers accept the answer.
    def owner(n: str) -> DNSLabel:
        return request.q.qname if n == name else DNSLabel(n)

    for i, _rr in enumerate(chain_rrs):
        response.add_answer(
            RR(owner(chain[i]), QTYPE.CNAME, ttl=out_ttl, rdata=CNAME(DNSLabel(chain[i + 1])))
        )
    for address in kept:
        response.add_answer(RR(owner(current), QTYPE.A, ttl=out_ttl, rdata=A(address)))
    reason = "non_public_stripped" if stripped else "allowed"
    note = AuditNote("allow", reason, name, tuple(kept) + tuple(f"-{a}" for a in stripped))
    return FilteredAnswer(
        response,
        admit={a: float(ttl) for a in kept},
        names=chain,
        ttl=float(ttl),
        audit=note,
    )


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


class TokenBucket:
    """Per-sandbox query budget: `rate` per second, bursts up to `burst`. Clock passed in."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp = now

    def take(self, now: float) -> bool:
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
