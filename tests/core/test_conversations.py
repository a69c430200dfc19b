"""Conversations read whole (issue 21 item 2), preference pairs (item 4) and half matches named (item 5)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from mira_dagster.core.layouts import match
from mira_dagster.core.mapping import compile_mapping, suggest_mapping, suggest_with_unused
from mira_dagster.core.prompts import render_user
from mira_dagster.core.records import BatchParser, Record, Rejected, Unit, to_fields, unused_text_keys
from mira_dagster.io.registry import load_config
from mira_dagster.io.templates import load_templates
from tests.core.test_prompts import group_rubric

FIXTURES = Path(__file__).parents[1] / "fixtures" / "layouts"


def _rows(name: str) -> list[Any]:
    return [json.loads(line) for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines()]


def _units(values: list[Any]) -> list[Unit]:
    return [Unit(i, raw=json.dumps(v).encode()) for i, v in enumerate(values, 1)]


# ---------------------------------------------------------------------------------------------
# Item 2: every turn in


def test_a_multi_turn_chat_is_one_record_holding_every_turn() -> None:
    tutor, weather, image, tail = _rows("chat_multiturn.jsonl")
    layout, fields = to_fields(tutor, "qa_with_think", None)
    assert layout == "chat_messages"
    assert fields["question"] == (
        "### system\nYou are a patient math tutor.\n\n### user\nWhat is the derivative of x^3?\n\n"
        "### assistant\nIt is 3x^2, by the power rule.\n\n### user\nAnd the derivative of that?"
    )
    assert fields["answer"] == "The second derivative of x^3 is 6x."
    # a tool call with null content and its tool result are turns of the context
    _, fields = to_fields(weather, "qa", None)
    assert '[tool_call] get_current_weather({"location": "Boston, MA"})' in fields["question"]
    assert '### tool (get_current_weather)\n{"temperature": 22, "unit": "celsius"}' in fields["question"]
    assert fields["answer"] == "It is 22 degrees Celsius in Boston today."
    # content as parts; the last assistant turn's reasoning is the thinking
    _, fields = to_fields(image, "qa", None)
    assert "What is in this image?" in fields["question"] and "What colour is it?" in fields["question"]
    assert fields["thinking"] == "The fur in the picture is orange with stripes."
    assert fields["answer"] == "It is an orange tabby."


PARALLEL = [
    {"role": "user", "content": "Fix the bug in foo.py"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "foo.py"}'}},
            {"id": "c2", "type": "function", "function": {"name": "run_tests", "arguments": "{}"}},
        ],
    },
    {"role": "tool", "tool_call_id": "c2", "content": "1 failed"},  # answers out of order, by id alone
    {"role": "tool", "tool_call_id": "c1", "name": "read_file", "content": "def foo(): return 1"},
    {"role": "function", "name": "legacy_lookup", "content": "ok"},
    {"role": "tool", "tool_call_id": "unknown", "content": "orphan"},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": True, "content": "boom"}]},
    {  # Anthropic: two calls as content blocks, their results by id
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "tu1", "name": "grep", "input": {"q": "foo"}},
            {"type": "tool_use", "id": "tu2", "name": "ls", "input": {}},
        ],
    },
    {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "tu2", "content": "foo.py"},
            {"type": "tool_result", "tool_use_id": "tu1", "content": "foo.py:1"},
        ],
    },
    {"role": "assistant", "content": "Fixed: foo returns 2."},
]


@pytest.mark.parametrize(("family", "field"), [("qa", "question"), ("agent", "trajectory")])
def test_a_tool_result_names_the_tool_that_answered(family: str, field: str) -> None:
    """Parallel calls answered out of order: each result says which tool it came from (its `name`, else the name
    its `tool_call_id` points to), and a failed Anthropic tool result says it failed; before, every result was
    a bare `### tool` and the scorer could not tell the test output from the file's text."""
    _, fields = to_fields({"messages": PARALLEL}, family, None)
    text = fields[field]
    assert "### tool (run_tests)\n1 failed" in text
    assert "### tool (read_file)\ndef foo(): return 1" in text
    assert "### function (legacy_lookup)\nok" in text
    assert "### tool\norphan" in text  # an id no call carries: no name made up
    assert "[tool_result, error] boom" in text  # an id no call carries: no name, and the failure said
    assert "[tool_result ls] foo.py\n[tool_result grep] foo.py:1" in text


def test_earlier_reasoning_and_tool_calls_of_the_answer_are_kept() -> None:
    msgs = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "reasoning": "first thoughts", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {
            "role": "assistant",
            "content": "Looking it up.",
            "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": '{"q": "x"}'}}],
        },
    ]
    _, fields = match({"messages": msgs}, "qa")
    assert "### assistant\n<think>\nfirst thoughts\n</think>\nA1" in fields["question"]
    assert fields["answer"] == 'Looking it up.\n[tool_call] search({"q": "x"})'


def test_a_single_turn_chat_keeps_its_first_release_text() -> None:
    _, fields = match({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}, "qa")
    assert fields == {"question": "Q", "thinking": "", "answer": "A"}
    # blank turns around it (an empty system prompt, an empty assistant turn) do not make it a transcript
    blank = [{"role": "system", "content": ""}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": ""}]
    assert match({"messages": [*blank, {"role": "assistant", "content": "A"}]}, "qa")[1]["question"] == "Q"


def test_turns_after_the_last_reply_are_part_of_the_identity() -> None:
    *_, tail = _rows("chat_multiturn.jsonl")
    parser = BatchParser("s", "g", "qa")
    other = json.loads(json.dumps(tail))
    other["messages"][-1]["content"] = "Thanks a lot!"
    parsed = parser.parse("f.jsonl", _units([tail, other]))
    assert len(parsed.record_id) == 2 and not parsed.rejected
    assert parsed.text["answer"] == ["Rome.", "Rome."]


def _sharegpt(i: int) -> dict[str, Any]:
    rng = random.Random(i)
    middle = [
        *({"from": "human", "value": f"Follow-up {rng.randrange(10**9)} about case {i}"},),
        *({"from": "gpt", "value": f"Detail {rng.randrange(10**9)} for case {i}"},),
    ]
    return {
        "conversations": [
            {"from": "human", "value": f"Shared opening question {i % 7}"},
            {"from": "gpt", "value": "Shared first reply"},
            *middle,
            {"from": "human", "value": "So what is the conclusion?"},
            {"from": "gpt", "value": f"Shared last answer {i % 3}"},
        ]
    }


def test_500_distinct_conversations_sharing_first_questions_and_last_answers_are_500_records() -> None:
    convs = [_sharegpt(i) for i in range(500)]
    assert len({json.dumps(c) for c in convs}) == 500
    parser = BatchParser("s", "g", "qa_with_think")
    parsed = parser.parse("sharegpt.jsonl", _units(convs))
    assert len(parsed.record_id) == len(set(parsed.record_id)) == 500
    assert parsed.rejected == []
    assert all("Follow-up" in q and "Detail" in q for q in parsed.text["question"])


def test_a_bare_list_of_messages_is_one_conversation_and_a_mapping_applies_to_it() -> None:
    rows = _rows("chat_lists.jsonl")
    parsed = BatchParser("s", "g", "qa").parse("lists.jsonl", _units(rows))
    assert parsed.rejected == [] and parsed.layout == ["chat_messages", "chat_messages", "sharegpt"]
    assert parsed.text["question"][1].startswith("### system\nBe brief.")
    agent = BatchParser("s", "g", "agent").parse("lists.jsonl", _units(rows))
    assert agent.rejected == [] and agent.layout == ["agent_turns", "agent_turns", "sharegpt"]
    mapping = compile_mapping({"question": "[0].content", "answer": "[-1].content"}, "qa")
    expected = {"question": "Name a prime number above 100.", "answer": "101."}
    assert to_fields(rows[0], "qa", mapping) == ("fields", expected)
    with pytest.raises(Rejected, match="a list that is not a conversation"):
        to_fields([1, 2], "qa", None)


def test_the_prompt_built_from_a_conversation_carries_every_turn() -> None:
    tutor = _rows("chat_multiturn.jsonl")[0]
    _, fields = to_fields(tutor, "qa_with_think", None)
    rec = Record(
        record_id="r", source="s", group_id="2", format="qa_with_think", layout="chat_messages", n_tokens=1,
        origin_file="f", origin_line=1, **fields,
    )  # fmt: skip
    cfg = load_config()
    prompt = render_user(load_templates(), group_rubric(cfg, "2"), rec)
    for turn in tutor["messages"]:
        assert turn["content"] in prompt
    positions = [prompt.find(turn["content"]) for turn in tutor["messages"]]
    assert positions == sorted(positions)


# ---------------------------------------------------------------------------------------------
# Item 4: preference pairs


def test_preference_pairs_default_to_the_chosen_response() -> None:
    got = [to_fields(r, "qa", None) for r in _rows("preference_pairs.jsonl")]
    assert [name for name, _ in got] == ["preference"] * 4
    assert [(f["question"], f["answer"]) for _, f in got] == [
        ("The sky is", "blue."),
        ("What color is the sky?", "It is blue."),
        ("What color is grass?", "Green."),
        ("How many legs does a spider have?", "A spider has eight legs."),
    ]


def test_preference_rejected_reads_the_other_side() -> None:
    got = [to_fields(r, "qa", None, "rejected")[1]["answer"] for r in _rows("preference_pairs.jsonl")]
    assert got == ["green.", "It is green.", "Purple.", "Six, like all insects."]


def test_anthropic_hh_transcripts_are_conversations() -> None:
    short, multi = _rows("hh_rlhf.jsonl")
    assert to_fields(short, "qa", None) == (
        "preference_hh",
        {
            "question": "What are some good vegetables to grow in shade?",
            "thinking": "",
            "answer": "Lettuce, spinach and kale grow well in partial shade.",
        },
    )
    name, fields = to_fields(multi, "qa", None, "rejected")
    assert name == "preference_hh" and fields["answer"] == "An hour."
    assert fields["question"] == (
        "### user\nHow do I boil an egg?\n\n### assistant\nPut it in boiling water.\n\n### user\nFor how long?"
    )


def test_preference_both_gives_two_marked_records_per_pair_and_counts_reconcile() -> None:
    rows = [*_rows("preference_pairs.jsonl"), *_rows("hh_rlhf.jsonl"), {"question": "plain q", "answer": "plain a"}]
    parser = BatchParser("s", "g", "qa_with_think", preference="both")
    parsed = parser.parse("pairs.jsonl", _units(rows))
    assert parsed.rejected == []
    assert len(parsed.record_id) == 2 * 6 + 1 == len(set(parsed.record_id))
    assert parsed.layout[:2] == ["preference:chosen", "preference:rejected"]
    assert parsed.layout[8:10] == ["preference_hh:chosen", "preference_hh:rejected"]
    assert parsed.layout[-1] == "question_answer"
    assert parsed.position[:2] == [1, 1]  # both sides keep their unit's origin
    assert parsed.original[0] == parsed.original[1]  # and its original value, pair and all
    # units read = records + quarantined - the second sides
    assert parser.stats.extra_rows == 6
    assert len(parsed.record_id) + len(parsed.rejected) - parser.stats.extra_rows == len(rows)


def test_preference_rejected_and_a_side_that_fails_is_quarantined_with_its_side() -> None:
    rows = [{"prompt": "p", "chosen": "c", "rejected": ""}]
    parsed = BatchParser("s", "g", "qa", preference="rejected").parse("f", _units(rows))
    assert parsed.record_id == [] and parsed.rejected[0][1] == "empty field"
    both = BatchParser("s", "g", "qa", preference="both")
    parsed = both.parse("f", _units(rows))
    assert parsed.layout == ["preference:chosen"]
    assert parsed.rejected[0][2].startswith("rejected side: ")


def test_a_suggested_mapping_never_maps_rejected() -> None:
    pair = {"prompt": "Which is better?", "chosen": "short", "rejected": "a much, much longer rejected reply " * 5}
    assert suggest_mapping(pair, "qa") == {"question": "prompt", "answer": "chosen"}
    assert "rejected" not in json.dumps(suggest_mapping({"rejected": "x" * 50, "text": "y"}, "qa"))


# ---------------------------------------------------------------------------------------------
# Item 5: half matches are named, with a mapping that reads the whole


def test_a_half_matching_layout_names_the_unused_key_and_suggests_a_mapping_with_it() -> None:
    rows = _rows("word_problems.jsonl")
    name, fields = to_fields(rows[0], "qa", None)
    assert name == "qa_fields" and fields["question"] == "How much do you have to pay to buy each pack?"
    assert unused_text_keys(rows[0], fields) == ["Body"]
    suggestion = suggest_with_unused(rows[0], fields, ["Body"], "qa")
    assert suggestion == {"question": 'join(`"\\n\\n"`, [Body, Question] | [?@])', "answer": "Answer"}
    mapped = to_fields(rows[1], "qa", compile_mapping(suggestion, "qa"))[1]
    assert mapped["question"] == (
        "Dan had $ 3 left with him after he bought a candy bar. If he had $ 4 at the start\n\n"
        "How much did the candy bar cost?"
    )
    # ingest counts them, with the first place and the suggestion
    parser = BatchParser("s", "g", "qa")
    parser.parse("svamp.jsonl", _units(rows))
    assert parser.stats.unused_keys == {"Body": 2}
    assert parser.stats.unused_first == {"Body": "svamp.jsonl:1"}
    assert parser.stats.suggested_fields == suggestion


def test_a_list_of_prose_left_unused_is_named_and_the_suggestion_reads_it() -> None:
    """OpenR1-Math: `generations` holds the traces beside the one `solution` gives; the second was unmentioned, and
    a suggestion naming the list would not evaluate (JMESPath's join takes strings only)."""
    trace = "Let me work through this carefully, one step after another, before I answer."
    obj = {"problem": "What is 2+2?", "solution": f"{trace} So 4.", "answer": "4", "generations": [trace, "x " * 40]}
    name, fields = to_fields(obj, "qa_with_think", None)
    assert name == "qa_fields" and unused_text_keys(obj, fields) == ["generations"]
    assert unused_text_keys({**obj, "generations": [trace, None]}, fields) == []  # the one it holds is used
    assert unused_text_keys({**obj, "generations": ["x " * 40, 4]}, fields) == []  # not a list of strings
    suggestion = suggest_with_unused(obj, fields, ["generations"], "qa_with_think")
    assert suggestion["question"] == 'join(`"\\n\\n"`, [generations, problem][] | [?@])'
    mapped = to_fields(obj, "qa_with_think", compile_mapping(suggestion, "qa_with_think"))[1]
    assert mapped["question"] == f"{trace}\n\n{'x ' * 40}\n\nWhat is 2+2?"


def test_text_a_layout_reads_in_part_is_not_called_unused() -> None:
    # a solution split into thinking and answer, a long id without spaces, the rejected side of a pair
    obj = {
        "prompt": "Solve it.<think>\n",
        "solution": "Let me think about this problem for a while.</think>The answer is four, of course.",
        "uid": "x" * 80,
    }
    name, fields = to_fields(obj, "qa", None)
    assert name == "prompt_solution" and unused_text_keys(obj, fields) == []
    pair = _rows("preference_pairs.jsonl")[3]
    assert unused_text_keys(pair, to_fields(pair, "qa", None)[1]) == []


def test_preference_with_a_fields_mapping_is_refused_when_the_registry_loads() -> None:
    from pydantic import ValidationError

    from mira_dagster.core.config import SourceConfig

    entry = {"group": "2", "format": "qa", "files": ["a.jsonl"], "fields": {"question": "q", "answer": "a"}}
    with pytest.raises(ValidationError, match="map the side you want"):
        SourceConfig(**entry, preference="both")
    assert SourceConfig(**{**entry, "fields": None}, preference="both").preference == "both"


def test_capybara_exchanges_and_a_system_prompt_beside_a_pair_are_context() -> None:
    # LDJnr/Capybara: conversation = [{input, output}, ...]
    capybara = {"source": "x", "conversation": [{"input": "hi", "output": "hello"}, {"input": "how?", "output": "ok"}]}
    assert match(capybara, "qa") == (
        "sharegpt",
        {"question": "### user\nhi\n\n### assistant\nhello\n\n### user\nhow?", "thinking": "", "answer": "ok"},
    )
    # Intel/orca_dpo_pairs: system, question, chosen, rejected
    orca = {"system": "You are an AI assistant.", "question": "What is 2+2?", "chosen": "4", "rejected": "5"}
    assert match(orca, "qa") == (
        "preference",
        {"question": "### system\nYou are an AI assistant.\n\n### user\nWhat is 2+2?", "thinking": "", "answer": "4"},
    )
    assert match({**orca, "system": ""}, "qa")[1]["question"] == "What is 2+2?"
