"""io/llm_client.py reads a chat completion's JSON itself (not through openai's ChatCompletion): the same fields, and
a body that is no completion fails its request with one line naming the endpoint."""

from __future__ import annotations

import json

import pytest
from openai.types.chat import ChatCompletion

from mira_dagster.core.scoring import RequestFailed
from mira_dagster.io.llm_client import _completion

REPLY = {
    "id": "c1",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "[A1] x: 7/10 — y"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150},
}


@pytest.mark.parametrize(
    "reply",
    [
        REPLY,
        {**REPLY, "usage": {**REPLY["usage"], "prompt_tokens_details": {"cached_tokens": 64}}},
        {**REPLY, "usage": None},
        {**REPLY, "choices": [{"index": 0, "message": {"role": "assistant", "content": None}, "finish_reason": None}]},
        {
            **REPLY,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "cut"}, "finish_reason": "length"}],
        },
    ],
)
def test_the_fields_openais_chat_completion_gives(reply: dict) -> None:
    comp = _completion(json.dumps(reply).encode(), "http://h:8000/v1")
    typed = ChatCompletion.construct(**reply)  # what the client built before, without validation
    choice, usage = typed.choices[0], typed.usage
    details = getattr(usage, "prompt_tokens_details", None) if usage else None
    assert comp.text == (choice.message.content or "")
    assert comp.finish_reason == choice.finish_reason
    assert comp.prompt_tokens == (usage.prompt_tokens if usage else None)
    assert comp.completion_tokens == (usage.completion_tokens if usage else None)
    assert comp.cached_tokens == (getattr(details, "cached_tokens", None) if details else None)


@pytest.mark.parametrize("body", [b"<html>busy</html>", b'{"choices": []}', b'{"error": "x"}', b'{"choices": [1]}'])
def test_a_body_that_is_no_completion_fails_naming_the_endpoint(body: bytes) -> None:
    with pytest.raises(RequestFailed, match=r"^not a chat completion from http://h:8000/v1: ") as info:
        _completion(body, "http://h:8000/v1")
    assert "\n" not in str(info.value)


def test_content_given_as_parts_is_its_text_parts() -> None:
    """Mistral's API answers with content as a list of parts (reasoning, then text): the text parts are the reply
    (before, every such reply failed as "not a chat completion", was paid, and was asked again at every run)."""
    parts = [
        {"type": "thinking", "thinking": [{"type": "text", "text": "Let me weigh A1."}]},
        {"type": "text", "text": "[A1] x: 7/10"},
        {"type": "text", "text": " — y"},
    ]
    reply = {
        **REPLY,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": parts}, "finish_reason": "stop"}],
    }
    assert _completion(json.dumps(reply).encode(), "http://h:8000/v1").text == "[A1] x: 7/10 — y"
    broken = {**REPLY, "choices": [{"index": 0, "message": {"role": "assistant", "content": [{"type": "text"}]}}]}
    with pytest.raises(RequestFailed, match="a content part that is not text"):
        _completion(json.dumps(broken).encode(), "http://h:8000/v1")


def _with(message: dict, finish_reason: str | None) -> bytes:
    choice = {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish_reason}
    return json.dumps({**REPLY, "choices": [choice]}).encode()


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_a_whole_reply_taken_by_a_reasoning_parser_fails_its_request_saying_so(field: str) -> None:
    """A scorer served with vLLM's --reasoning-parser whose reply never closed its think block: the server returns
    every character as the message's reasoning and none as content. Before, that was an empty reply, cached as a
    parse error ("missing slots A1,...") and never asked again; now the request fails with the cause, so a run after
    the server is fixed asks it again. A content beside the reasoning is the reply; an empty content cut by the
    token limit is a cut reply, as before."""
    thought = "[A1] x: 7/10 — y"
    with pytest.raises(RequestFailed, match=r"^reply from http://h:8000/v1 has no content: the 16 characters"):
        _completion(_with({"content": None, field: thought}, "stop"), "http://h:8000/v1")
    with pytest.raises(RequestFailed, match="--reasoning-parser"):
        _completion(_with({"content": "", field: thought}, "stop"), "http://h:8000/v1")
    assert _completion(_with({"content": "[A1] x: 8/10 — z", field: thought}, "stop"), "h").text == "[A1] x: 8/10 — z"
    cut = _completion(_with({"content": None, field: thought}, "length"), "h")
    assert (cut.text, cut.finish_reason) == ("", "length")
    assert _completion(_with({"content": None, field: "   "}, "stop"), "h").text == ""
