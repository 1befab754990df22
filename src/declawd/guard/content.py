"""The custom policy's content package on inspected exchanges (`declaw.platform.content`).

Asked once per direction of an exchange: for a request when its body has been read whole (or
at its head when it has none, or its body is not buffered), for a response when its body has
been read whole. Input:

    {"action": {"type": "http_request" | "http_response", "direction": "outbound" | "inbound",
                "method", "url", "host", "path", "status" (responses)},
     "request": {"method", "url", "host", "headers": {name: value}, "body": text | null},
     "response": {"status", "headers", "body"} (responses only),
     "attributes": {"scan_results": {section: result}, "model": str | null},
     "sandbox": {"id"}}

`headers` are the sandbox's (before vault injection: a secret the sandbox never saw is never
an input), lower-cased, repeated names joined by ", "; `body` is the decoded text, cut at
MAX_BODY characters (null when the body was not buffered or not text). `model` is the `model`
field of a JSON body (an LLM API request), when present. A deny raises the pipeline's
`Blocked` (403 `policy_denied`, every message in the reason); the verdict lands in the
exchange's scratch for the audit either way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from declawd.guard.custom import CustomPolicy, Verdict

if TYPE_CHECKING:
    from declawd.inspect.messages import Headers

PACKAGE = "declaw.platform.content"
MAX_BODY = 256 * 1024


def header_map(headers: Headers) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def model_of(text: str | None) -> str | None:
    """The `model` of a JSON object body (e.g. a chat completion request)."""
    if not text or not text.lstrip().startswith("{"):
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    model = doc.get("model") if isinstance(doc, dict) else None
    return model if isinstance(model, str) else None


def _body(text: str | None) -> str | None:
    return None if text is None else text[:MAX_BODY]


def request_input(
    *,
    sandbox_id: str,
    method: str,
    url: str,
    host: str,
    path: str,
    headers: Headers,
    body: str | None,
    scan_results: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "action": {
            "type": "http_request",
            "direction": "outbound",
            "method": method,
            "url": url,
            "host": host,
            "path": path,
        },
        "request": {
            "method": method,
            "url": url,
            "host": host,
            "headers": header_map(headers),
            "body": _body(body),
        },
        "attributes": {"scan_results": dict(scan_results), "model": model_of(body)},
        "sandbox": {"id": sandbox_id},
    }


def response_input(
    request: Mapping[str, Any],
    *,
    status: int,
    headers: Headers,
    body: str | None,
    scan_results: Mapping[str, Any],
) -> dict[str, Any]:
    """`request` is the request's input (its `request` part is repeated for context)."""
    action = {**request["action"], "type": "http_response", "direction": "inbound"}
    action["status"] = status
    return {
        "action": action,
        "request": request["request"],
        "response": {"status": status, "headers": header_map(headers), "body": _body(body)},
        "attributes": {
            "scan_results": dict(scan_results),
            "model": request["attributes"].get("model"),
        },
        "sandbox": request["sandbox"],
    }


def evaluate(policy: CustomPolicy, input: Mapping[str, Any]) -> Verdict:
    return policy.deny(PACKAGE, input)


def verdict_record(v: Verdict) -> dict[str, Any]:
    out: dict[str, Any] = {"verdict": "denied" if v.denied else "allowed"}
    if v.messages:
        out["messages"] = list(v.messages)
    if v.error:
        out["error"] = v.error
    return out
