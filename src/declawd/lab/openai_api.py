"""An OpenAI-compatible chat API: `POST /v1/chat/completions` and `GET /v1/models`, enough
for the official `openai` package to parse a plain and a streamed (`"stream": true`) answer.

The assistant echoes the last user message, so a test knows the exact text that must come
back. Streamed, that text is cut into pieces of a few characters that straddle word
boundaries, one SSE event each, so a rewrite in flight must hold back across events.
Pure: a request in, status + JSON document (or SSE events) out.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any, NamedTuple

MODELS = ("gpt-4o-mini", "gpt-4o", "lab-echo")
MAX_EVENTS = 24  # content pieces per streamed answer, whatever its length
MIN_PIECE = 3  # characters: short enough that most words are split


class Answer(NamedTuple):
    status: int
    doc: Any  # the JSON document; unused when `events` is set
    events: tuple[bytes, ...] = ()  # SSE events, `data: ...\n\n` each, ending with [DONE]


def route(method: str, path: str, body: bytes, *, now: float) -> Answer | None:
    """The answer for an OpenAI path, or None when `path` is none of ours."""
    if path == "/v1/chat/completions":
        if method != "POST":
            return _error(405, f"{method} not allowed on {path}; use POST")
        return chat_completions(body, now=now)
    if path == "/v1/models":
        if method not in ("GET", "HEAD"):
            return _error(405, f"{method} not allowed on {path}; use GET")
        return Answer(200, {"object": "list", "data": [_model(m) for m in MODELS]})
    if path.startswith("/v1/models/"):
        name = path.removeprefix("/v1/models/")
        if name in MODELS:
            return Answer(200, _model(name))
        return _error(404, f"The model '{name}' does not exist", code="model_not_found")
    return None


def last_user_text(messages: list[Any]) -> str:
    """The content of the last `user` message; text parts of a list content are joined."""
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "".join(
                str(p.get("text", ""))
                for p in content
                if isinstance(p, dict) and p.get("type") == "text"
            )
        return ""
    return ""


def split_text(text: str) -> list[str]:
    """At most MAX_EVENTS pieces of equal length (>= MIN_PIECE characters), cut anywhere."""
    if not text:
        return []
    size = max(MIN_PIECE, math.ceil(len(text) / MAX_EVENTS))
    return [text[i : i + size] for i in range(0, len(text), size)]


def chat_completions(body: bytes, *, now: float) -> Answer:
    try:
        req = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "the body is not valid JSON")
    if not isinstance(req, dict):
        return _error(400, "the body must be a JSON object")
    model, messages = req.get("model"), req.get("messages")
    if not isinstance(model, str) or not model:
        return _error(400, "you must provide a model parameter", param="model")
    if not isinstance(messages, list) or not messages:
        return _error(400, "messages must be a non-empty array", param="messages")
    text = last_user_text(messages)
    usage = {
        "prompt_tokens": sum(
            len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict)
        ),
        "completion_tokens": len(text.split()),
    }
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    base = {"id": f"chatcmpl-lab{uuid.uuid4().hex[:20]}", "created": int(now), "model": model}
    if req.get("stream") is True:
        options = req.get("stream_options")
        with_usage = isinstance(options, dict) and options.get("include_usage") is True
        return Answer(200, None, _events(base, text, usage if with_usage else None))
    return Answer(
        200,
        {
            **base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
            "system_fingerprint": None,
        },
    )


def _events(base: dict[str, Any], text: str, usage: dict[str, int] | None) -> tuple[bytes, ...]:
    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        doc = {
            **base,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            "system_fingerprint": None,
        }
        if usage is not None:
            doc["usage"] = None  # as OpenAI: null on every chunk but the last
        return doc

    docs = [chunk({"role": "assistant", "content": ""}, None)]
    docs += [chunk({"content": piece}, None) for piece in split_text(text)]
    docs.append(chunk({}, "stop"))
    if usage is not None:
        docs.append({**chunk({}, None), "choices": [], "usage": usage})
    events = [f"data: {json.dumps(d)}\n\n".encode() for d in docs]
    events.append(b"data: [DONE]\n\n")
    return tuple(events)


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1700000000, "owned_by": "declawd-lab"}


def _error(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> Answer:
    kind = "invalid_request_error"
    return Answer(
        status, {"error": {"message": message, "type": kind, "param": param, "code": code}}
    )
