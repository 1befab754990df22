"""The lab's injection judge: an OpenAI-compatible `POST /v1/chat/completions` whose answer
content is the verdict JSON `{"injection": bool, "reason": str}`.

Its rule is deliberately not the classifier's, so a test can tell who decided: the last user
message containing `LAB-JUDGE-FAIL` gets a 500; else `LAB-JUDGE-BLOCK` → injection true;
else (`LAB-JUDGE-ALLOW` or anything) → false. Pure: a request in, an `Answer` out.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from declawd.lab.openai_api import Answer, last_user_text

PATH = "/v1/chat/completions"
FAIL, BLOCK, ALLOW = "LAB-JUDGE-FAIL", "LAB-JUDGE-BLOCK", "LAB-JUDGE-ALLOW"


def route(method: str, path: str, body: bytes) -> Answer | None:
    """The judge's answer, or None when `path` is not its."""
    if path != PATH:
        return None
    if method != "POST":
        return _error(405, f"{method} not allowed on {path}; use POST")
    try:
        req = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "the body is not valid JSON")
    messages = req.get("messages") if isinstance(req, dict) else None
    if not isinstance(messages, list) or not messages:
        return _error(400, "messages must be a non-empty array")
    text = last_user_text(messages)
    if FAIL in text:
        return _error(500, "the lab judge failed on purpose", kind="server_error")
    if BLOCK in text:
        verdict = {"injection": True, "reason": f"the text carries {BLOCK}"}
    elif ALLOW in text:
        verdict = {"injection": False, "reason": f"the text carries {ALLOW}"}
    else:
        verdict = {"injection": False, "reason": "no lab marker"}
    model = req.get("model") if isinstance(req.get("model"), str) else "lab-judge"
    return Answer(
        200,
        {
            "id": f"chatcmpl-judge{uuid.uuid4().hex[:16]}",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": json.dumps(verdict)},
                    "finish_reason": "stop",
                }
            ],
        },
    )


def _error(status: int, message: str, *, kind: str = "invalid_request_error") -> Answer:
    doc: dict[str, Any] = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return Answer(status, doc)
