"""Invisible text through the official SDK: `InvisibleTextConfig` on a real sandbox.

A JSON body carrying Unicode tag characters (ASCII smuggling) is POSTed to the lab's
`/anything` on api.openai.com. `strip`: the lab's request log (what left the node) and the
echo show them gone, the JSON still valid, the audit counts them; `block`: the sandbox gets
403 `{"error", "reason"}`, the lab never sees the request, the audit records a deny.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from declaw import ALL_TRAFFIC, InvisibleTextConfig, NetworkPolicy, SecurityPolicy

from declawd.client import DeclawdClient
from tests.e2e.test_inspection import (
    ALLOWED,
    H1_HOST,
    create,
    echo,
    eventually,
    lab_requests,
    marker,
    probe,
    seen_upstream,
)

pytestmark = pytest.mark.e2e

# Built inside the sandbox, so the probe's argv stays ASCII: "hi" + "leak" as tag characters.
HIDDEN_PROMPT = "'hi' + ''.join(chr(0xE0000 + ord(ch)) for ch in 'leak')"
HIDDEN = "".join(chr(0xE0000 + ord(ch)) for ch in "leak")


def guarded(action: str) -> SecurityPolicy:
    return SecurityPolicy(
        invisible_text=InvisibleTextConfig(enabled=True, action=action),
        network=NetworkPolicy(allow_out=ALLOWED, deny_out=[ALL_TRAFFIC]),
    )


@pytest.fixture(scope="module")
def client(server: dict[str, str]) -> Iterator[DeclawdClient]:
    with DeclawdClient(api_key=server["key"], domain=server["domain"]) as cl:
        yield cl


def post_hidden(s: Any, m: str) -> dict[str, Any]:
    body = f"json.dumps({{'prompt': {HIDDEN_PROMPT}, 'n': 1}})"
    result: dict[str, Any] = probe(
        s, f"urllib_post('https://{H1_HOST}/anything?case={m}', data={body})"
    )
    return result


def http_event(client: DeclawdClient, sandbox_id: str, m: str) -> dict[str, Any]:
    def found() -> list[dict[str, Any]]:
        events = (e.model_dump(mode="json") for e in client.audit(sandbox_id, kind="http"))
        return [e for e in events if m in (e.get("url") or "")]

    got = eventually(found)
    assert len(got) == 1, got
    event: dict[str, Any] = got[0]
    return event


def test_strip_removes_tag_characters_before_they_leave(client: DeclawdClient) -> None:
    s = create(security=guarded("strip"))
    try:
        m, t0 = marker(), time.time()
        doc = echo(post_hidden(s, m))
        assert doc["json"] == {"prompt": "hi", "n": 1}, doc  # valid JSON, value by value
        (rec,) = seen_upstream(H1_HOST, m, t0)
        assert json.loads(rec["body"]) == {"prompt": "hi", "n": 1}, rec
        assert HIDDEN not in json.dumps(rec, ensure_ascii=False)
        event = http_event(client, s.sandbox_id, m)
        assert event["verdict"] == "allow"
        assert event["invisible_text"] == {"action": "strip", "outbound": {"tag": 4}}, event
    finally:
        s.kill(wait=True)


def test_block_answers_403_and_nothing_reaches_the_lab(client: DeclawdClient) -> None:
    s = create(security=guarded("block"))
    try:
        m, t0 = marker(), time.time()
        got = post_hidden(s, m)
        assert got["status"] == 403, got
        assert json.loads(got["text"]) == {
            "error": "invisible_text_detected",
            "reason": "invisible text: 4 tag",
        }
        event = http_event(client, s.sandbox_id, m)
        assert (event["verdict"], event["reason"], event["status_code"]) == (
            "deny",
            "invisible_text_detected",
            403,
        )
        # The audit event is written after the exchange ended: had the request gone out,
        # the lab would have logged it before answering.
        assert [r for r in lab_requests(H1_HOST, t0) if m in json.dumps(r)] == []
    finally:
        s.kill(wait=True)
