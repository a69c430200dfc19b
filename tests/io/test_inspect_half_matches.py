"""`mira inspect` says what a layout left out and what gave no record (issue 21 item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from mira_dagster.core.mapping import compile_mapping
from mira_dagster.core.records import to_fields
from mira_dagster.io.inspect import inspect_files, render_report

FIXTURES = Path(__file__).parents[1] / "fixtures" / "layouts"


def _suggested(text: str, after: str) -> dict[str, str]:
    """The `fields:` mapping printed after the line containing `after`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if after in line) + 1
    block = []
    for line in lines[start:]:
        if not line.startswith("     "):
            break
        block.append(line[5:])
    return yaml.safe_load("\n".join(block))["fields"]


def test_a_half_matching_file_names_the_unused_keys_and_a_mapping_that_reads_them() -> None:
    path = FIXTURES / "word_problems.jsonl"
    text = render_report(inspect_files([path], family="qa_with_think"))
    assert "WARNING: the layouts left text unused under: Body (2 records)" in text
    mapping = _suggested(text, "a mapping that reads it too")
    row = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    fields = to_fields(row, "qa_with_think", compile_mapping(mapping, "qa_with_think"))[1]
    assert fields["question"].startswith(row["Body"]) and fields["question"].endswith(row["Question"])


def test_a_file_that_reads_whole_has_no_warning() -> None:
    text = render_report(inspect_files([FIXTURES / "chat_multiturn.jsonl"], family="qa_with_think"))
    assert "100%" in text and "WARNING" not in text


def test_empty_required_fields_print_every_key_with_an_example_and_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "odd.jsonl"
    rows = [{"question": "", "answer": "4", "statement": "Compute 2 + 2 for the class.", "id": 7}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    text = render_report(inspect_files([path], family="qa_with_think"))
    assert "empty field: 1" in text
    for line in ("question: (empty)", "answer: 4", "statement: Compute 2 + 2 for the class.", "id: 7"):
        assert f"     {line}" in text
    assert _suggested(text, "a mapping to start from") == {"question": "statement", "answer": "answer"}


def test_preference_pairs_read_chosen_and_no_suggestion_maps_rejected(tmp_path: Path) -> None:
    text = render_report(inspect_files([FIXTURES / "preference_pairs.jsonl"], family="qa_with_think"))
    assert "4 records (100%); layouts: preference:chosen 4" in text and "rejected" not in text.split("example")[0]
    # an unknown pair shape: the suggestion takes the chosen side, never the rejected one
    path = tmp_path / "pairs.jsonl"
    row = {"context": "Pick the better reply.", "chosen": [1], "rejected": "a much longer rejected reply " * 4}
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    text = render_report(inspect_files([path], family="qa_with_think"))
    assert "rejected" not in json.dumps(_suggested(text, "a mapping to start from"))
