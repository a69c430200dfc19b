from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import pickle
import re
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mira_dagster.core import layouts
from mira_dagster.core.layouts import LAYOUTS, WrittenFloat, as_text, match
from mira_dagster.core.records import BatchParser, Rejected, Unit, to_fields
from tests.conftest import SAMPLE

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "layouts"
QA_KEYS = {"question", "thinking", "answer"}
AGENT_KEYS = {"task", "trajectory", "outcome"}


def _rows(name: str) -> list[dict[str, Any]]:
    text = (FIXTURES / name).read_text(encoding="utf-8")
    return json.loads(text) if name.endswith(".json") else [json.loads(line) for line in text.splitlines()]


def _digest(fields: dict[str, str] | None) -> str | None:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest() if fields is not None else None


# ---------------------------------------------------------------------------------------------
# The original layouts: same layout and same fields as the first release, for every sample line


def test_sample_lines_match_the_golden_results_of_the_first_release() -> None:
    golden = json.loads((FIXTURES / "sample_golden.json").read_text())
    assert {row["file"] for row in golden} == {path.name for path in SAMPLE.glob("*.jsonl")}
    lines: dict[str, list[str]] = {}
    mismatches = []
    for row in golden:
        text = lines.setdefault(row["file"], (SAMPLE / row["file"]).read_text(encoding="utf-8").splitlines())
        got = match(json.loads(text[row["line"] - 1]), row["family"])
        name, fields = got if got else (None, None)
        if (name, _digest(fields)) != (row["layout"], row["sha256"]):
            mismatches.append((row["file"], row["line"], name, row["layout"]))
    assert mismatches == []
    assert sum(len(v) for v in lines.values()) == len(golden)


def test_layout_order() -> None:
    assert LAYOUTS["qa"] is LAYOUTS["qa_with_think"]
    assert [name for name, _ in LAYOUTS["qa"]] == [
        *("responses_rollout", "question_answer", "prompt_solution", "instruction_response", "lean_cot_proof"),
        *("lean_formal", "preference", "preference_hh", "ranked_answers", "chat_messages", "sharegpt", "alpaca"),
        "qa_fields",
    ]
    assert [name for name, _ in LAYOUTS["agent"]] == ["responses_rollout", "agent_turns", "sharegpt"]


fragments = st.sampled_from(
    ["<think>", "</think>", "<Thought>", "</Thought>", "<Output>", "</Output>", "theorem", "theorem ", "theorem\t"]
    + [":=", ":", "=", " ", "\n", "\r\n", "\x1c", "\u2003", "a", "x := 1"]
)
tagged_text = st.lists(fragments, max_size=12).map("".join)


@settings(max_examples=500, deadline=None)
@given(tagged_text)
def test_find_based_parsing_matches_the_original_regexes(s: str) -> None:
    def group(pattern: str) -> str | None:
        m = re.search(pattern, s, re.S)
        return m.group(1) if m else None

    def block(tag: str, closing: str) -> str | None:
        start = layouts._find_after(s, tag)
        return layouts._until_tag_or_end(s, start, closing) if start >= 0 else None

    assert group(r"<think>(.*?)(?:</think>|$)") == block("<think>", "</think>")
    assert group(r"<Output>(.*?)(?:</Output>|$)") == block("<Output>", "</Output>")
    assert group(r"(theorem\s.*?:=)") == layouts._theorem_statement(s)
    assert layouts._prompt_solution({"prompt": s, "solution": "a"})["question"] == re.sub(r"<think>\s*$", "", s)
    thought = group(r"<Thought>(.*?)</Thought>")
    fields = layouts._instruction_response({"instruction": "q", "response": s})
    assert fields is not None
    if thought is not None:
        assert fields["thinking"] == thought


def test_fallthrough_keeps_the_first_layout_and_renders_non_text_answers() -> None:
    # a string answer keeps the original layout, solution and all; a number no longer reads as empty
    kept = match({"question": "q", "answer": "a", "solution": "s"}, "qa")
    assert kept == ("question_answer", {"question": "q", "thinking": "", "answer": "a"})
    zero = {"question": "q", "thinking": "", "answer": "0"}
    assert match({"question": "q", "answer": 0}, "qa") == ("qa_fields", zero)
    # an empty required field lets later layouts try, and nothing applies to unrelated objects
    assert match({"messages": [{"role": "user", "content": "q"}], "output": "a", "input": "q"}, "qa")[0] == "qa_fields"
    assert match({"text": "pretraining prose"}, "qa") is None
    assert match({"text": "pretraining prose"}, "agent") is None


# ---------------------------------------------------------------------------------------------
# New layouts, on fixtures written from the formats' documentation (tests/fixtures/layouts/README.md)


def test_responses_rollout_qa() -> None:
    math, oss, tools = (match(r, "qa_with_think") for r in _rows("responses_rollouts.jsonl"))
    assert math == (
        "responses_rollout",
        {
            "question": "What is the sum of the first 10 positive odd integers?",
            "thinking": "**Summing odd numbers**\n\nThe sum of the first n odd integers is n^2.\n\n"
            "**Checking**\n\n1+3+5+7+9+11+13+15+17+19 = 100.",
            "answer": "The sum is n^2 with n = 10, so the answer is \\boxed{100}.",
        },
    )
    assert oss[1] == {
        "question": "Is 221 a prime number? Answer yes or no.",
        "thinking": "221 = 13 * 17, so it is composite.",
        "answer": "No. 221 = 13 × 17.",
    }
    # the final assistant message is the last non-empty one (NeMo-Gym appends an empty message)
    assert tools[1]["answer"] == "Your copy of 1984 is at the Main Branch."


def test_responses_rollout_agent() -> None:
    math, oss, tools = (match(r, "agent") for r in _rows("responses_rollouts.jsonl"))
    assert math[0] == "responses_rollout"
    assert oss[1]["trajectory"].startswith("### system\nYou are a careful mathematician.\n\n### user\nIs 221")
    assert tools[1]["task"] == "Where is my copy of 1984 (BK002)?"
    assert tools[1]["outcome"] == "Your copy of 1984 is at the Main Branch."
    trajectory = tools[1]["trajectory"]
    steps = [
        "### system\nYou are a library assistant.",
        "### user\nWhere is my copy",
        "### reasoning\nI should look the book up.",
        '### function_call\nget_book({"book_id": "BK002"})',
        '### function_call_output\n{"book_id": "BK002", "title": "1984", "location": "Main Branch"}',
        "### assistant\nYour copy of 1984 is at the Main Branch.",
        "### user\nThanks! ###STOP###",
    ]
    positions = [trajectory.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions)
    assert "token_ids" not in trajectory and "0.0" not in trajectory


def test_sharegpt() -> None:
    plain, tools = _rows("sharegpt.json")
    assert match(plain, "qa") == (
        "sharegpt",
        {
            # the system prompt is part of the question's context (a conversation is read whole)
            "question": "### system\nYou are a helpful assistant.\n\n### user\n"
            "How many positive divisors does 36 have?",
            "thinking": "\n36 = 2^2 * 3^2, so (2+1)(2+1) = 9.\n",
            "answer": "\n\n36 has 9 positive divisors.",
        },
    )
    name, fields = match(tools, "agent")
    assert name == "sharegpt"
    assert fields["task"] == "What's the weather in Paris right now?"
    assert fields["outcome"] == "It is 18 °C and cloudy in Paris."
    assert fields["trajectory"].split("\n\n### ")[1:] == [
        "human\nWhat's the weather in Paris right now?",
        'function_call\n{"name": "get_weather", "arguments": {"city": "Paris"}}',
        'observation\n{"temperature_c": 18, "condition": "cloudy"}',
        "gpt\nIt is 18 °C and cloudy in Paris.",
    ]
    assert fields["trajectory"].startswith("### system\nYou can call functions.")
    assert match(tools, "qa")[1]["answer"] == "It is 18 °C and cloudy in Paris."


def test_chat_messages_with_value_parts_and_reasoning() -> None:
    got = [match(r, "qa") for r in _rows("chat_messages.jsonl")]
    assert {name for name, _ in got} == {"chat_messages"}
    assert [(f["question"], f["thinking"], f["answer"]) for _, f in got] == [
        ("Factor x^2 - 5x + 6.", "Roots multiply to 6 and add to 5: 2 and 3.", "(x - 2)(x - 3)"),
        (
            "### system\nYou are a helpful assistant.\n\n### user\n9.11 and 9.8, which is greater?",
            "Compare 9.11 and 9.80: 0.80 > 0.11.",
            "9.8 is greater.",
        ),
        ("What is 7 * 8?", "7 * 8 = 56.", "56"),
        ("Is 97 prime?", "No divisor among 2, 3, 5, 7 (sqrt 97 < 10).", "Yes, 97 is prime."),
        ("Solve 2x + 3 = 11.", "2x = 8, x = 4.", "x = 4"),
        ("Name a prime between 20 and 25.", "21 = 3*7, 22 even, 23 prime.", "23"),
    ]
    # agent family: the original agent_turns layout, now with the text of `value` parts
    name, fields = match(_rows("chat_messages.jsonl")[0], "agent")
    assert name == "agent_turns"
    assert fields["task"] == "Factor x^2 - 5x + 6." and "(x - 2)(x - 3)" in fields["trajectory"]


def test_content_parts_of_other_producers() -> None:
    """Anthropic tool_use / tool_result blocks, OpenAI refusal parts and Assistants `text.value` are text; before,
    each came out empty and the turn lost it without a word."""
    anthropic = {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}},
                ],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny, 18 C"}]},
            {"role": "assistant", "content": "Sunny, 18 C."},
        ]
    }
    _, fields = match(anthropic, "agent")
    assert '[tool_call] get_weather({"city": "Paris"})' in fields["trajectory"]
    assert "[tool_result get_weather] sunny, 18 C" in fields["trajectory"]
    refusal = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
        ]
    }
    assert match(refusal, "qa")[1]["answer"] == "No."
    assistants = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": {"value": "What is 5+5?", "annotations": []}}]},
            {"role": "assistant", "content": [{"type": "text", "text": {"value": "10", "annotations": []}}]},
        ]
    }
    assert match(assistants, "qa")[1] == {"question": "What is 5+5?", "thinking": "", "answer": "10"}


@pytest.mark.parametrize(
    ("part", "shown"),
    [
        ({"type": "image_url", "image_url": {"url": "https://example.org/cat.png"}}, "[non-text part: image_url]"),
        ({"type": "input_audio", "input_audio": {"data": "UklGR", "format": "wav"}}, "[non-text part: input_audio]"),
        (
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
            "[non-text part: image]",
        ),
        ({"file": {"file_id": "f1"}}, "[non-text part: file]"),
    ],
)
def test_a_part_without_text_is_named_not_dropped(part: dict[str, Any], shown: str) -> None:
    """A turn's image (audio, a file) cannot be scored, but the scorer is told it is there: before, the part was
    dropped and the record scored as if the turn were only its text."""
    obj = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Describe this."}, part]},
            {"role": "assistant", "content": "A cat."},
        ]
    }
    assert match(obj, "qa")[1]["question"] == f"Describe this.\n{shown}"
    assert f"Describe this.\n{shown}" in match(obj, "agent")[1]["trajectory"]
    # a turn that is nothing but such a part gives no text: the record is refused as empty, not scored on "[...]"
    only = {"messages": [{"role": "user", "content": [part]}, {"role": "assistant", "content": "A cat."}]}
    with pytest.raises(Rejected, match=r"\['question'\] hold no text, only non-text parts"):
        to_fields(only, "qa", None)


def test_a_system_prompt_beside_the_messages_is_read_in_every_form() -> None:
    """Anthropic and Bedrock Converse keep `system` beside the messages as a list of text blocks: it was dropped (and
    a string one was dropped by the agent family), so the scorer saw the record without its instructions."""
    for system in ("Be terse.", [{"type": "text", "text": "Be terse."}], [{"text": "Be terse."}]):
        obj = {
            "system": system,
            "messages": [{"role": "user", "content": [{"text": "q"}]}, {"role": "assistant", "content": "a"}],
        }
        assert match(obj, "qa")[1]["question"] == "### system\nBe terse.\n\n### user\nq"
        assert match(obj, "agent")[1]["trajectory"].startswith("### system\nBe terse.\n\n### user\nq")
    redacted = {
        "messages": [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": [{"type": "redacted_thinking", "data": "EmwKAh"}, {"type": "text", "text": "a"}],
            },
        ]
    }
    assert match(redacted, "qa")[1] == {
        "question": "q",
        "thinking": "[non-text part: redacted_thinking]",
        "answer": "a",
    }


def test_alpaca() -> None:
    no_input, with_input = (match(r, "qa") for r in _rows("alpaca_data.json"))
    assert no_input[0] == "alpaca"
    assert no_input[1]["question"] == "Give three tips for staying focused while studying."
    assert no_input[1]["answer"].startswith("1. Remove distractions.")
    assert with_input[1] == {
        "question": "Convert the temperature to Fahrenheit.\n\n25 degrees Celsius",
        "thinking": "",
        "answer": "25 °C is 77 °F.",
    }
    assert match(_rows("alpaca_data.json")[0], "agent") is None


def test_qa_fields() -> None:
    got = [match(r, "qa") for r in _rows("qa_fields.jsonl")]
    assert {name for name, _ in got} == {"qa_fields"}
    assert [(f["thinking"], f["answer"]) for _, f in got] == [
        ("lcm(6, 7, 8) = 2^3 * 3 * 7 = 168.", "168"),  # evaluation output: solution + numeric answer
        ("", "Adding the equations gives $2x = 12$, so $x = \\boxed{6}$."),  # MATH: the solution answers
        ("", "3 * 12 = 36 pencils; 36 - 5 = 31. The answer is: 31"),  # MetaMathQA query/response
        ("", "150.0"),
        ("", "false"),
        ("", "4, 10"),
        ("0.15 * 80 = 12", "12"),  # TRL conversational prompt/completion, <think> split
        ("2^10 = 1024, and 1024 mod 1000 = 24.", "24"),  # generation + expected_answer
    ]
    assert got[2][1]["question"] == "Tom has 3 boxes of 12 pencils and gives away 5. How many are left?"
    assert got[6][1]["question"] == "What is 15% of 80?"
    assert all(match(r, "agent") is None for r in _rows("qa_fields.jsonl"))


# ---------------------------------------------------------------------------------------------
# as_text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("a b", "a b"),
        ("", ""),
        (None, ""),
        (0, "0"),
        (-7, "-7"),
        (42.0, "42.0"),  # repr: what the source wrote
        (0.1, "0.1"),
        (1e-05, "1e-05"),
        (float("nan"), ""),  # not a number: no text (a required field then reads as empty)
        (float("inf"), ""),
        (True, "true"),
        (False, "false"),
        ([], ""),
        ([4, 10], "4, 10"),
        (["A", "C"], "A, C"),
        ([1, 2.5, "x", False, None], "1, 2.5, x, false, "),
        ((1, 2), "1, 2"),
        ([[1, 2], 3], "[[1, 2], 3]"),
        ({"a": "é", "b": [1, None]}, '{"a": "é", "b": [1, null]}'),
        ({}, "{}"),
        (b"caf\xc3\xa9", "café"),
        (b"\xff", "\ufffd"),
        (dt.datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05"),
        (dt.date(2024, 1, 2), "2024-01-02"),
        ({"t": dt.datetime(2024, 1, 2), "b": b"x"}, '{"t": "2024-01-02T00:00:00", "b": "x"}'),
        (Decimal("1.50"), "1.50"),
        ({(1, 2): "tuple key"}, ""),  # not JSON: rendered as nothing rather than raising
    ],
)
def test_as_text(value: Any, text: str) -> None:
    assert as_text(value) == text


def test_a_json_number_reads_as_its_line_wrote_it() -> None:
    """`"answer": 1.10` showed the scorer "1.1" and `1e-5` "1e-05" (a float's repr, not what the line held)."""
    lines = [
        b'{"question": "0.5 + 0.6?", "answer": 1.10}',
        b'{"question": "small?", "answer": 1e-5}',
        b'{"question": "both?", "answer": [1.50, 2, -0.0]}',
        b'{"question": "whole?", "answer": 3.0E2}',
    ]
    parsed = BatchParser("s", "g", "qa").parse("f.jsonl", [Unit(i, raw=line) for i, line in enumerate(lines, 1)])
    assert parsed.text["answer"] == ["1.10", "1e-5", "1.50, 2, -0.0", "3.0E2"]
    written = WrittenFloat(1.1, "1.10")
    assert as_text(pickle.loads(pickle.dumps(written))) == as_text(copy.deepcopy(written)) == "1.10"


def test_as_text_of_huge_and_deep_values() -> None:
    assert as_text(10**5000).startswith("0x")  # over the int-to-str digit limit
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    assert isinstance(as_text(deep), str)


# ---------------------------------------------------------------------------------------------
# Linear time: a repeated tag without its closing tag made the original regexes quadratic

TAGS = ["<Thought>", "</Thought>", "<Output>", "</Output>", "<think>", "</think>", "<think>\n", "theorem", "theorem "]
TAGS += [":=", "theorem :=", " \n", "\n", "### user\n"]
PREFIXES = ["", "<Thought>a</Thought>", "<think>a</think>", "theorem a"]
TEXT_KEYS = {
    *layouts._QUESTION_KEYS,
    *layouts._THINKING_KEYS,
    *layouts._ANSWER_KEYS,
    *("solution", "response", "cot", "correct_proof", "name", "formal_statement", "formal_proof", "informal_prefix"),
    *("instruction", "git_patch", "system"),
}


def _big_object(big: str) -> dict[str, Any]:
    turn = {"role": "assistant", "content": big, "reasoning_content": big, "thought": big, "action": big, "code": big}
    parts = [{"type": "thinking", "thinking": big}, {"type": "text", "value": big}]
    messages = [{"role": "user", "content": big}, turn, {"role": "assistant", "content": parts}]
    output = [
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": big}], "content": [{"text": big}]},
        {"type": "function_call", "name": "f", "arguments": big},
        {"type": "function_call_output", "output": big},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": big}]},
    ]
    return {
        **dict.fromkeys(TEXT_KEYS, big),
        "messages": messages,
        "history": messages,
        "conversations": [{"from": "human", "value": big}, {"from": "gpt", "value": big}],
        "responses_create_params": {"input": [{"role": "user", "content": big}], "instructions": big},
        "response": {"output": output, "output_text": big},
        "info": {"submission": big},
    }


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("tag", TAGS)
def test_layouts_run_in_linear_time(tag: str, prefix: str) -> None:
    big = prefix + tag * (4 * 1024 * 1024 // len(tag))
    for obj in (_big_object(big), {"instruction": "q", "response": big}, {"cot": big, "correct_proof": big}):
        started = time.perf_counter()
        for family in ("qa_with_think", "agent"):
            for _, layout in LAYOUTS[family]:
                layout(obj)
        # a guard against quadratic scans (hours on 4 MB), not a speed target: about 0.1-0.5 s when linear; the
        # bound leaves room for a loaded machine (1 s failed under load)
        assert time.perf_counter() - started < 10.0, (tag, prefix)


# ---------------------------------------------------------------------------------------------
# Never raises, on anything JSON-like (and Parquet scalars)

KEYS = sorted(
    TEXT_KEYS
    | {"messages", "history", "conversations", "conversation", "responses_create_params", "response", "test_result"}
    | {"info", "role", "from", "source", "content", "value", "type", "text", "thinking", "reasoning", "summary"}
    | {"input", "output", "instructions", "name", "arguments", "action", "call_id", "output_text", "submission"}
    | {"thought", "command", "code", "message", "observation"}
)
WORDS = ["user", "assistant", "human", "gpt", "system", "agent", "message", "reasoning", "thinking", "text"]
WORDS += ["function_call", "function_call_output", "custom_tool_call", "summary_text", "output_text", "reasoning_text"]
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | tagged_text
    | st.sampled_from(WORDS)
    | st.binary(max_size=6)
    | st.datetimes()
)
json_like = st.recursive(
    leaves,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), kids),
    max_leaves=30,
)


@pytest.mark.slow  # 400 generated objects through every layout: about 20 s
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), json_like, max_size=8))
def test_layouts_never_raise(obj: dict[str, Any]) -> None:
    for family, keys in (("qa_with_think", QA_KEYS), ("qa", QA_KEYS), ("agent", AGENT_KEYS)):
        for _, layout in LAYOUTS[family]:
            fields = layout(obj)
            assert fields is None or (set(fields) == keys and all(isinstance(v, str) for v in fields.values()))
        got = match(obj, family)
        assert got is None or set(got[1]) == keys
    assert isinstance(as_text(obj), str)
