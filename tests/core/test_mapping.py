"""The `fields:` mapping: JMESPath per text field, validated when the registry loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mira_dagster.core.config import ConfigError
from mira_dagster.core.mapping import compile_mapping, suggest_mapping
from mira_dagster.io.registry import load_config
from tests.helpers import read_source

# A producer's own layout: a chat under "conversation" with "speaker"/"text", reasoning in meta.
ODD = {
    "id": 7,
    "conversation": [
        {"speaker": "user", "text": "What is the sum of the first 10 odd numbers?"},
        {"speaker": "model", "text": "It is 100."},
    ],
    "meta": {"scratchpad": "1+3+5+...+19 = 10^2", "score": 0.93},
}
MAPPING = {
    "question": "conversation[?speaker=='user'] | [0].text",
    "thinking": "meta.scratchpad",
    "answer": "conversation[?speaker=='model'] | [-1].text",
}


def test_a_mapping_reads_a_layout_no_detector_knows(tmp_path: Path) -> None:
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps(ODD) + "\n" + json.dumps({**ODD, "conversation": []}) + "\n")
    assert read_source("s", "g", "qa_with_think", [path]).quarantined[0].kind == "no layout"
    read = read_source("s", "g", "qa_with_think", [path], mapping=compile_mapping(MAPPING, "qa_with_think"))
    (rec,) = read.records
    assert (rec.layout, rec.question, rec.thinking, rec.answer) == (
        "fields",
        "What is the sum of the first 10 odd numbers?",
        "1+3+5+...+19 = 10^2",
        "It is 100.",
    )
    (bad,) = read.quarantined  # the empty conversation: the required fields find nothing
    assert bad.kind == "empty field" and "question" in bad.reason


def test_mapped_numbers_and_lists_are_text(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"q": "q", "a": {"value": 42, "steps": ["x", "y"]}}) + "\n")
    mapping = compile_mapping({"question": "q", "thinking": "a.steps", "answer": "a.value"}, "qa")
    (rec,) = read_source("s", "g", "qa", [path], mapping=mapping).records
    assert (rec.answer, rec.thinking) == ("42", "x, y")


def test_an_agent_mapping(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"goal": "fix it", "log": ["ls", "edit", "test"], "diff": "--- a\n+++ b"}) + "\n")
    mapping = compile_mapping({"task": "goal", "trajectory": "join('\n', log)", "outcome": "diff"}, "agent")
    (rec,) = read_source("s", "g", "agent", [path], mapping=mapping).records
    assert rec.trajectory == "ls\nedit\ntest" and rec.outcome == "--- a\n+++ b"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"question": "a[", "answer": "b"}, "not a valid JMESPath expression"),
        ({"question": "a"}, "required field 'answer' is not mapped"),
        ({"question": "a", "answer": "b", "trajectory": "c"}, "unknown field 'trajectory'"),
        ({"question": "a", "answer": ""}, "expected a JMESPath expression"),
    ],
)
def test_a_bad_mapping_is_refused_when_the_registry_loads(tmp_path: Path, fields: dict, message: str) -> None:
    cfg = tmp_path / "groups.yaml"
    cfg.write_text(
        json.dumps(
            {
                "groups": {"g": {"family": "qa", "student_model": "m"}},
                "sources": {"my_src": {"group": "g", "format": "qa", "files": ["x.jsonl"], "fields": fields}},
            }
        )
    )
    with pytest.raises(ConfigError, match=message) as err:
        load_config(cfg)
    assert "my_src" in str(err.value) and str(cfg) in str(err.value)


def test_a_good_mapping_loads(tmp_path: Path) -> None:
    cfg = tmp_path / "groups.yaml"
    cfg.write_text(
        json.dumps(
            {
                "groups": {"g": {"family": "qa_with_think", "student_model": "m"}},
                "sources": {"odd": {"group": "g", "format": "qa_with_think", "files": ["x.jsonl"], "fields": MAPPING}},
            }
        )
    )
    assert load_config(cfg).sources["odd"].fields == MAPPING


def test_suggested_mapping_is_usable() -> None:
    obj = {"prompt_text": "Why?", "model_reasoning": "Because " * 20, "final": "Yes", "meta": {"id": 3}}
    suggestion = suggest_mapping(obj, "qa_with_think")
    assert suggestion["question"] == "prompt_text" and suggestion["thinking"] == "model_reasoning"
    assert "answer" in suggestion
    compile_mapping(suggestion, "qa_with_think")  # it compiles and covers the required fields
