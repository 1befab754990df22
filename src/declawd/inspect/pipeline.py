"""What inspection does to one request/response exchange, in declaw-api.md §12.1's order.

Outbound: transformations (query values, body) -> invisible text -> PII (query values,
body) -> injection defense -> code security -> the custom policy's content
package -> vault injection (headers, query). Inbound: invisible text -> injection defense ->
code security -> transformations -> PII rehydration -> the content package ->
secret scrubbing (headers, body). Body stages are the `outbound`/`inbound` lists of a
`Pipeline`; a stage that must refuse raises `Blocked`. The content package is asked once
per direction, with what the stages found (`ExchangeState.scratch["scan_results"]`).
Invariant: a body is either rewritten whole, streamed through every stage with a bounded
hold-back, or passed byte for byte with the reason in `ExchangeState.unscanned`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import quote, unquote, unquote_plus

from declawd.guard import content
from declawd.inspect.bodies import body_kind, charset, coding_of
from declawd.inspect.invisible import InvisibleTextStage, describe
from declawd.inspect.messages import (
    Headers,
    RequestHead,
    ResponseHead,
    content_length,
    header,
    set_header,
)
from declawd.inspect.model import InspectContext, InspectionPolicy, SecretSource, TransformRule
from declawd.inspect.pipes import SHARED_BUDGET, BodyPipe, BufferBudget, BufferPipe, StreamPipe
from declawd.inspect.rules import RuleSet, compile_rules
from declawd.inspect.stages import (
    Blocked,
    BodyStage,
    Chain,
    ExchangeState,
    InspectionFailed,
    ScrubStage,
    TextPass,
    TextStream,
    TransformStage,
    Way,
    run_rules,
)
from declawd.inspect.vaultinject import inject

if TYPE_CHECKING:
    from declawd.guard.injection import Judge

_DECODABLE = ("gzip", "deflate", "br", "identity")


@dataclass(frozen=True)
class GuardServices:
    """What the gateway process gives every pipeline: the operator's injection judge."""

    judge: Judge | None = None


class Pipeline:
    """The stages for one sandbox's policy; `request`/`response` per exchange."""

    def __init__(
        self,
        ctx: InspectContext,
        policy: InspectionPolicy,
        secrets: SecretSource,
        budget: BufferBudget | None = None,
        services: GuardServices | None = None,
    ) -> None:
        self.ctx, self.policy, self._secrets = ctx, policy, secrets
        self.budget = budget if budget is not None else SHARED_BUDGET
        # The guardrails' stages import this module (Blocked, ExchangeState): imported here.
        from declawd.guard.codesec import CodeSecurityStage
        from declawd.guard.injection import InjectionStage
        from declawd.guard.pii import PiiStage

        services = services or GuardServices()
        self.transforms = TransformStage(_compiled(policy.transformations))
        self.invisible = InvisibleTextStage(policy.invisible_text, ctx.host, _refuse_invisible)
        self.pii = PiiStage(policy.pii, ctx.host)
        scanners: list[BodyStage] = [
            InjectionStage(policy.injection, ctx.host, services.judge),
            CodeSecurityStage(policy.code_security, ctx.host),
        ]
        self.outbound: list[BodyStage] = [self.transforms, self.invisible, self.pii, *scanners]
        self.inbound: list[BodyStage] = [
            self.invisible,
            *scanners,
            self.transforms,
            self.pii,
            ScrubStage(),
        ]
        custom = policy.custom
        self.content = custom if custom is not None and custom.has(content.PACKAGE) else None

    def request(
        self, head: RequestHead, x: ExchangeState | None = None
    ) -> tuple[ExchangeState, RequestHead]:
        """Query transformations, invisible text and PII, then vault injection, counted in
        `x`; the content package now if the request has no body. Raises InspectionFailed,
        or Blocked (a guard under `block`, a content policy's deny)."""
        x = ExchangeState() if x is None else x
        if head.method == "CONNECT":
            return x, head  # a tunnel: nothing of it is ours to rewrite
        target = self._query(head.target, x)
        if self.content is not None:
            path = target.partition("?")[0]
            x.scratch["content_request"] = content.request_input(
                sandbox_id=self.ctx.sandbox_id,
                method=head.method,
                url=f"{head.scheme}://{head.authority}{target}",
                host=self.ctx.host,
                path=path,
                headers=head.headers,
                body=None,
                scan_results={},
            )
            if not head.has_body:
                self.check_content(x, "outbound", None)
        vault = inject(
            target,
            head.headers,
            authority=head.authority,
            ctx=self.ctx,
            policy=self.policy,
            secrets=self._secrets,
        )
        x.vault_injections, x.injected, x.scrubber = vault.count, vault.injected, vault.scrubber
        headers = _decodable_only(vault.headers)
        return x, replace(head, target=vault.target, headers=headers)

    def response(self, x: ExchangeState, head: ResponseHead) -> ResponseHead:
        """Secret scrubbing of the headers; the content package now if the response has no
        body (Blocked on a deny)."""
        x.scratch["content_response"] = (head.status, head.headers)
        if not head.has_body:
            self.check_content(x, "inbound", None)
        return replace(head, headers=x.scrubber.headers(head.headers))

    def check_content(self, x: ExchangeState, way: Way, text: str | None) -> None:
        """The content package on this direction of `x` (once), with the body's text when
        it was read whole. Blocked (403 policy_denied) on a deny; the verdict is kept for
        the audit under `scratch["policy"]`."""
        request = x.scratch.get("content_request")
        if self.content is None or request is None or x.scratch.get(f"content_{way}_done"):
            return
        x.scratch[f"content_{way}_done"] = True
        scans = x.scratch.get("scan_results", {})
        if way == "outbound":
            doc = {**request, "request": {**request["request"], "body": text}}
            doc["attributes"] = {"scan_results": scans, "model": content.model_of(text)}
            x.scratch["content_request"] = doc
        else:
            status, headers = x.scratch.get("content_response", (0, []))
            doc = content.response_input(
                request, status=status, headers=headers, body=text, scan_results=scans
            )
        verdict = content.evaluate(self.content, doc)
        x.scratch.setdefault("policy", {})[way] = content.verdict_record(verdict)
        if verdict.denied:
            reason = "; ".join(verdict.messages) or f"policy evaluation failed: {verdict.error}"
            raise Blocked(reason, error="policy_denied")

    def body(self, x: ExchangeState, headers: Headers, way: Way, *, status: int = 0) -> BodyPipe:
        """The pipe one body runs through. A body that will not be read whole has the
        content package asked now, without its text."""
        pipe = self._body(x, headers, way, status=status)
        if isinstance(pipe, BufferPipe):
            pipe.gate = functools.partial(self.check_content, x, way)
        else:
            self.check_content(x, way, None)
        return pipe

    def _body(self, x: ExchangeState, headers: Headers, way: Way, *, status: int) -> BodyPipe:
        length = content_length(headers)
        chain = self._chain(x, way)
        kind = body_kind(header(headers, "content-type"))
        gated = self.content is not None and "content_request" in x.scratch
        if chain is None and gated and kind != "opaque":
            chain = Chain([])  # read whole for the content package, rewritten by nothing
        if chain is None or kind == "opaque":
            return BodyPipe(x, length)
        coding = coding_of(header(headers, "content-encoding"))
        cs = charset(header(headers, "content-type"))
        if status == 206:
            return BodyPipe(x, length, note="partial_content")
        if coding is None:
            return BodyPipe(x, length, note="content_encoding")
        if cs is None:
            return BodyPipe(x, length, note="charset")
        limit = self.policy.buffer_limit
        if kind == "sse" or (length is None and kind == "text"):
            return StreamPipe(x, chain, kind, coding, cs, limit)
        if length is not None and length > limit:
            return BodyPipe(x, length, note="over_buffer_limit")
        return BufferPipe(x, chain, kind, coding, cs, limit, length, self.budget)

    def _chain(self, x: ExchangeState, way: Way) -> Chain | None:
        stages = self.outbound if way == "outbound" else self.inbound
        passes = [p for p in (s.start(x, way) for s in stages) if p is not None]
        return Chain(passes) if passes else None

    def _query(self, target: str, x: ExchangeState) -> str:
        rules = self.transforms.rules("outbound")
        invisible = self.invisible.start(x, "outbound")
        pii = self.pii.start(x, "outbound")
        path, sep, query = target.partition("?")
        if pii is not None:
            path = _path_pii(path, pii)
        if not (rules or invisible or pii) or not sep:
            return f"{path}{sep}{query}"
        pairs = []
        for pair in query.split("&"):
            name, eq, raw = pair.partition("=")
            value = unquote_plus(raw)
            new, n = run_rules(rules.apply, value) if rules else (value, 0)
            x.transformations_applied += n
            new = invisible.apply(new) if invisible is not None else new
            new = pii.apply(new) if pii is not None else new
            pairs.append(f"{name}={quote(new, safe='')}" if new != value and eq else pair)
        return f"{path}?{'&'.join(pairs)}"


@functools.lru_cache(maxsize=256)
def _compiled(rules: tuple[TransformRule, ...]) -> RuleSet:
    """A sandbox's rules compile once, not on each of its inspected connections (the
    node validated them at create; RuleSets are immutable and RE2 matching is
    thread-safe, so connections on worker threads share one)."""
    return compile_rules(rules)


def _path_pii(path: str, pii: TextPass) -> str:
    """PII in the path's segments (an email in `/users/a@b.c`), each decoded, passed and
    re-quoted only when it changed."""
    parts = path.split("/")
    for i, seg in enumerate(parts):
        if not seg:
            continue
        value = unquote(seg)
        new = pii.apply(value)
        if new != value:
            parts[i] = quote(new, safe="@:+,;=-._~")
    return "/".join(parts)


def _refuse_invisible(counts: Mapping[str, int]) -> NoReturn:
    raise Blocked(describe(counts), error="invisible_text_detected")


def _decodable_only(headers: Headers) -> Headers:
    """Accept-Encoding narrowed to codings the inbound stages can decode (so a response is
    never unscannable for its coding alone)."""
    raw = header(headers, "accept-encoding")
    if raw is None:
        return headers
    kept = [c.strip() for c in raw.split(",") if c.split(";")[0].strip().lower() in _DECODABLE]
    return set_header(headers, "accept-encoding", ", ".join(kept) or "identity")


__all__ = [
    "SHARED_BUDGET",
    "Blocked",
    "BodyPipe",
    "BodyStage",
    "BufferBudget",
    "BufferPipe",
    "ExchangeState",
    "GuardServices",
    "InspectionFailed",
    "Pipeline",
    "StreamPipe",
    "TextPass",
    "TextStream",
    "Way",
]
