"""The lab's OpenAI-compatible chat API: the shapes the `openai` package parses, the echo of
the last user message, and streamed pieces that cut across words."""

from __future__ import annotations

import json
from typing import Any

import pytest

from declawd.lab.openai_api import MODELS, last_user_text, route, split_text

NOW = 1_700_000_123.7


def _chat(**req: Any) -> Any:
    answer = route("POST", "/v1/chat/completions", json.dumps(req).encode(), now=NOW)
    assert answer is not None
    return answer


def _events(answer: Any) -> list[Any]:
    """Decode `data: ...\\n\\n` events as an SSE client does; [DONE] stays a string."""
    out: list[Any] = []
    for event in answer.events:
        text = event.decode()
        assert text.startswith("data: ") and text.endswith("\n\n") and text.count("\n") == 2
        data = text[len("data: ") : -2]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "first"},
    {"role": "assistant", "content": "ok"},
    {"role": "user", "content": "hello brave new world"},
]


def test_completion_echoes_the_last_user_message() -> None:
    answer = _chat(model="gpt-4o-mini", messages=MESSAGES)
    doc = answer.doc
    assert answer.status == 200 and answer.events == ()
    assert doc["id"].startswith("chatcmpl-")
    assert (doc["object"], doc["created"], doc["model"]) == (
        "chat.completion",
        1_700_000_123,
        "gpt-4o-mini",
    )
    assert doc["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hello brave new world", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert doc["usage"] == {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12}


def test_stream_is_role_then_pieces_then_stop_then_done() -> None:
    events = _events(_chat(model="m", messages=MESSAGES, stream=True))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "m" for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[-1] == {} and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    pieces = [d["content"] for d in deltas[1:-1]]
    assert "".join(pieces) == "hello brave new world"
    assert pieces == ["hel", "lo ", "bra", "ve ", "new", " wo", "rld"]  # cut inside words
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert all("usage" not in c for c in chunks)


def test_stream_with_include_usage_ends_with_a_usage_chunk() -> None:
    events = _events(
        _chat(model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    )
    last = events[-2]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 4
    assert all(e["usage"] is None for e in events[:-2])


def test_split_text_bounds_the_number_of_pieces() -> None:
    text = "word " * 200
    pieces = split_text(text)
    assert "".join(pieces) == text and len(pieces) <= 24
    assert split_text("") == [] and split_text("ab") == ["ab"]


def test_content_parts_are_joined() -> None:
    msgs = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "a "},
                {"type": "image_url", "image_url": {"url": "x"}},
                {"type": "text", "text": "b"},
            ],
        }
    ]
    assert last_user_text(msgs) == "a b"
    assert last_user_text([{"role": "system", "content": "s"}]) == ""


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[]", None),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "model"),
        (json.dumps({"model": "m", "messages": []}).encode(), "messages"),
    ],
)
def test_bad_requests_get_openai_errors(body: bytes, param: str | None) -> None:
    answer = route("POST", "/v1/chat/completions", body, now=NOW)
    assert answer is not None and answer.status == 400
    assert answer.doc["error"]["type"] == "invalid_request_error"
    assert answer.doc["error"]["param"] == param


def test_models_list_and_retrieve() -> None:
    listed = route("GET", "/v1/models", b"", now=NOW)
    assert listed is not None and listed.status == 200
    assert [m["id"] for m in listed.doc["data"]] == list(MODELS)
    assert all(m["object"] == "model" and m["owned_by"] for m in listed.doc["data"])
    one = route("GET", "/v1/models/gpt-4o", b"", now=NOW)
    assert one is not None and one.doc["id"] == "gpt-4o"
    missing = route("GET", "/v1/models/nope", b"", now=NOW)
    assert missing is not None and missing.status == 404
    assert missing.doc["error"]["code"] == "model_not_found"


def test_wrong_methods_and_foreign_paths() -> None:
    wrong = route("GET", "/v1/chat/completions", b"", now=NOW)
    assert wrong is not None and wrong.status == 405
    assert route("GET", "/v1/embeddings", b"", now=NOW) is None
